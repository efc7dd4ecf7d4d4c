"""Structured pruning and distillation (exporter.compress) on small real architectures built in code."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import FAST_BENCH, run_cli, write_tiny_project
from torch import nn

from exporter.compress.channels import costs, prune_channels, replay
from exporter.compress.distill import cosine_loss, distill, hidden_loss, kd_loss
from exporter.recipe import InputSpec
from exporter.recipe_steps import DistillStep, PruneStep
from exporter.runtime import make_session


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.body = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)
        )
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.body(x))
        return self.head(x.mean((2, 3)))


class DepthwiseSeparable(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(32, 64, 1), nn.BatchNorm2d(64), nn.ReLU())
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        return self.head(self.pw(self.dw(self.stem(x))).mean((2, 3)))


class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.a = nn.Conv2d(32, 32, 1)
        self.b = nn.Sequential(nn.Conv2d(32, 16, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1))
        self.c = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(32, 16, 1))
        self.mix = nn.Conv2d(80, 48, 1)
        self.head = nn.Linear(48, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.cat([self.a(x), self.b(x), self.c(x)], dim=1)
        return self.head(torch.relu(self.mix(torch.relu(x))).mean((2, 3)))


class SqueezeExcitation(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU())
        self.fc1, self.fc2 = nn.Conv2d(48, 12, 1), nn.Conv2d(12, 48, 1)
        self.conv2 = nn.Conv2d(48, 48, 3, padding=1)
        self.head = nn.Linear(48, 4)

    def forward(self, x):
        x = self.conv(x)
        x = x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.head(torch.relu(self.conv2(x)).mean((2, 3)))


ARCHITECTURES = [Residual, DepthwiseSeparable, Inception, SqueezeExcitation]
EXAMPLE = (torch.zeros(1, 3, 16, 16),)


def _export(module, path):
    from exporter.export import _export_torch

    spec = [InputSpec(name="image", shape=[1, 3, 16, 16], dynamic_axes={0: "batch"})]
    _export_torch(module.eval(), spec, ["logits"], 18, False, path)
    return path


@pytest.mark.parametrize(
    "arch, criterion",
    [(a, "l2") for a in ARCHITECTURES] + [(Residual, "taylor"), (DepthwiseSeparable, "bn_scale")],
    ids=lambda x: getattr(x, "__name__", x),
)
def test_cnn_pruning_keeps_shape_hits_the_mac_goal_and_exports(arch, criterion, tmp_path):
    torch.manual_seed(0)
    model = arch().eval()
    x = torch.randn(8, 3, 16, 16)
    base_macs, _ = costs(model, EXAMPLE)
    goal = 0.5
    loss_fn = (lambda m: nn.functional.cross_entropy(m(x), torch.arange(8) % 4)) if criterion == "taylor" else None
    step = PruneStep(goal={"macs": goal}, criterion=criterion)
    # alignment 4: these layers have 32-64 channels; 8 would allow only 3-7 widths per layer
    result = prune_channels(model, EXAMPLE, step, 4, lambda _m, e: e["macs"] <= goal * base_macs, loss_fn=loss_fn)
    pruned = result.module.eval()
    macs, _ = costs(pruned, EXAMPLE)
    assert result.reached
    assert abs(macs / base_macs - goal) <= 0.10, macs / base_macs
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == (8, 4)
    # every pruned width is a multiple of the alignment (the protected head keeps its 4 outputs)
    for name, m in pruned.named_modules():
        if isinstance(m, nn.Conv2d) and m.groups == 1 and m.out_channels > 4:
            assert m.out_channels % 4 == 0, (name, m.out_channels)
    path = _export(pruned, tmp_path / "pruned.onnx")
    got = make_session(path).run(None, {"image": x.numpy()})[0]
    np.testing.assert_allclose(got, out.numpy(), rtol=1e-3, atol=1e-4)
    # the history replays to the same architecture and, with the same weights, the same outputs
    fresh = arch()
    replay(fresh, EXAMPLE, result.history)
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        np.testing.assert_allclose(fresh.eval()(x).numpy(), out.numpy(), rtol=1e-5, atol=1e-6)


def test_protected_layers_and_unknown_names(tmp_path):
    from exporter.errors import UsageError

    model = Residual().eval()
    base, _ = costs(model, EXAMPLE)
    step = PruneStep(goal={"macs": 0.6}, protect=["stem"])
    result = prune_channels(model, EXAMPLE, step, 1, lambda _m, e: e["macs"] <= 0.6 * base)
    assert "stem" in result.protected and "head" in result.protected
    assert result.module.head.out_features == 4
    with pytest.raises(UsageError, match="protect"):
        prune_channels(Residual(), EXAMPLE, PruneStep(goal={"macs": 0.5}, protect=["nope"]), 1, lambda *_: True)


def test_bert_heads_ffn_and_layers_are_pruned_and_export(tmp_path):
    from hf_fixtures import make_tiny_bert
    from transformers import BertModel

    from exporter.compress.encoder import apply_plan, costs_of, fraction_for_macs, plan_pruning

    folder = make_tiny_bert(tmp_path / "bert")
    bert = BertModel.from_pretrained(str(folder)).eval()
    ids = torch.randint(5, 100, (2, 12))
    mask = torch.ones_like(ids)
    base, _ = costs_of(bert, 12)
    step = PruneStep(goal={"macs": 0.5}, align=8)
    fraction = fraction_for_macs(bert, step, 0.5, 8, 12)
    plan = plan_pruning(bert, step, fraction, 8)
    apply_plan(bert, plan)
    macs, _ = costs_of(bert, 12)
    assert abs(macs / base - 0.5) <= 0.10
    assert bert.config.intermediate_size % 8 == 0 and bert.config.intermediate_size < 64
    with torch.no_grad():
        out = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    assert out.shape == (2, 12, 32)
    # saved and reloaded like any model: config.json carries the pruned heads and the FFN size
    bert.save_pretrained(str(tmp_path / "pruned"), safe_serialization=True)
    again = BertModel.from_pretrained(str(tmp_path / "pruned")).eval()
    with torch.no_grad():
        np.testing.assert_allclose(
            again(input_ids=ids, attention_mask=mask).last_hidden_state.numpy(), out.numpy(), atol=1e-5
        )
    # dropping a layer
    plan2 = plan_pruning(again, PruneStep(goal={"macs": 0.9}, drop_layers=[1]), 0.0, 8)
    apply_plan(again, plan2)
    assert len(again.encoder.layer) == 1 and again.config.num_hidden_layers == 1


def test_kd_loss_is_zero_on_agreement_and_scaled_by_t_squared():
    t = torch.randn(6, 5)
    assert float(kd_loss(t, t, None, 4.0)) == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(6, 5)
    a, b = float(kd_loss(s, t, None, 1.0)), float(kd_loss(s, t, None, 3.0))
    assert a > 0 and b > 0
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(s / 3, -1), nn.functional.softmax(t / 3, -1), reduction="batchmean"
    )
    assert b == pytest.approx(9 * float(soft), rel=1e-5)
    y = torch.arange(6) % 5
    mixed = float(kd_loss(s, t, y, 3.0, alpha=0.5))
    assert mixed == pytest.approx(0.5 * b + 0.5 * float(nn.functional.cross_entropy(s, y)), rel=1e-5)


def test_cosine_and_hidden_losses():
    a = torch.randn(4, 8)
    assert float(cosine_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(cosine_loss(a, -a)) == pytest.approx(2.0, abs=1e-6)
    h = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    noisy = h.clone()
    noisy[0, 2:] += 100.0  # padding positions: must not count
    assert float(hidden_loss([noisy], [h], mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(hidden_loss([noisy], [h])) > 1.0


def test_distillation_reduces_the_students_loss():
    torch.manual_seed(0)
    teacher = SqueezeExcitation().eval()
    student = copy.deepcopy(teacher)
    base, _ = costs(student, EXAMPLE)
    student = prune_channels(
        student, EXAMPLE, PruneStep(goal={"macs": 0.4}), 1, lambda _m, e: e["macs"] <= 0.4 * base
    ).module
    x = np.random.default_rng(0).standard_normal((96, 3, 16, 16)).astype(np.float32)
    specs = [InputSpec(name="image", shape=[1, 3, 16, 16])]

    def gap():
        with torch.no_grad():
            return float(kd_loss(student.eval()(torch.from_numpy(x)), teacher(torch.from_numpy(x)), None, 4.0))

    before = gap()
    settings = DistillStep(epochs=6, batch_size=16, lr=3e-3, augment=False, patience=6, threads=1)
    result = distill(student, teacher, {"image": x}, None, specs, settings, "kd", seed=0)
    assert gap() < 0.7 * before, (before, gap())
    assert result.history[-1]["validation_loss"] <= result.history[0]["validation_loss"]


@pytest.fixture(scope="session")
def tiny_pruned_build(tmp_path_factory):
    """TinyNet pruned + distilled through the CLI, built twice: the second time from the cache."""
    folder = tmp_path_factory.mktemp("tiny-pruned")
    cache = folder / "cache"
    recipe = write_tiny_project(
        folder,
        metric="top1",
        compress=[
            {"prune": {"goal": {"macs": 0.5}, "criterion": "l1"}},
            {"distill": {"epochs": 2, "batch_size": 8, "threads": 1}},
        ],
        profiles=["raspberry-pi-5-cpu"],
        bench=dict(FAST_BENCH),
    )
    env = {"EDGEX_CACHE_DIR": str(cache)}
    first = run_cli("build", str(recipe), "--json", env=env)
    assert first.returncode in (0, 1), first.stderr
    second = run_cli("build", str(recipe), "--json", "--out", str(folder / "again"), env=env)
    assert second.returncode in (0, 1), second.stderr
    return {
        "first": json.loads(first.stdout),
        "second": json.loads(second.stdout),
        "stderr": [first.stderr, second.stderr],
        "out": [folder / "out", folder / "again"],
    }


def test_pruned_build_ships_a_smaller_model_with_its_record(tiny_pruned_build):
    m = tiny_pruned_build["first"]
    prof = m["profiles"][0]
    names = [v["name"] for v in prof["variants"]]
    assert names[:2] == ["baseline", "compressed"]
    variants = {v["name"]: v for v in prof["variants"]}
    assert variants["compressed"]["macs"] < 0.6 * variants["baseline"]["macs"]
    assert variants["int8"]["parent"] == "compressed"
    record = m["compression"][prof["compression"]]
    assert [s["step"] for s in record["steps"]] == ["prune", "distill"]
    assert record["steps"][0]["history"] and record["steps"][1]["history"]
    assert record["student"]["macs"] < record["teacher"]["macs"]
    report = (tiny_pruned_build["out"][0] / "report.md").read_text()
    assert "## Compression" in report and "after distill" in report


def test_second_build_uses_the_cache_and_ships_the_same_bytes(tiny_pruned_build):
    first, second = tiny_pruned_build["first"], tiny_pruned_build["second"]
    key = first["profiles"][0]["compression"]
    assert first["compression"][key]["cache"]["hit"] is False
    assert second["compression"][key]["cache"]["hit"] is True
    assert "no retraining" in tiny_pruned_build["stderr"][1]
    a = {v["name"]: v["artifact"]["sha256"] for v in first["profiles"][0]["variants"]}
    b = {v["name"]: v["artifact"]["sha256"] for v in second["profiles"][0]["variants"]}
    assert a["compressed"] == b["compressed"]


@pytest.mark.parametrize(
    "compress, field",
    [
        ([{"distill": {}}], "compress"),
        ([{"prune": {"goal": {"macs": 0.5, "params": 0.5}}}], "goal"),
        ([{"prune": {"goal": {"macs": 0.5}, "protect": ["missing"]}}], "protect"),
        ([{"prune": {"goal": {"macs": 0.5}, "criterion": "activation"}}], "criterion"),
        ([{"lowrank": {}}], "lowrank"),
    ],
)
def test_bad_compress_steps_are_one_line_errors(tmp_path, compress, field):
    recipe = write_tiny_project(tmp_path, compress=compress, profiles=["raspberry-pi-5-cpu"])
    proc = run_cli("build", str(recipe), env={"EDGEX_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stderr
    assert field in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_accuracy_floor_undoes_the_step_that_crosses_it():
    model = Residual().eval()
    calls = []

    def drop_fn(m):
        calls.append(costs(m, EXAMPLE)[0])
        return 0.0 if len(calls) < 3 else 0.5  # the third step "costs" half the accuracy

    step = PruneStep(goal={"macs": 0.1}, accuracy_floor=0.01, steps=10)
    result = prune_channels(model, EXAMPLE, step, 1, lambda _m, e: e["macs"] <= 0.1 * 1, drop_fn=drop_fn)
    assert result.stopped_by == "accuracy_floor" and not result.reached
    assert costs(result.module, EXAMPLE)[0] == calls[1]  # the state after step 2, not 3
    replay(fresh := Residual(), EXAMPLE, result.history)
    assert costs(fresh, EXAMPLE)[0] == calls[1]


def test_latency_goal_prunes_per_profile_and_records_the_measurement(tmp_path):
    """A latency goal is per profile: each profile's budget and threads, measured in onnxruntime."""
    import yaml

    profiles = tmp_path / "profiles"
    profiles.mkdir()
    from exporter.profiles import get_profiles

    base = get_profiles(["raspberry-pi-5-cpu"], ())[0]
    for pid, budget in (("board-a", 40.0), ("board-b", 30.0)):
        data = base.model_dump(mode="json", by_alias=True, exclude_none=True)
        data.update(id=pid, threads=1)
        data["budgets"]["latency"] = {"percentile": 50, "max_ms": budget}
        (profiles / f"{pid}.yaml").write_text(yaml.safe_dump(data))
    recipe = write_tiny_project(
        tmp_path,
        compress=[{"prune": {"goal": {"latency": "budget"}, "align": 4}}],
        profiles=["board-a", "board-b"],
        quantize={"enabled": False},
    )
    proc = run_cli(
        "--profiles-dir", str(profiles), "build", str(recipe), "--json", env={"EDGEX_CACHE_DIR": str(tmp_path / "c")}
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    m = json.loads(proc.stdout)
    keys = [p["compression"] for p in m["profiles"]]
    assert len(set(keys)) == 2  # one compression per profile
    for key, budget in zip(keys, (40.0, 30.0)):
        rec = m["compression"][key]
        assert rec["latency"]["budget_ms"] == budget and rec["latency"]["threads"] == 1
        measured = [t["latency_ms"] for t in rec["steps"][0]["trace"] if "latency_ms" in t]
        assert measured and measured[-1] <= 0.9 * budget
