"""Low-rank factorisation, shallower students and the step order (exporter.compress), on small real
architectures built in code and through the real CLI."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import FAST_BENCH, build_compressed, run_cli, write_tiny_project
from torch import nn

from exporter.compress import lowrank
from exporter.compress.distill import mse_loss
from exporter.recipe_steps import StudentStep, compress_order_problem
from exporter.runtime import make_session

torch.manual_seed(0)


@pytest.mark.parametrize(
    "layer, kind, shape, rank",
    [
        (nn.Linear(20, 12), "linear", (5, 20), 12),
        (nn.Conv2d(6, 8, 1), "conv1x1", (2, 6, 9, 9), 6),
        (nn.Conv2d(6, 8, 3, padding=1, stride=2), "spatial", (2, 6, 9, 9), 18),  # full rank: min(6*3, 8*3)
        (nn.Conv2d(6, 8, (3, 5), padding=(1, 2), dilation=(1, 2)), "spatial", (2, 6, 11, 11), 18),
        (nn.Conv2d(6, 8, 3, padding=1, stride=2), "channel", (2, 6, 9, 9), 8),
    ],
)
def test_factorisation_is_exact_at_full_rank(layer, kind, shape, rank):
    x = torch.randn(*shape)
    pair = lowrank.factorize(layer, kind, rank)
    assert isinstance(pair, nn.Sequential) and len(pair) == 2
    with torch.no_grad():
        assert torch.allclose(pair(x), layer(x), atol=1e-5)
        # and one rank less is no longer exact (the test can fail)
        assert not torch.allclose(lowrank.factorize(layer, kind, rank - 1)(x), layer(x), atol=1e-5)


def test_whitened_svd_is_exact_at_full_rank_and_better_on_the_data_below_it():
    layer = nn.Linear(20, 12)
    x = torch.randn(400, 20) @ torch.diag(torch.linspace(3, 0.01, 20))  # inputs use few directions
    gram = x.double().t() @ x.double()
    with torch.no_grad():
        assert torch.allclose(lowrank.factorize(layer, "linear", 12, gram)(x), layer(x), atol=1e-4)
        for r in (4, 8):
            whitened = (lowrank.factorize(layer, "linear", r, gram)(x) - layer(x)).norm()
            plain = (lowrank.factorize(layer, "linear", r)(x) - layer(x)).norm()
            assert whitened < 0.9 * plain, (r, whitened, plain)


def _cand(m: int, n: int, singular) -> lowrank.Candidate:
    return lowrank.Candidate("x", "linear", m, n, 1, np.asarray(singular, dtype=float))


def test_rank_for_energy_rounds_to_the_multiple_and_only_when_cheaper():
    c = _cand(64, 64, [10, 5, 1, 1] + [0.1] * 60)  # bound 32
    assert lowrank.rank_for_energy(c, 0.75, 1) == 1  # 100 / 127.6 = 0.78
    assert lowrank.rank_for_energy(c, 0.95, 1) == 2
    assert lowrank.rank_for_energy(c, 0.95, 8) == 8
    assert lowrank.rank_for_energy(c, 0.999, 8) is None  # needs > 32: the pair would cost more
    square = _cand(16, 16, np.ones(16))  # a flat spectrum: no rank below the bound keeps 90%
    assert lowrank.rank_for_energy(square, 0.9, 1) is None


def test_choose_ranks_meets_a_mac_goal_at_the_highest_energy():
    cands = {f"l{i}": _cand(96, 96, np.exp(-np.arange(96) / (4 + 4 * i))) for i in range(3)}
    cands = {n: lowrank.Candidate(n, c.kind, c.m, c.n, 10, c.singular) for n, c in cands.items()}
    base = sum(c.macs(None) for c in cands.values())
    ranks, energy = lowrank.choose_ranks(cands, 8, None, 0.5, base)
    macs = base - sum(c.macs(None) - c.macs(ranks[n]) for n, c in cands.items() if n in ranks)
    assert macs <= 0.5 * base and all(r % 8 == 0 and r < 48 for r in ranks.values())
    # a little more energy would miss the goal
    more, _ = lowrank.choose_ranks(cands, 8, min(1.0, energy + 0.01), None, base)
    assert base - sum(c.macs(None) - c.macs(more[n]) for n, c in cands.items() if n in more) > 0.5 * base
    # the layer with the slowest-decaying spectrum needs the highest rank
    assert ranks["l2"] >= ranks["l0"]


def test_mse_loss():
    a = torch.ones(2, 3)
    assert float(mse_loss(a, a)) == 0.0 and float(mse_loss(a, a + 2)) == pytest.approx(4.0)


@pytest.mark.parametrize(
    "kinds, ok",
    [
        (["prune", "distill"], True),
        (["student", "lowrank", "distill"], True),
        (["prune", "lowrank"], True),
        (["distill"], False),
        (["prune", "distill", "lowrank"], False),
        (["lowrank", "student"], False),
        (["lowrank", "lowrank", "distill"], False),
    ],
)
def test_compress_order(kinds, ok):
    assert (compress_order_problem(kinds) is None) == ok


def test_even_students_keep_first_and_last_layers():
    from exporter.compress.student import student_layers

    assert student_layers(StudentStep(depth=3), 6) == [0, 2, 5]
    assert student_layers(StudentStep(depth=1), 6) == [5]
    assert student_layers(StudentStep(layers=[4, 1]), 6) == [1, 4]


class Wide(nn.Module):
    """Conv layers wide enough that factorising them pays, and an MLP head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.mix = nn.Conv2d(32, 64, 1)
        self.fc = nn.Linear(64, 64)
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        x = self.body(torch.relu(self.stem(x)))
        return self.head(torch.relu(self.fc(torch.relu(self.mix(x)).mean((2, 3)))))


def test_plan_replays_and_exports_to_onnxruntime(tmp_path):
    from exporter.compress.channels import costs

    model = Wide().eval()
    example = (torch.randn(1, 3, 16, 16),)
    layers = lowrank.eligible(model, [], [], {"head"}, "spatial")
    assert "head" not in layers and {"stem", "body.0", "mix", "fc"} <= set(layers)
    positions = lowrank.output_positions(model, layers, model, example)
    assert positions["body.0"] == 256 and positions["fc"] == 1
    cands = lowrank.candidates(model, layers, "spatial", positions, None)
    base, _ = costs(model, example)
    ranks, _ = lowrank.choose_ranks(cands, 4, None, 0.6, base)
    plan = {"layers": {n: {"kind": cands[n].kind, "rank": r} for n, r in ranks.items()}}
    student = copy.deepcopy(model)
    lowrank.apply(student, plan)
    macs, _ = costs(student, example)
    assert 0.5 * base <= macs <= 0.6 * base  # the goal, within 10% of the asked ratio
    fresh = Wide()
    lowrank.replay(fresh, plan)
    fresh.load_state_dict(student.state_dict(), strict=True)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        want = student(x).numpy()
        assert np.allclose(fresh.eval()(x).numpy(), want, atol=1e-6)
    path = tmp_path / "lowrank.onnx"
    torch.onnx.export(student, (x,), str(path), input_names=["image"], dynamo=True, dynamic_shapes=None)
    got = make_session(path, 1).run(None, {"image": x.numpy()})[0]
    assert np.allclose(got, want, atol=1e-4)


@pytest.fixture(scope="session")
def tiny_lowrank_build(tmp_path_factory):
    """TinyNet factorised + distilled through the CLI."""
    folder = tmp_path_factory.mktemp("tiny-lowrank")
    recipe = write_tiny_project(
        folder,
        metric="top1",
        compress=[
            {"lowrank": {"goal": {"macs": 0.7}, "align": 4}},
            {"distill": {"epochs": 2, "batch_size": 8, "threads": 1}},
        ],
        profiles=["raspberry-pi-5-cpu"],
        bench=dict(FAST_BENCH),
    )
    return {"built": build_compressed(recipe, folder / "cache"), "out": folder / "out"}


def test_lowrank_build_ships_a_cheaper_model_with_its_plan(tiny_lowrank_build):
    _, _, v, record = tiny_lowrank_build["built"]
    assert v["compressed"]["macs"] <= 0.7 * v["baseline"]["macs"]
    assert v["int8"]["parent"] == "compressed"
    assert [s["step"] for s in record["steps"]] == ["lowrank", "distill"]
    plan = record["steps"][0]["plan"]["layers"]
    assert plan and all(e["rank"] % 4 == 0 and e["rank"] < e["bound"] for e in plan.values())
    assert record["steps"][0]["whitened"]  # activation criterion: data-aware where it applies
    report = (tiny_lowrank_build["out"] / "report.md").read_text()
    assert "lowrank" in report


@pytest.mark.slow
def test_bert_lowrank_and_student_export_through_optimum(tmp_path):
    """A factorised BERT (an architecture no config describes) and a 1-layer student, each built
    end to end: cache entry restored, exported by optimum, parity with its PyTorch model."""
    from hf_fixtures import build_compressed_bert, make_tiny_bert

    make_tiny_bert(tmp_path / "model")
    distill = {
        "epochs": 1,
        "batch_size": 16,
        "threads": 1,
        "data": {"corpus": "pydoc-topics", "split": "train", "limit": 48},
    }
    for name, steps in (
        ("lowrank", [{"lowrank": {"goal": {"macs": 0.7}, "align": 4}}, {"distill": distill}]),
        ("student", [{"student": {"depth": 1}}, {"distill": {**distill, "hidden_states": 1.0}}]),
    ):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model").symlink_to(tmp_path / "model")
        record = build_compressed_bert(folder, steps, tmp_path / "cache").record
        assert record["student"]["macs"] < 0.75 * record["teacher"]["macs"], name
        if name == "lowrank":
            assert record["steps"][0]["plan"]["layers"]
        else:
            assert record["steps"][0]["kept_layers"] == [1]


@pytest.mark.parametrize(
    "compress, field",
    [
        ([{"lowrank": {"goal": {"macs": 0.5}}}, {"distill": {}}, {"prune": {"goal": {"macs": 0.5}}}], "compress"),
        ([{"lowrank": {"goal": {"macs": 0.5, "energy": 0.9}}}], "goal"),
        ([{"student": {"depth": 2}}, {"distill": {}}], "compress[0].student"),
        ([{"lowrank": {"goal": {"macs": 0.5}, "layers": ["nothing.*"]}}], "layers"),
    ],
)
def test_bad_lowrank_and_student_steps_are_one_line_errors(tmp_path, compress, field):
    recipe = write_tiny_project(tmp_path, compress=compress, profiles=["raspberry-pi-5-cpu"])
    proc = run_cli("build", str(recipe), env={"EDGEX_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stderr
    assert field in proc.stderr and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("edgex: error:")]) == 1
    assert not (tmp_path / "out").exists()


def test_user_supplied_student_is_distilled_and_restored(tmp_path):
    recipe = write_tiny_project(
        tmp_path,
        metric="top1",
        compress=[
            {"student": {"factory": "tiny_models.py:build_tiny_student"}},
            {"distill": {"epochs": 3, "batch_size": 8, "lr": 0.01, "threads": 1, "augment": False}},
        ],
        profiles=["raspberry-pi-5-cpu"],
        quantize={"enabled": False},
    )
    # parity (checked by the helper) is that of the student restored from the cache: factory + weights
    _, _, v, record = build_compressed(recipe, tmp_path / "cache")
    assert v["compressed"]["macs"] < 0.5 * v["baseline"]["macs"]
    assert record["steps"][0]["init"] == "factory"
    losses = [h["validation_loss"] for h in record["steps"][1]["history"]]
    assert min(losses[1:]) < losses[0]  # the student learns the teacher
