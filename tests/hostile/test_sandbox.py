"""Class 2, isolation: a model that allocates without bound, spins, or crashes onnxruntime is stopped
in the child; the parent answers with one line (exit 2) and lives on."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter.errors import UsageError
from exporter.sandbox_jobs import probe

from .conftest import assert_one_line_error, edgex


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def memory_hog(path: Path) -> Path:
    """ConstantOfShape to 40000x40000 floats (6.4 GB) at run time: no declared shape says so."""
    shape = numpy_helper.from_array(np.array([40000, 40000], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["big"]), helper.make_node("ReduceSum", ["big"], ["s"])],
        "hog",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 1])],
        [shape],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def spinner(path: Path) -> Path:
    """A Loop of 10^12 additions: loads fine, never finishes."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c_out"]), helper.make_node("Add", ["v", "one"], ["v_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1]),
        ],
        [numpy_helper.from_array(np.ones(1, np.float32), "one")],
    )
    inits = [numpy_helper.from_array(np.array(10**12, np.int64), "n"), numpy_helper.from_array(np.array(True), "t")]
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "t", "x"], ["y"], body=body)],
        "spin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_memory_limit_is_a_clear_error(tmp_path):
    model = memory_hog(tmp_path / "hog.onnx")
    start = time.monotonic()
    proc = edgex("bench", str(model), "--profile", "raspberry-pi-5-cpu", env={"EDGEX_SANDBOX_MEMORY_MB": "1024"})
    assert_one_line_error(proc, 2, "hog.onnx", "memory")
    assert time.monotonic() - start < 60


def test_time_limit_is_a_clear_error_and_nothing_hangs(tmp_path):
    model = spinner(tmp_path / "spin.onnx")
    start = time.monotonic()
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.ones(4, np.float32))
    out = tmp_path / "q.onnx"
    args = ["quantize", str(model), "--profile", "raspberry-pi-5-cpu", "--calibration", str(calib), "--out", str(out)]
    proc = edgex(*args, env={"EDGEX_SANDBOX_SECONDS": "3"})
    assert_one_line_error(proc, 2, "spin.onnx", "time limit")
    assert not out.exists() and not list(tmp_path.glob(".edgex-quantize-*"))
    assert time.monotonic() - start < 120  # the spinner never ends: only the limit stops it (slack for a busy host)


def _children() -> list[int]:
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == me:
                found.append(int(entry))
    return found


def test_a_crashing_child_is_an_error_not_a_dead_parent(tmp_path, monkeypatch):
    """A real SIGSEGV of the real sandbox child (sent while it runs the spinner) becomes exit-2 UsageError."""
    model = spinner(tmp_path / "spin.onnx")
    monkeypatch.setenv("EDGEX_SANDBOX_SECONDS", "60")
    before = set(_children())

    def crash() -> None:
        for _ in range(200):
            time.sleep(0.1)
            new = [p for p in _children() if p not in before]
            if new:
                time.sleep(1.5)  # let it import onnxruntime and enter the Loop
                os.kill(new[0], signal.SIGSEGV)
                return

    killer = threading.Thread(target=crash)
    killer.start()
    with pytest.raises(UsageError) as err:
        probe(model)
    killer.join()
    assert err.value.exit_code == 2
    assert "crashed" in str(err.value) and "SIGSEGV" in str(err.value)


def test_a_good_model_probes_clean(tmp_path):
    from test_bad_inputs import tiny_onnx_bytes

    path = tmp_path / "ok.onnx"
    path.write_bytes(tiny_onnx_bytes())
    assert probe(path) == {"inputs": {"x": [1, 16]}, "outputs": [[1, 16]], "finite": True}
