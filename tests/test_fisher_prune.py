"""Fisher-guided, non-uniform pruning of BERT-style encoders: the scores, the global allocation under
the MAC goal, the zero padding that lets a non-uniform student be saved as one transformers folder,
and a build that prunes with it and ships an ONNX file matching its PyTorch model."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import build_compressed
from hf_fixtures import make_tiny_bert, write_bert_project


def _bert(tmp_path, layers: int = 3, heads: int = 4, ffn: int = 64):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=32,
    )
    return BertModel(config).eval()


def _batches(n: int = 2, size: int = 4, seq: int = 12):
    import torch

    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randint(5, 50, (size, seq), generator=gen), torch.ones(size, seq, dtype=torch.int64)) for _ in range(n)
    ]


class _Pooled:
    """The encoder called positionally, returning its mean-pooled output (what an embedding model gives)."""

    def __new__(cls, bert):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.bert = bert

            def forward(self, ids, mask):
                return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state.mean(1)

        return Wrapped().eval()


def test_fisher_scores_rank_a_silenced_neuron_last(tmp_path):
    import torch

    from exporter.compress.fisher import fisher_scores

    bert = _bert(tmp_path)
    with torch.no_grad():  # neuron 7 of layer 1 and head 2 of layer 0 can change nothing downstream
        bert.encoder.layer[1].output.dense.weight[:, 7] = 0
        bert.encoder.layer[0].attention.output.dense.weight[:, 16:24] = 0
    heads, neurons = fisher_scores(_Pooled(bert), bert, _batches(), probes=2)
    assert [len(h) for h in heads] == [4, 4, 4] and [len(n) for n in neurons] == [64, 64, 64]
    assert neurons[1][7] == 0 and min(n for i, n in enumerate(neurons[1]) if i != 7) > 0
    assert heads[0][2] == 0 and min(heads[0][h] for h in (0, 1, 3)) > 0
    # parameters were not touched and no gradient is left behind
    assert all(p.grad is None for p in bert.parameters())


def test_global_plan_meets_the_goal_non_uniformly(tmp_path):
    from exporter.compress.encoder import apply_plan, costs_of
    from exporter.compress.fisher import global_plan

    bert = _bert(tmp_path)
    seq = 12
    # layer 0 matters most, layer 2 least: the allocation must follow
    heads = [[9.0, 8.0, 7.0, 6.0], [3.0, 2.5, 2.0, 1.5], [0.3, 0.2, 0.1, 0.05]]
    neurons = [[10.0 - j / 100 for j in range(64)], [1.0 - j / 1000 for j in range(64)], [0.01] * 64]
    base = costs_of(bert, seq)[0]
    plan = global_plan(bert, (heads, neurons), 0.5, 8, seq)
    kept = [len(v) for v in plan["keep_ffn"].values()]
    assert all(k % 8 == 0 and k >= 8 for k in kept)
    assert kept[0] >= kept[1] >= kept[2] and kept[0] > kept[2]
    assert all(len(v) < 4 for v in plan["prune_heads"].values())  # every layer keeps a head
    assert len(plan["prune_heads"].get("2", [])) >= len(plan["prune_heads"].get("0", []))
    apply_plan(bert, plan)
    assert costs_of(bert, seq)[0] <= 0.5 * base
    with pytest.raises(ValueError):
        global_plan(_bert(tmp_path), (heads, neurons), 0.01, 8, seq)
    # heads kept whole when told: only neurons compete
    plan = global_plan(_bert(tmp_path), (heads, neurons), 0.7, 8, seq, heads_too=False)
    assert plan["prune_heads"] == {}


def test_a_parameter_goal_finds_the_largest_fisher_plan_within_it(tmp_path):
    """The parameter goal shares the bisection of the uniform plans; infeasible fractions (below one
    head and one block per layer) count as too far, never as a plan."""
    from exporter.compress.encoder import apply_plan
    from exporter.compress.fisher import global_plan
    from exporter.compress.prune import _fraction_for_params

    heads = [[9.0, 8.0, 7.0, 6.0], [3.0, 2.5, 2.0, 1.5], [0.3, 0.2, 0.1, 0.05]]
    neurons = [[10.0 - j / 100 for j in range(64)], [1.0 - j / 1000 for j in range(64)], [0.01] * 64]

    def plan_at(model, removed):
        return global_plan(model, (heads, neurons), 1 - removed, 8, 12)

    bert = _bert(tmp_path)
    base = sum(p.numel() for p in bert.parameters())
    fraction = _fraction_for_params(bert, 0.8, 0.95, plan_at)
    apply_plan(bert, plan_at(bert, fraction))
    kept = sum(p.numel() for p in bert.parameters())
    assert kept <= 0.8 * base
    looser = _bert(tmp_path)  # pruning noticeably less breaks the goal: the search did not overshoot
    apply_plan(looser, plan_at(looser, fraction - 0.05))
    assert sum(p.numel() for p in looser.parameters()) > 0.8 * base


def test_zero_padding_changes_no_output(tmp_path):
    import torch

    from exporter.compress.encoder import apply_plan
    from exporter.compress.store import ffn_sizes, pad_ffn, unpad_ffn

    bert = _bert(tmp_path)
    keep = {"0": list(range(0, 64, 2)), "1": list(range(8)), "2": list(range(40))}
    apply_plan(bert, {"drop_layers": [], "prune_heads": {"1": [0, 3]}, "keep_ffn": keep})
    sizes = ffn_sizes(bert)
    assert sizes == [32, 8, 40] and bert.config.intermediate_size == 40
    ids, mask = _batches(1)[0]
    with torch.no_grad():
        want = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        wide = copy.deepcopy(bert)
        pad_ffn(wide, 40)
        assert ffn_sizes(wide) == [40, 40, 40]
        # Zero neurons add exact zeros, but a wider inner dimension may change the GEMM's summation
        # order (2.4e-7 on an AVX-512 host): equal to rounding, far below what a live neuron changes.
        close = dict(rtol=0.0, atol=1e-5)
        torch.testing.assert_close(wide(input_ids=ids, attention_mask=mask).last_hidden_state, want, **close)
        unpad_ffn(wide, sizes)
        assert ffn_sizes(wide) == sizes
        torch.testing.assert_close(wide(input_ids=ids, attention_mask=mask).last_hidden_state, want, **close)


def test_fisher_pruned_encoder_builds_saves_and_reloads(tmp_path):
    """A build with the fisher criterion for a CPU board and a QNN car chip: within the MAC goal, its
    student saved (padded when its layers differ) and reloaded from the cache, exported by optimum
    and matching its PyTorch model (the helper checks the ONNX against PyTorch), quantized for both
    with no variant failing (layers with different head counts go through the QNN rewrites); the
    refit's decision is recorded."""
    make_tiny_bert(tmp_path / "model")
    recipe = write_bert_project(
        tmp_path,
        {"folder": "model", "task": "sentence-embedding"},
        compress=[{"prune": {"goal": {"macs": 0.6}, "align": 8, "criterion": "fisher"}}],
        profiles=["raspberry-pi-5-cpu", "sa8295p-qnn"],
    )
    manifest, _, v, record = build_compressed(recipe, tmp_path / "cache")
    step = record["steps"][0]
    assert step["criterion"] == "fisher" and step["plan"]["allocation"] == "fisher-global"
    assert record["student"]["macs"] <= 0.6 * record["teacher"]["macs"]
    assert all(len(k) % 8 == 0 for k in step["plan"]["keep_ffn"].values())
    assert set(step["reconstruction"]) == {
        "kept",
        "held_out_cosine_before",
        "held_out_cosine_after",
        "fitted_on",
        "judged_on",
    }
    sizes = [len(k) for k in step["plan"]["keep_ffn"].values()]
    entry = next((tmp_path / "cache").rglob("record.json")).parent
    assert (entry / "ffn_sizes.json").is_file() == (len(set(sizes)) > 1)
    if len(set(sizes)) > 1:
        assert json.loads((entry / "ffn_sizes.json").read_text()) == sizes
    assert v["compressed"]["params"] < v["baseline"]["params"]
    for prof in manifest["profiles"]:
        assert not prof.get("failed_variants"), (prof["id"], prof.get("failed_variants"))
        assert any(x["name"] == "int8" for x in prof["variants"]), prof["id"]


def test_a_latency_goal_spends_time_not_macs(tmp_path):
    """With heads priced at their measured time (dearer per MAC than neurons, as on MiniLM) the same
    scores give a plan that removes more heads than the MAC plan, keeps within the time goal, and
    the fixed time (embeddings, LayerNorms) counts against the goal."""
    from exporter.compress.fisher import global_plan, unit_costs
    from exporter.compress.latency_table import predict

    seq = 12
    heads = [[9.0, 8.0, 7.0, 6.0], [3.0, 2.5, 2.0, 1.5], [0.3, 0.2, 0.1, 0.05]]
    neurons = [[10.0 - j / 100 for j in range(64)], [1.0 - j / 1000 for j in range(64)], [0.01] * 64]
    head_macs, neuron_macs = unit_costs(_bert(tmp_path), seq)
    # a head at 4x its MAC share of a neuron's time
    table = {"fixed_ms": 1.0, "head_ms": 4 * head_macs / neuron_macs * 0.001, "neuron_ms": 0.001}
    by_macs = global_plan(_bert(tmp_path), (heads, neurons), 0.6, 8, seq)
    by_time = global_plan(_bert(tmp_path), (heads, neurons), 0.6, 8, seq, table=table)

    def removed_heads(plan):
        return sum(len(v) for v in plan["prune_heads"].values())

    def time_of(plan):
        kept_heads = 12 - removed_heads(plan)
        return predict(table, kept_heads, sum(len(v) for v in plan["keep_ffn"].values()))

    assert removed_heads(by_time) > removed_heads(by_macs)
    assert time_of(by_time) <= 0.6 * predict(table, 12, 192) < time_of(by_macs)
    with pytest.raises(ValueError, match="latency goal"):
        global_plan(_bert(tmp_path), (heads, neurons), 0.05, 8, seq, table=table)


def test_the_latency_table_is_fitted_on_real_timings(tmp_path):
    """Four optimum exports of a BERT timed side by side in onnxruntime: removing heads or neurons
    makes it measurably faster, and the fitted line predicts the four points it was fitted on."""
    from exporter.compress.latency_table import latency_table
    from exporter.pipeline import prepare

    make_tiny_bert(
        tmp_path / "model", hidden_size=256, num_attention_heads=8, intermediate_size=1024, max_position_embeddings=64
    )
    recipe = write_bert_project(tmp_path, {"folder": "model", "task": "sentence-embedding", "sequence_length": 64})
    ctx = prepare(recipe, ["raspberry-pi-5-cpu"])
    table = latency_table(ctx, ctx.model.module)
    assert table["head_ms"] > 0 and table["neuron_ms"] > 0 and table["threads"] == 1
    assert table["counts"]["half heads"] == {"heads": 8, "neurons": 2048}
    assert table["fit_error"] < 0.25, table
    measured = table["measured_p50_ms"]
    assert measured["half both"] < measured["whole"]


def test_the_latency_line_recovers_known_costs_and_never_goes_below_zero():
    from exporter.compress.latency_table import _fit

    counts = {"whole": (72, 9216), "half heads": (36, 9216), "half neurons": (72, 4608), "half both": (36, 4608)}
    line = {n: 1.5 + 0.23 * h + 0.0019 * k for n, (h, k) in counts.items()}
    table = _fit(line, counts)
    assert (table["fixed_ms"], table["head_ms"], table["neuron_ms"]) == (1.5, 0.23, 0.0019)
    assert table["fit_error"] < 0.01
    # halving both saves more than the two halvings apart: the free fit would start below zero
    convex = {**line, "half both": line["half both"] - 4.0}
    table = _fit(convex, counts)
    assert table["fixed_ms"] == 0.0 and table["head_ms"] > 0 and table["neuron_ms"] > 0
