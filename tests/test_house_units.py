"""The pieces issue 15 made single: the graph edit through onnx_ir, the linear topological sort,
one dtype-size table, one synthetic feed, one timing block, one atomic file writer. Fast, no build."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter.bench.board_script import block_limits, open_session, synthetic_feed, timed_block
from exporter.bench.estimate import traffic_bytes
from exporter.quant.fp16 import _sort_topologically
from exporter.quant.qdq_graph import activation_pairs, keep_float
from exporter.staging import atomic_file


def _passes_order(graph: onnx.GraphProto) -> list[str]:
    """The quadratic order fp16 used to compute: the oracle the linear sort must match."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, order = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                order.append(n.name)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            order += [n.name for n in rest]
            break
        pending = rest
    return order


def test_linear_sort_keeps_the_order_of_repeated_passes():
    """Cycles, missing inputs, self-reads, multi-output nodes: the same order as before, so FP16 files keep their bytes."""
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(1, 20)
        nodes = []
        for i in range(n):
            ins = [rng.choice(["x", "", "missing"] + [f"t{j}" for j in range(n)]) for _ in range(rng.randint(0, 3))]
            if rng.random() < 0.1:
                ins.append(f"u{rng.randrange(n)}")
            outs = [f"t{i}"] + ([f"u{i}"] if rng.random() < 0.2 else [])
            nodes.append(helper.make_node("Op", ins, outs, name=f"n{i}"))
        rng.shuffle(nodes)
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)], [])
        want = _passes_order(graph)
        _sort_topologically(graph)
        assert [node.name for node in graph.node] == want


def test_linear_sort_is_linear():
    """A chain written backwards took one pass per node (quadratic); 20,000 nodes now take well under a second."""
    n = 20_000
    nodes = [helper.make_node("Op", [f"t{i - 1}" if i else "x"], [f"t{i}"], name=f"n{i}") for i in reversed(range(n))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)], [])
    start = time.perf_counter()
    _sort_topologically(graph)
    assert time.perf_counter() - start < 10
    assert [node.name for node in graph.node] == [f"n{i}" for i in range(n)]


def _qdq_model() -> onnx.ModelProto:
    """x -> Q/DQ -> MatMul(W via DQ) -> y -> Q/DQ -> out: an activation pair inside, one on the graph output."""
    w = numpy_helper.from_array(np.arange(-8, 8, dtype=np.int8).reshape(4, 4), "w_q")
    inits = [
        w,
        numpy_helper.from_array(np.array(0.5, dtype=np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, dtype=np.int8), "w_zp"),
        numpy_helper.from_array(np.array(0.1, dtype=np.float32), "s"),
        numpy_helper.from_array(np.array(0, dtype=np.uint8), "z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["x_q"], name="qx"),
        helper.make_node("DequantizeLinear", ["x_q", "s", "z"], ["x_dq"], name="dqx"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dqw"),
        helper.make_node("MatMul", ["x_dq", "w"], ["out_QuantizeLinear_Input"], name="mm"),
        helper.make_node("QuantizeLinear", ["out_QuantizeLinear_Input", "s", "z"], ["out_q"], name="qo"),
        helper.make_node("DequantizeLinear", ["out_q", "s", "z"], ["out"], name="dqo"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_keep_float_of_nothing_changes_no_byte():
    model = _qdq_model()
    assert keep_float(model, set()).SerializeToString() == model.SerializeToString()


def test_keep_float_on_the_input_restores_float_weights_and_the_output_keeps_its_name():
    model = _qdq_model()
    kept = keep_float(model, {"x", "out_QuantizeLinear_Input"})
    onnx.checker.check_model(kept)
    assert activation_pairs(kept) == []
    assert [n.name for n in kept.graph.node] == ["mm"]  # the weight DQ went with the float activation
    assert list(kept.graph.node[0].input) == ["x", "w_q_float"] and list(kept.graph.node[0].output) == ["out"]
    weights = {i.name: numpy_helper.to_array(i) for i in kept.graph.initializer}
    assert sorted(weights) == ["w_q_float"]
    np.testing.assert_array_equal(weights["w_q_float"], np.arange(-8, 8, dtype=np.float32).reshape(4, 4) * 0.5)
    assert model.graph.node[0].name == "qx"  # the input model is left as it was


def test_traffic_bytes_counts_packed_types_from_the_one_table():
    """The estimate's own table had no INT4 or DOUBLE: an INT4 weight counted 4 bytes per element (8x)."""

    def model(data_type: int) -> onnx.ModelProto:
        weight = helper.make_tensor("w", data_type, [64], [0] * 64)
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
            [weight],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])

    activations = 2 * 4  # y: one float, written and read
    assert traffic_bytes(model(TensorProto.INT4)) == 32 + activations
    assert traffic_bytes(model(TensorProto.DOUBLE)) == 512 + activations
    assert traffic_bytes(model(TensorProto.FLOAT16)) == 128 + activations


def _tiny_onnx(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT), helper.make_node("Add", ["f", "x"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_one_synthetic_feed_from_a_path_a_session_or_its_inputs(tmp_path):
    path = _tiny_onnx(tmp_path / "m.onnx")
    session = open_session(path)
    shapes = {"x": [1, 3]}  # "batch" is dynamic: its size is given, never guessed
    feeds = [synthetic_feed(p, 3, shapes) for p in (path, session, session.get_inputs())]
    for feed in feeds:
        assert sorted(feed) == ["ids", "x"] and feed["x"].shape == (1, 3) and not feed["ids"].any()
        np.testing.assert_array_equal(feed["x"], feeds[0]["x"])
    assert not np.array_equal(synthetic_feed(path, 4, shapes)["x"], feeds[0]["x"])  # seeded


def test_timed_block_stops_at_its_runs_and_seconds():
    calls = []
    samples: list[float] = []
    count, seconds = timed_block(lambda _, feed: calls.append(feed), {"a": 1}, block_limits(9, 0.0, 60.0, 2), samples)
    assert count == 5 == len(samples) == len(calls) and seconds >= 0  # 9 runs over 2 blocks: 5 each
    count, _ = timed_block(lambda *_: time.sleep(0.002), {}, block_limits(1000, 0.0, 0.01, 1), samples)
    assert 1 <= count < 1000  # the maximum seconds end a block that has not got its runs


def test_atomic_file_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "plan.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]
    with atomic_file(target) as tmp:
        assert tmp.name == "plan.json" and tmp.parent != tmp_path
        tmp.write_text("new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_traffic_of_a_qdq_file_counts_what_the_fused_kernels_move(tmp_path):
    """A static INT8 file counted every float beside its Q/DQ: 2.2x its FP32 parent's bytes, so the
    detector example's INT8 energy estimate came out above FP32's. Fused, INT8 moves less than FP32."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    from exporter.data import make_dataset
    from exporter.quant.calibration import FeedReader
    from tests.tiny_models import matmul_onnx

    fp32 = tmp_path / "fp32.onnx"
    q = tmp_path / "q.onnx"
    model = matmul_onnx(64, relu=True, seed=0)
    onnx.save(model, str(fp32))
    data = make_dataset({"x": np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)}, None)
    quantize_static(str(fp32), str(q), FeedReader(data.feeds(1)), quant_format=QuantFormat.QDQ)
    weights_fp32, weights_int8 = 64 * 64 * 4, 64 * 64
    assert traffic_bytes(model) >= weights_fp32
    assert traffic_bytes(onnx.load(str(q))) < traffic_bytes(model) - (weights_fp32 - weights_int8) // 2
