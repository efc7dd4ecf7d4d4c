"""A decoder for the Qualcomm NPU the way Qualcomm deploys one: a prompt graph that takes N tokens
(AR-N) and a token graph that takes one (AR-1), both over a fixed context of C positions (the past
is C - N keys/values), W8A16 QDQ (8-bit weights, 16-bit activations), loaded on the emulated HTP
with CPU fallback disabled, judged against the FP32 export's logits (the token graph run on the
emulator, the prompt graph as QDQ on the CPU provider) and compiled to context binaries.

Two traps met on SmolLM2 and mended here, both recorded:
- the exported attention mask fills masked positions with -inf (Where(mask, 0, -inf)); calibrated
  into a uint16 range, -inf leaves every other value on one step: logits cosine 0.18 vs FP32. The
  fill becomes -MASK_FILL (softmax weight e^-100: nothing), and cosine is 0.996. Only negative
  fills are changed (a +inf Clip bound is not a mask), each named in the record.
- calibration needs real keys/values: the past is produced by the FP32 export on real text.
HTP v68 (SA8295P) has no 4-bit weight path, so weights stay 8-bit; the two graphs are compiled to
two context binaries (onnxruntime's weight sharing across graphs is not used): both are said.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from exporter import log
from exporter.errors import EdgexError, UsageError
from exporter.llm import decode

# onnxruntime's refusals derive from Exception directly, not RuntimeError
_ORT_REFUSALS = (ort_state.EPFail, ort_state.Fail, ort_state.InvalidGraph, ort_state.NotImplemented)
MASK_FILL = 100.0
CALIBRATION_WINDOWS = 4  # of the prompt graph; the token graph takes 4x as many (one position each)
HELD_OUT_WINDOWS = {False: 1, True: 8}  # prompt graph: 1 window (N positions); token graph: 8 positions


def fixed_graph(src: Path, dst: Path, tokens: int, context: int) -> dict:
    """The export with every dimension fixed (batch 1, N tokens, C - N past) and folded by
    onnxruntime, non-finite constants replaced by +-MASK_FILL."""
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

    model = onnx.load(str(src))
    past = context - tokens
    for name, value in (
        ("batch_size", 1),
        ("sequence_length", tokens),
        ("past_sequence_length", past),
        ("past_sequence_length + sequence_length", context),
    ):
        make_dim_param_fixed(model.graph, name, value)
    fix_output_shapes(model)
    raw = dst.with_suffix(".unfolded.onnx")
    onnx.save(model, str(raw))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # folds the shape logic
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    ort.InferenceSession(str(raw), options, providers=["CPUExecutionProvider"])
    raw.unlink()
    folded = onnx.load(str(dst))  # after folding: the -inf fill is a Constant node until then
    replaced = []
    for init in folded.graph.initializer:  # only negative fills: a +inf bound (Clip, Min) is not a mask
        values = numpy_helper.to_array(init)
        if values.dtype == np.float32 and values.size and np.any(values < -1e30):
            fill = np.where(values < -1e30, -MASK_FILL, values).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(fill, init.name))
            replaced.append(init.name)
    onnx.save(folded, str(dst))
    return {"tokens": tokens, "context": context, "mask_fills_made_finite": replaced}


def window_feeds(
    dynamic: ort.InferenceSession,
    sequences: list[list[int]],
    tokens: int,
    context: int,
    count: int,
    padded: bool = False,
) -> list[tuple[dict, np.ndarray]]:
    """`count` feeds of the fixed graph from real text, windows `context // 4` apart, each with the
    dynamic FP32 export's logits for the same tokens (the reference: not the fixed graph, which
    carries the mask edit). The past is the FP32 export's own keys/values. `padded`: the last
    window's first position is masked out (a left-padded prompt), so the padding-mask branch is
    calibrated too: never exercised, its range is [0, 0] and its scale 0, which the HTP refuses
    (QNN error 6007 on the mask's QuantizeLinear)."""
    stream = [t for seq in sequences for t in seq]
    past, stride = context - tokens, max(context // 4, 1)
    feeds = []
    for k in range(count):
        ids = stream[k * stride : k * stride + context]
        if len(ids) < context:
            raise UsageError(
                f"the bundled text gives {k} windows of {context} tokens, {count} are needed",
                field="qnn_context",
                fix="use a shorter QNN context",
            )
        _, past_kv = decode.run_step(dynamic, np.array([ids[:past]], np.int64), decode.empty_past(dynamic), 0)
        reference, _ = decode.run_step(dynamic, np.array([ids[past:]], np.int64), past_kv, past)
        feed = {
            "input_ids": np.array([ids[past:]], np.int64),
            "attention_mask": np.ones((1, context), np.int64),
            "position_ids": np.arange(past, context, dtype=np.int64)[None],
            **past_kv,
        }
        feeds.append((feed, reference))
    if padded:
        feeds[-1][0]["attention_mask"][0, 0] = 0
    return feeds


def quantize_w8a16(src: Path, dst: Path, feeds: list[dict]) -> None:
    """onnxruntime's own QNN settings: uint16 activations, uint8 weights, the conversions mixed
    precision needs (as edgex's encoder QNN path does)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    config = get_qnn_qdq_config(str(src), Reader(), activation_type=QuantType.QUInt16, weight_type=QuantType.QUInt8)
    with log.quiet_libraries():
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=config.op_types_to_quantize,
            activation_type=QuantType.QUInt16,
            weight_type=QuantType.QUInt8,
            calibrate_method=config.calibrate_method,
            extra_options=config.extra_options,
        )


def on_htp(qdq: Path, held_out: list[tuple[dict, np.ndarray]], soc: dict, context_path: Path, emulate: bool) -> dict:
    """Node assignment, a session with CPU fallback disabled, the context binary, and the logits on
    held-out windows against the dynamic FP32 export's: run on the emulated HTP (`emulate`; the
    token graph), else the QDQ file on the CPU provider (the prompt graph: emulating 128 tokens of
    a 135M model takes minutes), said in `logits_from`. The provider's refusal is recorded, not
    raised: which operator blocks the graph is the finding."""
    from exporter import qnn_htp

    out: dict = {"assignment": None}
    try:
        assignment = qnn_htp.node_assignment(qdq, soc_model=soc["soc_model"], htp_arch=soc["htp_arch"])
        out["assignment"] = {k: assignment[k] for k in ("nodes", "supported_nodes", "partitions", "unsupported_ops")}
        session = qnn_htp.htp_session(qdq, soc_model=soc["soc_model"], htp_arch=soc["htp_arch"], cpu_fallback=False)
    except (EdgexError, *_ORT_REFUSALS) as exc:  # EPFail: QNN could not compose the graph
        return out | {"loads_without_cpu_fallback": False, "refusal": str(exc).splitlines()[0][:400]}
    out["loads_without_cpu_fallback"] = True
    if not emulate:
        session = decode.open_session(qdq)
    start = time.perf_counter()
    got = np.concatenate([session.run(["logits"], feed)[0].reshape(-1, ref.shape[-1]) for feed, ref in held_out])
    out["logits_from"] = "emulated HTP" if emulate else "QDQ on the CPU provider (simulated)"
    out["run_s"] = round(time.perf_counter() - start, 1)
    reference = np.concatenate([ref.reshape(-1, ref.shape[-1]) for _, ref in held_out])
    cosine = (got * reference).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(reference, axis=-1))
    out["positions_compared"] = len(reference)
    out["logits_cosine_vs_fp32"] = round(float(cosine.mean()), 4)
    out["top1_agreement_vs_fp32"] = round(float((got.argmax(-1) == reference.argmax(-1)).mean()), 4)
    try:
        binary = qnn_htp.compile_context(qdq, context_path, soc_model=soc["soc_model"], htp_arch=soc["htp_arch"])
    except EdgexError as exc:  # the compiler (unoptimized graph) can refuse what the session took
        return out | {"loads_without_cpu_fallback": False, "refusal": "context binary: " + str(exc)[:400]}
    out["context_binary"] = {"file": context_path.name, "bytes": binary["bytes"], "seconds": binary["seconds"]}
    return out


def qnn_pair(
    fp32_optimum: Path, out_dir: Path, work: Path, soc: dict, sequences: dict, prompt_tokens: int, context: int
) -> dict:
    """AR-N and AR-1 from the optimum export: fixed, calibrated on `sequences["calibration"]`,
    judged on a window of `sequences["evaluation"]`, written to out_dir (QDQ files, context binaries)."""
    dynamic = decode.open_session(fp32_optimum)
    record: dict = {"soc": soc, "context": context, "weights": "uint8", "activations": "uint16", "graphs": {}}
    for tokens in (prompt_tokens, 1):
        name = f"ar{tokens}"
        log.info(f"QNN {name.upper()} (context {context}): fixing, calibrating, loading on the emulated HTP")
        fixed = work / f"{name}.fp32.onnx"
        facts = fixed_graph(fp32_optimum, fixed, tokens, context)
        # the token graph sees one position per window: more windows, so ranges and the check rest
        # on more than a handful of tokens
        windows = CALIBRATION_WINDOWS * (4 if tokens == 1 else 1)
        calibration = window_feeds(dynamic, sequences["calibration"], tokens, context, windows, padded=True)
        held_out = window_feeds(dynamic, sequences["evaluation"], tokens, context, HELD_OUT_WINDOWS[tokens == 1])
        qdq = out_dir / f"{name}.qdq.onnx"
        quantize_w8a16(fixed, qdq, [feed for feed, _ in calibration])
        facts["calibration_windows"] = len(calibration)
        facts |= on_htp(qdq, held_out, soc, out_dir / f"{name}_ctx.onnx", emulate=tokens == 1)
        record["graphs"][name] = facts
    return record
