"""The precision registry: every precision a target declares has one handler, and a build and
`edgex quantize` resolve the same one (exporter.quant.precisions)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter.quant import precisions
from exporter.quant.precisions import NOT_QUANTIZED, REGISTRY, handler_for, planned
from exporter.recipe import Precision, QuantizeSection
from exporter.targets import QuantPreset, all_targets


def _primary(precision: str) -> list:
    return [h for h in REGISTRY.values() if h.requested_by == precision and not h.companion]


def test_every_precision_a_target_declares_has_exactly_one_handler():
    declared = {p for t in all_targets().values() for p in t.quantization.precisions} - {NOT_QUANTIZED}
    literals = set(typing.get_args(typing.get_args(QuantPreset.model_fields["precisions"].annotation)[0]))
    assert declared and declared <= literals - {NOT_QUANTIZED}
    for precision in (literals - {NOT_QUANTIZED}) | set(typing.get_args(Precision)):
        assert len(_primary(precision)) == 1, precision
    for handler in REGISTRY.values():  # nothing registered that no recipe or target can name
        assert handler.requested_by in typing.get_args(Precision)
        assert handler.precision in literals


def test_edgex_quantize_offers_exactly_the_registered_precisions():
    from exporter.cli import cli

    choices = next(p for p in cli.commands["quantize"].params if p.name == "precision").type.choices
    assert sorted(choices) == sorted({h.requested_by for h in REGISTRY.values() if not h.companion})


def test_a_build_and_edgex_quantize_resolve_the_same_handler():
    for target in all_targets().values():
        for precision in set(target.quantization.precisions) - {NOT_QUANTIZED}:
            alone = planned(QuantizeSection(precision=precision, dynamic=False), target)
            assert alone == [handler_for(precision)], (target.id, precision)
            with_dynamic = planned(QuantizeSection(precision=precision, dynamic=True), target)
            companions = [h for h in with_dynamic if h.companion]
            assert with_dynamic[0] is handler_for(precision)
            assert all(h.requested_by == precision for h in companions)
            assert bool(companions) == (precision == "int8" and target.quantization.dynamic)


def test_variant_order_is_the_registration_order():
    section = QuantizeSection(precision=["fp16", "int4", "int8"])
    names = [h.variant for h in planned(section, all_targets()["tensorrt"])]
    assert names == ["int8", "int4", "fp16"]  # the recipe's order does not reorder the manifest


def _tiny_onnx(path: Path, weight: np.ndarray) -> Path:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def spied(monkeypatch):
    """Every handler run, recorded: (variant, output file)."""
    calls: list[tuple[str, Path]] = []
    for name, handler in list(REGISTRY.items()):

        def run(req, inputs, out, _real=handler.run, _name=name):
            calls.append((_name, out))
            return _real(req, inputs, out)

        monkeypatch.setitem(REGISTRY, name, dataclasses.replace(handler, run=run))
    return calls


def test_both_paths_run_the_registered_handler(spied, tmp_path):
    from exporter.pipeline.variants import quantized
    from exporter.profiles import get_profiles
    from exporter.quant.standalone import quantize_file

    rng = np.random.default_rng(0)
    model = _tiny_onnx(tmp_path / "m.onnx", rng.normal(size=(4, 4)).astype(np.float32))
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rng.normal(size=(8, 4)).astype(np.float32))
    profile = get_profiles(["jetson-orin-nano-tensorrt"])[0]
    result = quantize_file(model, profile, calib, tmp_path / "out" / "m-fp16.onnx", precision="fp16")
    assert result["ok"] and result["fp16"]["keep_io_types"] is True
    assert [name for name, _ in spied] == ["fp16"]

    target = all_targets()["tensorrt"]
    section = QuantizeSection(precision="fp16")
    ctx = SimpleNamespace(
        loaded=SimpleNamespace(recipe=SimpleNamespace(quantize=section, seed=0)),
        model=SimpleNamespace(kind="onnx"),
        calibration=None,
        inputs=[SimpleNamespace(shape=[1, 4])],
        replay=None,
    )
    cache: dict = {}
    (handler,) = planned(section, target)
    first = quantized(ctx, handler, target, model, tmp_path, cache, 0.01, "p", model)
    again = quantized(ctx, handler, target, model, tmp_path, cache, 0.01, "p", model)
    assert [name for name, _ in spied] == ["fp16", "fp16"]  # the second request was a cache hit
    assert first == again and first[1]["precision"] == "fp16" and first[0].name == "fp16-m.onnx"
    assert list(cache) == [precisions.StepKey("fp16", "m.onnx")]


def test_edgex_quantize_checks_the_handlers_post_condition(monkeypatch, tmp_path):
    """A produced model with NaN weights fails as in a build (exit 1), and nothing is written to --out."""
    from exporter.errors import GateFailure
    from exporter.profiles import get_profiles
    from exporter.quant.standalone import quantize_file

    model = _tiny_onnx(tmp_path / "m.onnx", np.eye(4, dtype=np.float32))
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.ones((4, 4), np.float32))
    handler = REGISTRY["fp16"]

    def broken(req, inputs, out):
        _tiny_onnx(out, np.full((4, 4), np.nan, np.float32))
        return precisions.Produced(out, {}, {"fp16": {}})

    monkeypatch.setitem(REGISTRY, "fp16", dataclasses.replace(handler, run=broken))
    out = tmp_path / "out.onnx"
    profile = get_profiles(["jetson-orin-nano-tensorrt"])[0]
    with pytest.raises(GateFailure, match="NaN/Inf"):
        quantize_file(model, profile, calib, out, precision="fp16")
    assert not out.exists() and not list(tmp_path.glob(".edgex-quantize-*"))
