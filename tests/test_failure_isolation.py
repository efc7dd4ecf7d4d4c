"""Failure isolation and honest errors (issue 18, items 5 and 6).

One variant's failure is recorded and the build goes on; an error on a file edgex wrote is edgex's
(exit 3, the step named, never "re-export the model"); a sandboxed child's error reaches the user
whole; no message is cut mid-word; no INT8 slower than FP32 ships on a CPU target.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli, write_tiny_project
from onnx import TensorProto, helper, numpy_helper

FAST = {"warmup_runs": 1, "min_runs": 5, "min_seconds": 0.02, "max_seconds": 0.5}


def _tiny_onnx(path: Path, constant_weights: bool = False) -> Path:
    """Conv(+bias) -> Relu -> pool -> MatMul, built in code. With `constant_weights` the conv weight is
    a Constant node, as PaddlePaddle exports write them: onnxruntime's dynamic quantizer refuses that
    ("Expected w to be an initializer"), exactly as on the PP-OCRv4 recogniser."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    inits = [
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "g"),
    ]
    nodes = []
    if constant_weights:
        nodes.append(helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w, "wv"), name="cw"))
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    nodes += [
        helper.make_node("Conv", ["image", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "g"], ["logits"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# --------------------------------------------------------------------------- a failed variant


def test_a_failed_variant_is_recorded_and_the_others_ship(tmp_path):
    """int8-dynamic fails in its quantize step (test hook): baseline and static INT8 are still built,
    measured and packaged, the manifest records the failure with step and reason, the report lists
    it, and the build exits 1 (a variant asked for is missing; artifacts kept)."""
    recipe = write_tiny_project(tmp_path / "proj", profiles=["raspberry-pi-5-cpu"], bench=FAST)
    proc = run_cli("build", str(recipe), "--json", env={"EDGEX_TEST_FAULT": "quantize:int8-dynamic"})
    assert proc.returncode == 1, proc.stderr[-3000:]
    manifest = json.loads(proc.stdout)
    prof = manifest["profiles"][0]
    assert [v["name"] for v in prof["variants"]] == ["baseline", "int8"]
    assert prof["deliverable"] in ("baseline", "int8")
    (failed,) = prof["failed_variants"]
    assert failed["name"] == "int8-dynamic" and failed["precision"] == "int8" and failed["parent"] == "baseline"
    assert failed["failed"]["step"] == "quantize int8-dynamic"
    assert "EDGEX_TEST_FAULT" in failed["failed"]["error"] and failed["failed"]["file"].endswith(".onnx")
    assert prof["ok"] is False and manifest["ok"] is False
    gate = [v for v in prof["verdicts"] if v["budget"] == "failed_variants"]
    assert gate and gate[0]["ok"] is False and "int8-dynamic" in gate[0]["basis"]
    out = tmp_path / "proj" / "out"
    folder = out / "raspberry-pi-5-cpu"
    assert (folder / "baseline.onnx").is_file() and (folder / "int8.onnx").is_file()
    assert not (folder / "int8-dynamic.onnx").exists()
    report = (out / "report.md").read_text()
    assert "Failed variants" in report and "| int8-dynamic | int8 | quantize int8-dynamic |" in report
    assert "vs FP32 p50" in report
    assert "int8-dynamic FAILED in step 'quantize int8-dynamic'" in proc.stderr
    # the manifest with its new record reads back through the strict schema and verifies file by file
    check = run_cli("verify", str(out))
    assert check.returncode == 0, check.stderr


def test_the_real_dynamic_int8_refusal_is_an_internal_error_of_its_step(tmp_path):
    """onnxruntime's dynamic quantizer on Constant-node weights (PP-OCRv4 rec: "Expected conv2d_157.w_0
    to be an initializer") is the step's failure on edgex's file, named as such: what a build records."""
    from exporter.errors import InternalError
    from exporter.quant.precisions import REGISTRY, Request, RunInputs
    from exporter.recipe import QuantizeSection
    from exporter.targets import get_target

    model = _tiny_onnx(tmp_path / "const.onnx", constant_weights=True)
    handler = REGISTRY["int8-dynamic"]
    req = Request(model, get_target("cpu"), QuantizeSection(), 0.01)
    with pytest.raises(InternalError) as err:
        handler.run(req, RunInputs(None, 1, 0), tmp_path / "int8-dynamic-const.onnx")
    exc = err.value
    assert exc.exit_code == 3 and exc.step == "quantize int8-dynamic" and exc.file == "int8-dynamic-const.onnx"
    assert "Expected w to be an initializer" in exc.reason
    assert "re-export" not in exc.one_line()


# --------------------------------------------------------------------------- errors on edgex's own files


def _quantize_project(tmp_path: Path) -> tuple[Path, Path]:
    model = _tiny_onnx(tmp_path / "tiny.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, image=np.random.default_rng(1).standard_normal((8, 3, 16, 16)).astype(np.float32))
    return model, calib


def test_a_broken_file_edgex_wrote_is_exit_3_naming_the_step(tmp_path):
    """The temporary INT8 file fails to load (test hook truncates it): exit 3, the step and the file
    named, no "re-export the model", and under -v the sandboxed child's own traceback."""
    model, calib = _quantize_project(tmp_path)
    args = ["quantize", str(model), "--profile", "raspberry-pi-5-cpu", "--calibration", str(calib)]
    args += ["--out", str(tmp_path / "q.onnx"), "--samples", "8"]
    env = {"EDGEX_TEST_FAULT": "corrupt:int8-quantized"}
    proc = run_cli(*args, env=env)
    assert proc.returncode == 3, proc.stderr[-3000:]
    err = proc.stderr
    assert "internal error in step 'static INT8:" in err and "int8-0.onnx" in err, err[-2000:]
    assert "re-export" not in err
    assert not (tmp_path / "q.onnx").exists()
    verbose = run_cli("-v", *args, env=env)
    assert verbose.returncode == 3
    # the child's traceback (the parent's alone would end at the line that re-raised it)
    assert "Traceback" in verbose.stderr and "exporter/quantize.py" in verbose.stderr


def test_a_validation_error_in_the_sandbox_child_names_the_field(tmp_path):
    """A pydantic error in the child reaches the parent with the field and reason, not only
    "1 validation error for BenchSection", and with the child's traceback for -v."""
    from exporter.errors import InternalError
    from exporter.isolate import run_on_model
    from exporter.sandbox_jobs import bench_job

    model = _tiny_onnx(tmp_path / "tiny.onnx")
    payload = {"profile": "raspberry-pi-5-cpu", "profiles_dirs": [], "settings": {"min_runs": 0}}
    with pytest.raises(InternalError) as err:
        run_on_model(bench_job, model, payload)
    line = err.value.one_line()
    assert "validation error for BenchSection" in line and "min_runs" in line and "greater than" in line
    assert err.value.exit_code == 3
    assert "Traceback" in err.value.details and "ValidationError" in err.value.details


# --------------------------------------------------------------------------- messages whole


def test_long_messages_are_cut_at_a_word_boundary_only():
    from exporter.errors import clip

    text = " ".join(f"word{i:03d}" for i in range(300))
    cut = clip(text, 200)
    assert len(cut) <= 202 and cut.endswith(" …")
    assert all(w.startswith("word") and len(w) == 7 for w in cut[:-2].split())  # every word whole
    assert clip("short message", 200) == "short message"


def test_internal_error_message_is_whole_with_pydantic_fields(capsys):
    """The command wrapper prints a long internal error without cutting a word, and a pydantic
    ValidationError with its field (the first line alone names only the model)."""
    from exporter.cli.common import command
    from exporter.recipe import BenchSection

    long = "onnxruntime says " + " ".join(f"detail{i:03d}" for i in range(80))

    @command
    def boom(as_json: bool = False) -> int:
        raise RuntimeError(long)

    with pytest.raises(SystemExit) as code:
        boom()
    assert code.value.code == 3
    err = capsys.readouterr().err
    assert long in err  # whole: under the 1000-character safety clip

    longer = "onnxruntime says " + " ".join(f"detail{i:03d}" for i in range(400))

    @command
    def runaway(as_json: bool = False) -> int:
        raise RuntimeError(longer)

    with pytest.raises(SystemExit):
        runaway()
    shown = capsys.readouterr().err.split("RuntimeError: ", 1)[1].split(" …")[0]
    assert all(w == "onnxruntime" or w == "says" or len(w) == 9 for w in shown.split())  # no word cut

    @command
    def invalid(as_json: bool = False) -> int:
        BenchSection(min_runs=0)
        return 0

    with pytest.raises(SystemExit) as code:
        invalid()
    assert code.value.code == 3
    err = capsys.readouterr().err
    assert "min_runs" in err and "BenchSection" in err


# --------------------------------------------------------------------------- the speed rule


def _variant(name: str, precision: str, p50: float, size: int) -> dict:
    return {
        "name": name,
        "artifact": {"precision": precision, "bytes": size},
        "latency_ms": {"p50": p50},
        "verdicts": [],
        "ok": True,
    }


def test_no_int8_slower_than_fp32_ships_on_a_cpu_target():
    """Static and dynamic INT8 alike: more than 5% slower than FP32 fails the speed verdict, so FP32
    ships even though the INT8 files are smaller and within the deliverable tie band."""
    from exporter.pipeline.deliverable import SPEED_VERDICT, choose_deliverable, speed_verdicts
    from exporter.targets import get_target

    cpu = get_target("cpu")
    variants = [
        _variant("baseline", "fp32", 1.00, 4000),
        _variant("int8", "int8", 1.08, 1000),  # inside the 10% tie band: would ship as the smaller file
        _variant("int8-dynamic", "int8", 1.20, 1100),
    ]
    speed_verdicts(variants, cpu, 1)
    verdicts = {v["name"]: [x for x in v["verdicts"] if x["budget"] == SPEED_VERDICT] for v in variants}
    assert verdicts["baseline"] == []
    assert verdicts["int8"][0]["ok"] is False and verdicts["int8"][0]["value"] == pytest.approx(1.08)
    assert verdicts["int8-dynamic"][0]["ok"] is False
    assert choose_deliverable(variants, cpu)["name"] == "baseline"
    fast = [_variant("baseline", "fp32", 1.0, 4000), _variant("int8", "int8", 0.6, 1000)]
    speed_verdicts(fast, cpu, 1)
    assert fast[1]["verdicts"][0]["ok"] is True and choose_deliverable(fast, cpu)["name"] == "int8"


def test_npu_targets_get_no_host_speed_verdict_and_the_report_says_why():
    from exporter.pipeline.deliverable import speed_verdicts
    from exporter.report import _speed_lines
    from exporter.targets import get_target

    variants = [_variant("baseline", "fp32", 1.0, 4000), _variant("int8", "int8", 2.0, 1000)]
    speed_verdicts(variants, get_target("qnn"), 1)
    assert all(v["verdicts"] == [] for v in variants)
    text = " ".join(_speed_lines({"execution_provider": "QNNExecutionProvider", "variants": variants}))
    assert "not a device figure" in text


def test_failed_record_is_strict_in_the_manifest_schema():
    """The new optional field is checked like the rest: an unknown key in a failure is refused."""
    from pydantic import ValidationError

    from exporter.manifest_schema import FailedVariant

    good = {"name": "int8", "precision": "int8", "parent": "baseline", "failed": {"step": "s", "error": "e"}}
    assert FailedVariant.model_validate(good).to_dict() == good
    with pytest.raises(ValidationError):
        FailedVariant.model_validate({**good, "failed": {"step": "s", "error": "e", "why": "x"}})


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
