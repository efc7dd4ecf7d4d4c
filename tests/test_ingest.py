"""Ingest of ONNX files as other exporters wrote them (issue 18, items 2 and 3): old opsets converted
and parity-checked, Constant-node weights promoted, If nodes inlined or refused by name, and
`edgex validate` failing where `edgex build` would. The real files come from the wheels in .venv."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from exporter.errors import UsageError
from exporter.ingest import ingest, ingest_file
from exporter.targets import get_target


def _wheel_file(package: str, *parts: str) -> Path:
    path = Path(str(importlib.resources.files(package).joinpath(*parts)))
    if not path.is_file():
        pytest.skip(f"{package} does not ship {'/'.join(parts)}")
    return path


def _ocr(name: str) -> Path:
    pytest.importorskip("rapidocr_onnxruntime")
    return _wheel_file("rapidocr_onnxruntime", "models", name)


def _vad(name: str) -> Path:
    pytest.importorskip("silero_vad")
    return _wheel_file("silero_vad", "data", name)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


# --------------------------------------------------------------------------- real files


def test_ppocr_rec_converted_promoted_and_equal():
    path = _ocr("ch_PP-OCRv4_rec_infer.onnx")
    model, record = ingest(path, get_target("cpu"), {"x": [1, 3, 48, 320]})
    assert (record.opset_from, record.opset_to) == (12, 17)
    assert record.constants_promoted >= 420 and record.constants_bytes > 10_000_000
    assert "Constant" not in _ops(model)
    assert record.parameters == 2_690_352  # the file itself holds 0 initializers
    assert record.parity["inputs"] == {"x": [1, 3, 48, 320]}
    assert record.parity["max_abs_diff"] <= 1e-4 and record.parity["cosine"] > 0.999999


def test_ppocr_cls_from_opset_11():
    path = _ocr("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    model, record = ingest(path, get_target("qnn"), {"x": [1, 3, 48, 192]})
    assert (record.opset_from, record.opset_to) == (11, 17)
    assert record.constants_promoted == 308 and record.parameters == 133_700
    assert record.parity["max_abs_diff"] <= 1e-4


def test_dynamic_int8_runs_on_promoted_weights(tmp_path):
    """The failure quoted in the issue: 'Expected conv2d_…w_0 to be an initializer' in dynamic INT8."""
    from exporter.quant.dynamic import quantize_dynamic_int8

    path = _ocr("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    work, record = ingest_file(path, get_target("cpu"), {"x": [1, 3, 48, 192]}, tmp_path)
    assert work != path and record.changed
    quantize_dynamic_int8(work, tmp_path / "dyn.onnx")
    assert "ConvInteger" in _ops(onnx.load(str(tmp_path / "dyn.onnx")))


def test_silero_nested_if_inlined_for_declared_rate_and_static_shapes():
    path = _vad("silero_vad.onnx")
    shapes = {"input": [1, 576], "state": [2, 1, 128], "sr": []}
    rate = {"sr": np.array(16000, np.int64)}
    model, record = ingest(path, [get_target("qnn"), get_target("cpu")], shapes, constants=rate)
    assert (record.opset_from, record.opset_to) == (16, 17) and len(record.inlined) == 2
    assert {"Conv", "LSTM"} <= set(_ops(model)) and record.parity["max_abs_diff"] <= 1e-4


def test_silero_if_refused_by_name_on_integer_only_target():
    path = _vad("silero_vad_op18_ifless.onnx")
    with pytest.raises(UsageError, match=r"If node 'node_cond__1' holds \d+ weighted ops.*target 'qnn'") as info:
        ingest(path, get_target("qnn"), {"input": [1, 512], "state": [2, 1, 128]})
    assert "\n" not in str(info.value)


def test_silero_if_kept_on_cpu_and_inlined_when_sample_rate_fixed():
    path = _vad("silero_vad_op18_ifless.onnx")
    feed = {"input": np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)}
    feed["state"] = np.zeros((2, 1, 128), np.float32)
    feed["sr"] = np.array(16000, np.int64)
    same, record = ingest(path, get_target("cpu"), feed=feed)
    assert not record.changed and record.control_flow == ["If:node_cond__1"]
    model, record = ingest(path, get_target("qnn"), feed=feed, constants={"sr": np.array(16000, np.int64)})
    assert record.inlined == ["node_cond__1"] and record.control_flow == []
    assert "If" not in _ops(model) and _ops(model).count("Conv") == 6
    assert [i.name for i in model.graph.input] == ["input", "sr", "state"]  # the app still feeds sr
    assert record.parity["max_abs_diff"] <= 1e-4


# --------------------------------------------------------------------------- tiny models


def _tiny(opset: int, extra_nodes=(), constant_weight: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Constant", [], ["w"], value=weight),
        helper.make_node("Constant", [], ["bias"], value_floats=[0.5, -0.5, 0.25, 0.0]),
        helper.make_node("Constant", [], ["one"], value_float=1.0),
        helper.make_node("MatMul", ["x", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "bias"], ["a"]),
        helper.make_node("Mul", ["a", "one"], ["y"]),
        *extra_nodes,
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_tiny_constants_promoted_and_counted():
    model, record = ingest(_tiny(17), get_target("cpu"), {"x": [2, 8]})
    assert record.opset_from == record.opset_to == 17
    assert record.constants_promoted == 3 and record.constants_bytes == 8 * 4 * 4 + 4 * 4 + 4
    assert record.parameters == 32 + 4 + 1
    assert sorted(i.name for i in model.graph.initializer) == ["bias", "one", "w"]
    assert record.parity["max_abs_diff"] == 0.0


def test_dynamic_dimension_without_shape_is_exit_2():
    with pytest.raises(UsageError, match=r"input 'x' has dynamic dimensions.*--shape x="):
        ingest(_tiny(12), get_target("cpu"))


def _rms_norm_opset_23() -> onnx.ModelProto:
    """An op with no adapter below opset 23 in onnx's version converter: it cannot be lowered."""
    rms = helper.make_graph(
        [helper.make_node("RMSNormalization", ["x", "s"], ["y"], axis=-1)],
        "rms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(np.ones(8, np.float32), "s")],
    )
    model = helper.make_model(rms, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    return model


def test_opset_above_range_lowered_or_refused():
    model, record = ingest(_tiny(22), get_target("cpu"), {"x": [1, 8]})
    assert (record.opset_from, record.opset_to) == (22, 21)
    new = _rms_norm_opset_23()
    with pytest.raises(UsageError, match=r"cannot lower the model from opset 23 to 21 .*RMSNormalization"):
        ingest(new, get_target("cpu"))


def test_parity_failure_names_the_output(monkeypatch):
    import exporter.ingest as ingest_module

    def broken(model, to, where, field_name):
        for init in model.graph.node:
            if init.op_type == "Constant" and init.output[0] == "one":
                init.attribute[0].f = 2.0
        model.opset_import[0].version = to
        return model

    monkeypatch.setattr(ingest_module, "convert_opset", broken)
    with pytest.raises(UsageError, match=r"values of output 'y' differ from the original"):
        ingest(_tiny(12), get_target("cpu"), {"x": [1, 8]})


# --------------------------------------------------------------------------- validate = build's checks


def _onnx_recipe(folder: Path, model: onnx.ModelProto, shape: list[int], profiles: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", x=rng.standard_normal((8, *shape[1:])).astype(np.float32))
    np.savez(folder / "eval.npz", x=rng.standard_normal((8, *shape[1:])).astype(np.float32))
    recipe = {
        "version": 1,
        "name": "given",
        "model": {"source": "onnx", "path": "model.onnx"},
        "inputs": [{"name": "x", "shape": shape, "dtype": "float32"}],
        "data": {"calibration": {"npz": "calib.npz"}, "evaluation": {"npz": "eval.npz"}},
        "metric": "cosine",
        "quantize": {"calibration_samples": 8},
        "profiles": profiles,
        "output": "out",
        "seed": 0,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_validate_ingests_old_opset_and_loads_promoted_graph(tmp_path):
    from exporter.pipeline import prepare
    from exporter.validate import validate_recipe

    recipe = _onnx_recipe(tmp_path / "p", _tiny(12), [1, 8], ["raspberry-pi-5-cpu"])
    assert validate_recipe(recipe)["ok"] is True
    ctx = prepare(recipe, with_reference=False)
    assert ctx.model.ingest["opset_from"] == 12 and ctx.model.ingest["opset_to"] == 17
    loaded = onnx.load(str(ctx.model.onnx_path))
    assert "Constant" not in _ops(loaded) and loaded.opset_import[0].version == 17


def test_validate_refuses_what_build_would(tmp_path):
    """validate used to say "ok" for these; build then stopped with exit 2 (or 3)."""
    from exporter.validate import validate_recipe

    new = _rms_norm_opset_23()
    recipe = _onnx_recipe(tmp_path / "above", new, [1, 8], ["raspberry-pi-5-cpu"])
    with pytest.raises(UsageError, match="cannot lower the model from opset 23"):
        validate_recipe(recipe)
    # declared at a shape the model cannot run at (an old opset, so ingest runs it)
    recipe = _onnx_recipe(tmp_path / "shape", _tiny(12), [1, 5], ["raspberry-pi-5-cpu"])
    with pytest.raises(UsageError, match=r"axis 1 is fixed at 8 in the model"):
        validate_recipe(recipe)


def test_static_shapes_fixed_axis_by_axis_when_symbols_repeat():
    """paddle2onnx writes '?' for both height and width: make_input_shape_fixed refused it
    ("Can't replace existing fixed size of 48 with 192"), an exit 3 on the cls model for QNN."""
    from exporter.export import _fix_input_shapes
    from exporter.recipe import InputSpec

    model = onnx.load(str(_ocr("ch_ppocr_mobile_v2.0_cls_infer.onnx")))
    _fix_input_shapes(model, [InputSpec(name="x", shape=[1, 3, 48, 192])])
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 48, 192]
