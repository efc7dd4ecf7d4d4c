"""State and scalar inputs (issue 18, item 4): a state carried from the previous chunk's output,
constants such as a sample rate, sequences of chunks in calibration and evaluation, and the
recipe shapes every step uses.

The tiny model: state_out = 0.5 * state + x (state [2, batch, 4], batch on axis 1 as in Silero
VAD), y = scale * sum(state_out, axis 0), scale a rank-0 constant. Its outputs depend on every
earlier chunk, so a runner that does not carry the state gives different numbers.
"""

from __future__ import annotations

import importlib.resources
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from conftest import FAST_BENCH, run_cli
from onnx import TensorProto, helper

from exporter.data import make_dataset
from exporter.errors import UsageError
from exporter.feeding import feeding_of
from exporter.recipe import InputSpec, load_recipe
from exporter.runtime import make_session, run_all, run_sequences

SCALE = 3.0
SEQ, CHUNKS, WIDTH = 3, 5, 4


def stateful_model(path: Path, decay: float = 0.5) -> Path:
    nodes = [
        helper.make_node("Mul", ["state", "decay"], ["kept"]),
        helper.make_node("Add", ["kept", "x"], ["stateN"]),
        helper.make_node("ReduceSum", ["stateN", "axes"], ["summed"], keepdims=0),
        helper.make_node("Mul", ["summed", "scale"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "stateful",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", WIDTH]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", WIDTH]),
        ],
        [
            helper.make_tensor("decay", TensorProto.FLOAT, [], [decay]),
            helper.make_tensor("axes", TensorProto.INT64, [1], [0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def specs(batch: int = 1, initial: float = 0.0) -> list[InputSpec]:
    return [
        InputSpec(name="x", shape=[batch, WIDTH]),
        InputSpec(
            name="state", shape=[2, batch, WIDTH], state={"output": "stateN", "initial": initial, "batch_axis": 1}
        ),
        InputSpec(name="scale", shape=[], value=SCALE),
    ]


def hand_loop(x: np.ndarray, initial: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """x [sequences, chunks, WIDTH] -> y and the state fed at each chunk, by the formula."""
    ys, fed = np.zeros_like(x), np.zeros((*x.shape[:2], 2, WIDTH), np.float32)
    for s in range(x.shape[0]):
        state = np.full((2, WIDTH), initial, np.float32)
        for t in range(x.shape[1]):
            fed[s, t] = state
            state = 0.5 * state + x[s, t]
            ys[s, t] = SCALE * state.sum(0)
    return ys, fed


@pytest.fixture(scope="module")
def chunks() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((SEQ, CHUNKS, WIDTH)).astype(np.float32)


@pytest.mark.parametrize("batch", [1, 2])
def test_sequence_runner_carries_the_state_like_the_hand_loop(tmp_path, chunks, batch):
    feeding = feeding_of(specs(batch), steps=CHUNKS)
    session = make_session(stateful_model(tmp_path / "m.onnx"))
    outs, fed = run_sequences(session, {"x": chunks.reshape(-1, WIDTH)}, feeding)
    want_y, want_fed = hand_loop(chunks)
    np.testing.assert_allclose(outs[0], want_y.reshape(-1, WIDTH), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fed["state"], want_fed.reshape(-1, 2, WIDTH), rtol=1e-5, atol=1e-5)
    assert outs[1].shape == (SEQ * CHUNKS, 2, WIDTH)  # the state output, samples first
    # The same samples with a zero state at every chunk (no carrying) give other outputs.
    zero = run_all(session, {"x": chunks.reshape(-1, WIDTH), "state": np.zeros_like(fed["state"])}, feeding=feeding)
    assert not np.allclose(zero[0], outs[0], atol=1e-3)
    # Fed the carried states as samples, the flat runner reproduces the carried outputs.
    forced = run_all(session, {"x": chunks.reshape(-1, WIDTH), "state": fed["state"]}, feeding=feeding)
    np.testing.assert_allclose(forced[0], outs[0], rtol=1e-5, atol=1e-5)


def test_initial_value_is_used(tmp_path, chunks):
    feeding = feeding_of(specs(initial=1.5), steps=CHUNKS)
    outs, _ = run_sequences(
        make_session(stateful_model(tmp_path / "m.onnx")), {"x": chunks.reshape(-1, WIDTH)}, feeding
    )
    np.testing.assert_allclose(outs[0], hand_loop(chunks, 1.5)[0].reshape(-1, WIDTH), rtol=1e-5, atol=1e-5)


def test_feeds_put_the_batch_back_on_the_state_axis(chunks):
    feeding = feeding_of(specs(batch=2), steps=1)
    states = np.arange(SEQ * CHUNKS * 2 * WIDTH, dtype=np.float32).reshape(-1, 2, WIDTH)
    data = make_dataset({"x": chunks.reshape(-1, WIDTH), "state": states}, None)
    from dataclasses import replace

    feeds = replace(data, feeding=feeding).feeds(2, 3)
    assert len(feeds) == 3 and feeds[0]["state"].shape == (2, 2, WIDTH) and feeds[0]["scale"].shape == ()
    np.testing.assert_array_equal(feeds[1]["state"][:, 0], states[2])
    assert float(feeds[0]["scale"]) == SCALE


# --- the recipe ---------------------------------------------------------------------------------------


def write_project(folder: Path, chunks: np.ndarray, **overrides) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stateful_model(folder / "model.onnx")
    rng = np.random.default_rng(1)
    np.savez(folder / "calib.npz", x=rng.standard_normal((4, CHUNKS, WIDTH)).astype(np.float32))
    np.savez(folder / "eval.npz", x=chunks)
    recipe = {
        "version": 1,
        "name": "stateful",
        "model": {"source": "onnx", "path": "model.onnx"},
        "inputs": [
            {"name": "x", "shape": [1, WIDTH]},
            {"name": "state", "shape": [2, 1, WIDTH], "state": {"output": "stateN", "initial": 0.0}},
            {"name": "scale", "shape": [], "dtype": "float32", "value": SCALE},
        ],
        "data": {"calibration": {"npz": "calib.npz"}, "evaluation": {"npz": "eval.npz"}},
        "metric": "cosine",
        "quantize": {"calibration_samples": 16, "dynamic": False, "search": {"enabled": False}},
        "bench": FAST_BENCH,
        "profiles": ["raspberry-pi-5-cpu"],
        "output": "out",
    }
    recipe.update(overrides)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_recipe_accepts_state_constant_and_scalar(tmp_path, chunks):
    r = load_recipe(write_project(tmp_path, chunks)).recipe
    assert [s.kind for s in r.inputs] == ["data", "state", "constant"]
    assert r.inputs[2].shape == [] and r.inputs[1].state.output == "stateN"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"outputs": ["y", "stateN"], "state_output": "hidden"}, "inputs[1].state.output"),
        ({"batch_axis": 0}, "inputs[1].state.batch_axis"),
        ({"scalar_data": True}, "inputs.2"),
    ],
)
def test_recipe_refuses_bad_state_and_scalars(tmp_path, chunks, change, field):
    path = write_project(tmp_path, chunks)
    raw = yaml.safe_load(path.read_text())
    if "outputs" in change:
        raw["outputs"] = change["outputs"]
    if "state_output" in change:
        raw["inputs"][1]["state"]["output"] = change["state_output"]
    if "batch_axis" in change:
        raw["inputs"][1]["state"]["batch_axis"] = change["batch_axis"]
    if "scalar_data" in change:
        del raw["inputs"][2]["value"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UsageError) as err:
        load_recipe(path)
    assert err.value.exit_code == 2 and field in str(err.value) and "\n" not in str(err.value)


def test_validate_refuses_a_state_naming_a_missing_output(tmp_path, chunks):
    """Without `outputs:` in the recipe, the model's own outputs are the reference: exit 2, one line."""
    path = write_project(tmp_path, chunks)
    raw = yaml.safe_load(path.read_text())
    raw["inputs"][1]["state"]["output"] = "state_out"
    path.write_text(yaml.safe_dump(raw))
    proc = run_cli("validate", str(path))
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "inputs[1].state.output" in last and "'state_out' is not an output" in last and "stateN" in last


def test_validate_names_the_axis_of_a_wrong_recipe_shape(tmp_path, chunks):
    path = write_project(tmp_path, chunks)
    raw = yaml.safe_load(path.read_text())
    raw["inputs"][1]["shape"] = [1, WIDTH]  # rank 2; the model's state is [2, batch, 4]
    raw["inputs"][1]["state"]["batch_axis"] = 0
    path.write_text(yaml.safe_dump(raw))
    proc = run_cli("validate", str(path))
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "inputs" in last and "'state'" in last and "[2, batch, 4]" in last, last


def test_prepare_carries_state_for_reference_and_calibration(tmp_path, chunks):
    from exporter.pipeline.context import evaluator, prepare, query_feed

    ctx = prepare(write_project(tmp_path, chunks))
    assert ctx.evaluation.feeding.steps == CHUNKS and len(ctx.evaluation) == SEQ * CHUNKS
    np.testing.assert_allclose(ctx.reference[0], hand_loop(chunks)[0].reshape(-1, WIDTH), rtol=1e-5, atol=1e-5)
    calib_states = ctx.calibration.inputs["state"]
    assert calib_states.shape == (4 * CHUNKS, 2, WIDTH)
    assert np.abs(calib_states).mean() > 0.1  # the FP32-carried states, not zeros
    assert not np.abs(calib_states[::CHUNKS]).any()  # each sequence starts from `initial`
    feed = query_feed(ctx)  # the timed query: a carried chunk with its state and the constant
    assert feed["state"].shape == (2, 1, WIDTH) and np.abs(feed["state"]).any() and feed["scale"].shape == ()
    # A variant is evaluated with its own state carried: a model that keeps less of it drifts.
    drop = evaluator(ctx, "deployed", 1)
    assert drop(tmp_path / "model.onnx") == pytest.approx(0.0, abs=1e-6)
    assert drop(stateful_model(tmp_path / "leaky.onnx", decay=0.2)) > 0.001


def test_data_must_be_sequences_of_chunks(tmp_path, chunks):
    from exporter.pipeline.context import prepare

    path = write_project(tmp_path, chunks)
    np.savez(tmp_path / "eval.npz", x=chunks[..., None])  # one axis too many
    with pytest.raises(UsageError) as err:
        prepare(path, with_reference=False)
    assert "data.evaluation" in str(err.value) and "[sequences, chunks, 4]" in str(err.value)
    np.savez(tmp_path / "eval.npz", x=chunks[0])  # [chunks, 4]: one sequence
    ctx = prepare(path)
    assert ctx.evaluation.feeding.steps == CHUNKS and len(ctx.reference[0]) == CHUNKS


def test_runtime_json_and_reference_bundle_tell_the_app(tmp_path, chunks):
    from exporter.package import fed_by_app, reference_bundle

    feeding = feeding_of(specs(), steps=CHUNKS)
    described = fed_by_app(feeding)
    assert described["constant_inputs"] == {"scale": {"value": SCALE, "shape": [], "dtype": "float32"}}
    (state,) = described["state_inputs"]
    assert (state["input"], state["from_output"], state["initial"], state["batch_axis"]) == ("state", "stateN", 0.0, 1)
    assert fed_by_app(None) == {"state_inputs": [], "constant_inputs": {}}
    model = stateful_model(tmp_path / "model.onnx")
    session = make_session(model)
    _, fed = run_sequences(session, {"x": chunks.reshape(-1, WIDTH)}, feeding)
    check = reference_bundle(tmp_path, model, {"x": chunks.reshape(-1, WIDTH), "state": fed["state"]}, 1, feeding)
    assert check["layout"] == "feeds"
    runtime = {
        "model": "model.onnx",
        "execution_provider": "CPUExecutionProvider",
        "inputs": [{"name": i.name} for i in session.get_inputs()],
        "outputs": [{"name": o.name} for o in session.get_outputs()],
        "reference_check": check,
    }
    (tmp_path / "runtime.json").write_text(json.dumps(runtime))
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "reference" / "check_reference.py")], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.startswith("PASS"), proc.stdout + proc.stderr


def test_build_of_a_stateful_model(tmp_path, chunks):
    """The whole build: calibration, evaluation with carried state, timing, runtime.json."""
    path = write_project(tmp_path, chunks)
    proc = run_cli("-q", "build", str(path), "--json")
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    runtime = json.loads((tmp_path / "out" / "raspberry-pi-5-cpu" / "runtime.json").read_text())
    assert runtime["state_inputs"][0]["from_output"] == "stateN"
    assert runtime["constant_inputs"]["scale"]["value"] == SCALE


# --- Silero VAD, the real file ------------------------------------------------------------------------


def silero_path() -> Path:
    return Path(str(importlib.resources.files("silero_vad") / "data" / "silero_vad.onnx"))


def test_silero_vad_sequence_matches_a_direct_onnxruntime_loop():
    pytest.importorskip("silero_vad")
    vad = [
        InputSpec(name="input", shape=[1, 512]),
        InputSpec(name="state", shape=[2, 1, 128], state={"output": "stateN"}),
        InputSpec(name="sr", shape=[], dtype="int64", value=16000),
    ]
    feeding = feeding_of(vad, steps=10)
    assert feeding.states[0].batch_axis == 1
    t = np.arange(10 * 512) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) * (t > 0.15)).astype(np.float32)
    audio += np.random.default_rng(0).normal(0, 0.01, audio.shape).astype(np.float32)
    chunk_rows = audio.reshape(10, 512)
    outs, _ = run_sequences(make_session(silero_path()), {"input": chunk_rows}, feeding)

    session = ort.InferenceSession(str(silero_path()), providers=["CPUExecutionProvider"])
    state, direct = np.zeros((2, 1, 128), np.float32), []
    for row in chunk_rows:
        prob, state = session.run(None, {"input": row[None], "state": state, "sr": np.array(16000, np.int64)})
        direct.append(prob[0])
    np.testing.assert_allclose(outs[0], np.asarray(direct), rtol=1e-5, atol=1e-6)
    # Carrying matters for this model too: the zero-state probabilities differ.
    zero = run_all(
        make_session(silero_path()), {"input": chunk_rows, "state": np.zeros((10, 2, 128), np.float32)}, feeding=feeding
    )
    assert np.abs(zero[0] - outs[0]).max() > 0.05 * np.abs(outs[0]).max()
