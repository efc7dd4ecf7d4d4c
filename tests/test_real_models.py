"""Issue 18 as a user met it: six real third-party ONNX files, none of which built as shipped.

One test per failure the issue quotes, each on the real file from its PyPI wheel (the `models`
extra that `make test` installs: rapidocr-onnxruntime's PP-OCRv4 det/rec and mobile cls, and
silero-vad), through the CLI as a user runs it, and the examples (examples/ocr-*.yaml,
examples/vad.yaml) validated and built. The YOLO detector of the issue ships in no wheel; its
failures (dynamic dimensions set to 1, MACs at 1x1) are the same code paths as det's here.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT, run_cli

EXAMPLES = ROOT / "examples"
OCR_SHAPES = {"det": "x=1x3x640x640", "rec": "x=1x3x48x320", "cls": "x=1x3x48x192"}


def _wheel_file(package: str, *parts: str) -> Path:
    """A model file as its wheel ships it; missing means the setup is broken, not a skip."""
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        pytest.fail(f"{package} is not installed: `make test` installs it (pip install -e '.[models]')")
    path = Path(str(root.joinpath(*parts)))
    if not path.is_file():
        pytest.fail(f"{path} is missing from the {package} wheel: reinstall the `models` extra")
    return path


def ocr(kind: str) -> Path:
    name = {
        "det": "ch_PP-OCRv4_det_infer.onnx",
        "rec": "ch_PP-OCRv4_rec_infer.onnx",
        "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    }[kind]
    return _wheel_file("rapidocr_onnxruntime", "models", name)


def vad() -> Path:
    return _wheel_file("silero_vad", "data", "silero_vad.onnx")


def _examples_module(name: str):
    """examples/NAME.py imported as the recipes import it (the data the examples build from)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(EXAMPLES))


def _one_line_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("edgex: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


def _npz(tmp_path: Path, name: str, x: np.ndarray) -> Path:
    path = tmp_path / f"{name}.npz"
    np.savez(path, x=x)
    return path


def _independent_macs(path: Path, feed: dict[str, np.ndarray]) -> int:
    """MACs of every Conv/MatMul/Gemm from the tensors onnxruntime really computes at FEED's shapes
    (each such tensor exposed as an output), so `inspect`'s figure is checked against a count that
    shares none of its code."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    wanted = list(dict.fromkeys(t for n in nodes for t in (n.input[0], n.input[1], n.output[0])))
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(
        helper.make_empty_tensor_value_info(t) for t in wanted if t not in inits and t not in present
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed))) | inits
    total = 0
    for n in nodes:
        out, w = values[n.output[0]], values[n.input[1]]
        k = int(np.prod(w.shape[1:])) if n.op_type == "Conv" else values[n.input[0]].shape[-1]
        total += out.size * k
    return total


# ------------------------------------------------- "opset 12 is outside the target's range — re-export"


@pytest.mark.parametrize("example", ["ocr-det", "ocr-rec", "ocr-cls"])
def test_validate_converts_old_opsets_and_promotes_constant_weights(example):
    """PP-OCR build: exit 2 "opset 12 is outside the target's range [17, 21] — re-export" while
    `validate` said ok. Now validate runs build's ingest and says what it converted."""
    result = run_cli("validate", str(EXAMPLES / f"{example}.yaml"))
    assert result.returncode == 0, result.stderr
    log = result.stdout + result.stderr
    assert re.search(r"opset 1[12] -> 1[7-9]", log), log
    assert re.search(r"[1-9]\d* Constant nodes promoted to initializers", log), log
    assert "re-export" not in log


# ------------------------------------- dynamic dimensions set to 1: "bench PASSED at 1x1", "Pad reflect {1,1}"


@pytest.mark.parametrize("command", ["inspect", "bench"])
@pytest.mark.parametrize(("model", "input_name"), [("rec", "x"), ("cls", "x"), ("vad", "input")])
def test_dynamic_dims_without_shape_exit_2_naming_the_dimension(command, model, input_name):
    path = vad() if model == "vad" else ocr(model)
    args = [command, str(path)] + (["--profile", "raspberry-pi-5-cpu"] if command == "bench" else [])
    result = run_cli(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    line = _one_line_error(result.stderr)
    assert f"input '{input_name}'" in line and "axis" in line and "dynamic" in line, line
    assert "--shape" in line and "re-export" not in line, line


def test_vad_inspect_and_bench_run_at_the_declared_chunk():
    """Silero VAD ran with every dynamic size 1 and died in Pad ("Input shape {1,1}"). Its scalar
    `sr` decides an If: fed 0 (the synthetic integer), the 8 kHz branch fails on a 16 kHz chunk, so
    the sample rate is given as the recipe gives it (`value: 16000`), with `--value` (proposed)."""
    shapes = ["--shape", "input=1x576", "--shape", "state=2x1x128"]
    result = run_cli("inspect", str(vad()), *shapes, "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["shapes"]["input"] == [1, 576], facts["shapes"]
    result = run_cli(
        "bench", str(vad()), "--profile", "raspberry-pi-5-cpu", *shapes, "--value", "sr=16000", "--runs", "20"
    )
    assert result.returncode in (0, 1), result.stderr
    assert "Pad" not in result.stderr and "re-export" not in result.stderr


# ------------------------------------------- "inspect reported 0 parameters (Constant weights)", MACs at 1x1


@pytest.mark.parametrize("model", ["rec", "cls"])
def test_inspect_counts_constant_weights_and_macs_at_the_given_shape(model):
    shape = OCR_SHAPES[model]
    result = run_cli("inspect", str(ocr(model)), "--shape", shape, "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    weights = sum(
        int(np.prod(a.t.dims))
        for n in onnx.load(str(ocr(model))).graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value" and a.t.data_type == onnx.TensorProto.FLOAT and len(a.t.dims) >= 1
    )
    assert facts["parameters"] > 0.9 * weights > 0, (facts["parameters"], weights)
    dims = [int(d) for d in shape.split("=")[1].split("x")]
    truth = _independent_macs(ocr(model), {"x": np.random.default_rng(0).random(dims, dtype=np.float32)})
    assert abs(facts["macs"] - truth) <= 0.01 * truth, (facts["macs"], truth)
    wider = dims[:3] + [dims[3] * 2]
    result = run_cli("inspect", str(ocr(model)), "--shape", "x=" + "x".join(map(str, wider)), "--json")
    assert json.loads(result.stdout)["macs"] > 1.8 * facts["macs"], "MACs must follow the shape used"


# ------------------------------------------------------------------- edgex quantize on the real files


def _quantize_real(tmp_path: Path, model: str, profile: str, samples: int):
    """`edgex quantize` of a real wheel file, calibrated on the example's own rendered text."""
    x, _ = getattr(_examples_module("ocr_data"), model)("calibration", samples)
    out = tmp_path / f"{model}-{profile}.onnx"
    result = run_cli(
        "quantize", str(ocr(model)), "--profile", profile, "--shape", OCR_SHAPES[model],
        "--calibration", str(_npz(tmp_path, "cal", x)), "--samples", str(samples), "--out", str(out),
    )  # fmt: skip
    return result, out


def test_quantize_mobile_cls_names_no_pydantic_error(tmp_path):
    """The mobile cls model: "ValidationError: 1 validation error for InputSpec" (exit 3, field unnamed)."""
    result, out = _quantize_real(tmp_path, "cls", "raspberry-pi-5-cpu", 16)
    assert result.returncode in (0, 1), result.stderr
    assert "ValidationError" not in result.stderr and out.is_file()


def test_quantize_failure_in_edgex_file_is_internal_and_whole(tmp_path):
    """ "Load model from <temp folder>/edgex-quant-…/int8-0.onnx failed … re-export the model", cut
    mid-word: edgex's own temporary file broke, and the user's model was blamed. The test hook
    truncates that file as a real failure would: exit 3 naming the step and the file, whole."""
    data = _examples_module("ocr_data")
    x, _ = data.cls("calibration", 8)
    result = run_cli(
        "quantize", str(ocr("cls")), "--profile", "raspberry-pi-5-cpu", "--shape", OCR_SHAPES["cls"],
        "--calibration", str(_npz(tmp_path, "cal", x)), "--samples", "8", "--out", str(tmp_path / "q.onnx"),
        env={"EDGEX_TEST_FAULT": "corrupt:int8-quantized"},
    )  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr
    line = _one_line_error(result.stderr)
    assert "internal error" in line and "quantize" in line and "int8" in line, line
    assert "re-export" not in line, line
    assert not re.search(r"\w…$|\w\.\.\.$", line.rstrip(")")), f"cut mid-word: {line}"


@pytest.mark.slow
def test_quantize_rec_for_qnn_does_not_fail_inside_the_quantizer(tmp_path):
    """rec on QNN: "internal error: Only an existing tensor can be modified, 'softmax_9.tmp_0_intermediate' is not"."""
    result, out = _quantize_real(tmp_path, "rec", "snapdragon-8-gen3-qnn", 8)
    assert result.returncode in (0, 1), result.stderr
    assert "existing tensor" not in result.stderr and out.is_file()


# ------------------------------------------------------------- Silero VAD: state and a scalar `sr`


def test_vad_example_describes_state_and_sample_rate():
    """ "Silero VAD cannot be described at all": [2, batch, 128] state carried across chunks, scalar sr."""
    result = run_cli("validate", str(EXAMPLES / "vad.yaml"))
    assert result.returncode == 0, result.stderr
    assert "re-export" not in result.stderr


def test_vad_data_is_speech_where_labelled():
    """The example's synthetic audio is heard as speech where it says so (FP32 model, state carried
    as silero-vad's own wrapper carries it): the calibration data exercise both decisions."""
    import onnxruntime as ort

    data = _examples_module("vad_data")
    x, labels = data.sequences("evaluation")
    session = ort.InferenceSession(str(vad()), providers=["CPUExecutionProvider"])
    probs = []
    for sequence in x:
        state = np.zeros((2, 1, 128), np.float32)
        for chunk in sequence:
            out, state = session.run(None, {"input": chunk[None], "state": state, "sr": np.array(16000, np.int64)})
            probs.append(float(out[0, 0]))
    decided = np.asarray(probs) > 0.5
    truth = labels.reshape(-1).astype(bool)
    assert 0.2 < truth.mean() < 0.8
    assert (decided == truth).mean() > 0.8, (decided == truth).mean()


# ------------------------------------------------------------------ builds of the examples, end to end


def _build(tmp_path: Path, example: str, profile: str, env: dict | None = None) -> tuple[int, dict, Path]:
    out = tmp_path / example
    result = run_cli("build", str(EXAMPLES / f"{example}.yaml"), "--profile", profile, "--out", str(out), env=env)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert "re-export" not in result.stderr
    return result.returncode, json.loads((out / "manifest.json").read_text()), out


def _speed_ratio(profile: dict, variant: str) -> float:
    """FP32 median / VARIANT median on the host (> 1: the variant is faster)."""
    by_name = {v["name"]: v for v in profile["variants"]}
    return by_name["baseline"]["latency_ms"]["p50"] / by_name[variant]["latency_ms"]["p50"]


@pytest.mark.slow
def test_ocr_cls_example_builds_for_the_board(tmp_path):
    """The smallest example end to end on the CPU profile: ingested (opset 11, Constant weights),
    dynamic INT8 made on the promoted weights (it died on "Expected conv2d_394.w_0 to be an
    initializer" before), a variant shipped, and no INT8 slower than FP32 shipped."""
    code, manifest, out = _build(tmp_path, "ocr-cls", "raspberry-pi-5-cpu")
    (profile,) = manifest["profiles"]
    names = {v["name"] for v in profile["variants"]}
    assert {"baseline", "int8"} <= names, names
    assert not any(f["name"] == "int8-dynamic" for f in profile.get("failed_variants", [])), profile
    shipped = profile["deliverable"]
    assert shipped in names and any((out / "raspberry-pi-5-cpu").glob(f"{shipped}.onnx"))
    if shipped != "baseline":
        assert _speed_ratio(profile, shipped) >= 1 / 1.1, "an INT8 slower than FP32 (beyond the 10% tie) shipped"
    assert profile["inputs"] == [{"dtype": "float32", "name": "x", "shape": [1, 3, 48, 192]}], profile["inputs"]
    runtime = json.loads((out / "raspberry-pi-5-cpu" / "runtime.json").read_text())
    assert runtime["input_shapes"] == {"x": [1, 3, 48, 192]}, runtime  # the app is told what was measured


@pytest.mark.slow
def test_one_failing_variant_does_not_stop_the_build(tmp_path):
    """Dynamic INT8 died mid-build on det and rec and "kept nothing, the finished QNN variants
    included". The same failure injected into that step now fails only that variant."""
    code, manifest, out = _build(
        tmp_path, "ocr-cls", "raspberry-pi-5-cpu", env={"EDGEX_TEST_FAULT": "quantize:int8-dynamic"}
    )
    (profile,) = manifest["profiles"]
    failed = {f["name"]: f for f in profile.get("failed_variants", [])}
    assert set(failed) == {"int8-dynamic"}, failed
    assert failed["int8-dynamic"]["failed"]["step"] == "quantize int8-dynamic"
    assert "re-export" not in failed["int8-dynamic"]["failed"]["error"]
    assert {"baseline", "int8"} <= {v["name"] for v in profile["variants"]}
    assert (out / "raspberry-pi-5-cpu" / f"{profile['deliverable']}.onnx").is_file()
    assert not list((out / "raspberry-pi-5-cpu").glob("int8-dynamic.*")), "a failed variant's files stay out"


@pytest.mark.slow
def test_vad_example_builds_and_tells_the_app_about_state(tmp_path):
    code, manifest, out = _build(tmp_path, "vad", "raspberry-pi-5-cpu")
    """Silero VAD built with its state carried and sr fixed: runtime.json tells the app both."""
    runtime = json.loads((out / "raspberry-pi-5-cpu" / "runtime.json").read_text())
    (state,) = runtime["state_inputs"]
    assert (state["input"], state["from_output"], state["shape"]) == ("state", "stateN", [2, 1, 128]), state
    assert runtime["constant_inputs"]["sr"]["value"] == 16000, runtime["constant_inputs"]
    assert manifest["profiles"][0]["deliverable"] in {v["name"] for v in manifest["profiles"][0]["variants"]}
    # Judged on frame F1 against the known speech: every per-tensor step of the static search missed
    # (F1 0.05-0.32 with the state carried; FP32 0.97), and quantizing only Conv/Gemm/MatMul met it.
    int8 = next(v for v in manifest["profiles"][0]["variants"] if v["name"] == "int8")
    search = int8["produced_by"]["search"]
    assert int8["metric"]["name"] == "voice-activity" and int8["metric"]["drop"] <= 0.01, int8["metric"]
    assert search["met"] and search["op_types"] == ["Conv", "Gemm", "MatMul"], search["steps"]
    assert [s["ok"] for s in search["steps"]][:-1] == [False] * (len(search["steps"]) - 1)
