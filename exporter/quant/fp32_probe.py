"""FP32 probes of a graph being rewritten before quantization: a session that shows intermediate
values, and the parity check every rewrite must pass (a rewrite that changes the model's answers
is an error, never a silent change)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper


def probe_session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # MatMulAddFusion of onnxruntime 1.32 fails ("Attempt to replace the existing tensor") on a
    # pre-processed encoder whose layers lost different numbers of heads (Fisher-pruned MiniLM);
    # these probes compare FP32 values, which no fusion changes
    return ort.InferenceSession(
        model.SerializeToString(), so, providers=["CPUExecutionProvider"], disabled_optimizers=["MatMulAddFusion"]
    )


def fp32_parity(a: onnx.ModelProto, b: onnx.ModelProto, feeds: list[dict]) -> float:
    """Largest relative difference of any output: max |a - b| / max |a| per output, over the feeds."""
    sa, sb = probe_session(a), probe_session(b)
    worst = 0.0
    for feed in feeds:
        for x, y in zip(sa.run(None, feed), sb.run(None, feed)):
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            worst = max(worst, float(np.max(np.abs(x - y)) / max(float(np.max(np.abs(x))), 1e-12)))
    return worst


def probe_values(model: onnx.ModelProto, names: list[str], feeds: list[dict]) -> Iterator[dict[str, np.ndarray]]:
    """The FP32 values of tensors NAMES (exposed as extra outputs), one feed at a time (a list of
    every feed's intermediates would hold gigabytes for a large encoder)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names if n not in known
    )
    sess = probe_session(probe)
    for feed in feeds:
        yield dict(zip(names, sess.run(names, feed), strict=True))
