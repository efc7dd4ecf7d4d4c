"""Calibration limits and checks that onnxruntime.quantization does not make itself.

Its calibrators keep every intermediate activation of every calibration sample in memory until
the end (histogram methods always; MinMax unless told to flush). On a transformer that is
hundreds of megabytes per sample, so the histogram methods are sub-sampled to fit the recipe's
`calibration_memory_mb` and the report says so; MinMax streams in chunks instead.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from exporter.data import Dataset
from exporter.errors import UsageError
from exporter.recipe import InputSpec
from exporter.runtime import make_session

HISTOGRAM_METHODS = {"entropy", "percentile", "distribution"}


def batches(inputs: dict[str, np.ndarray], batch: int, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """Whole queries in the model's own batch size (a ragged tail is dropped), at most `limit`."""
    n = len(next(iter(inputs.values())))
    starts = range(0, n - batch + 1, batch)
    return [{k: v[i : i + batch] for k, v in inputs.items()} for i in list(starts)[:limit]]


class FeedReader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds, self._it = feeds, iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def activation_bytes(model_path: Path, feed: dict[str, np.ndarray]) -> int:
    """Bytes of every float activation for one query: what a calibrator holds per sample."""
    model = onnx.load(str(model_path))
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - an uninferable graph only means a smaller estimate
        inferred = model
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    have = {o.name for o in model.graph.output}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    for node in model.graph.node:
        for out in node.output:
            if out and out not in have and types.get(out) in floats:
                model.graph.output.append(helper.make_tensor_value_info(out, types[out], None))
                have.add(out)
    with tempfile.TemporaryDirectory(prefix="edgex-calib-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(model, str(path))
        outs = make_session(path, 1, "simulated").run(None, feed)
    return int(sum(o.nbytes for o in outs if isinstance(o, np.ndarray) and np.issubdtype(o.dtype, np.floating)))


def bounded_samples(
    model_path: Path, data: Dataset, method: str, memory_mb: int, batch: int, seed: int
) -> tuple[Dataset, str | None]:
    """The calibration samples `method` can hold within `memory_mb`, and a note when that is fewer."""
    if method not in HISTOGRAM_METHODS:
        return data, None
    feed = data.feed(0, batch)
    per_batch = activation_bytes(model_path, feed)
    fits = int(memory_mb * 2**20 // max(per_batch, 1)) * batch
    if fits < batch:
        raise UsageError(
            f"{method} calibration needs {per_batch / 2**20:.0f} MB per sample, over the {memory_mb} MB limit",
            path="recipe",
            field="quantize.calibration_memory_mb",
            fix=f"raise calibration_memory_mb above {int(per_batch / 2**20) + 1} or use calibration_method: minmax",
        )
    if fits >= len(data):
        return data, None
    note = (
        f"{method} calibration used {fits} of {len(data)} samples: onnxruntime's histogram calibrator holds every "
        f"activation ({per_batch / 2**20:.1f} MB per sample) and quantize.calibration_memory_mb is {memory_mb}"
    )
    return data.take(fits, seed), note


def specs_from_model(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> list[InputSpec]:
    """Input specs of an ONNX file given on the command line, at the shapes resolved for it
    (`exporter.shapes.resolve_shapes`: the file's fixed sizes, `--shape` for its dynamic ones).

    The first size is the batch each query holds; calibration arrays are [samples, *the rest]."""
    from exporter.shapes import declared_inputs

    specs = []
    for inp in declared_inputs(model):
        shape = shapes[inp.name]
        if not shape:
            raise UsageError(
                f"input '{inp.name}' is a scalar; `edgex quantize` takes tensor inputs with a batch axis only",
                field="model",
                fix="quantize the model in a build whose recipe declares the scalar",
            )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.elem_type).name
        specs.append(InputSpec(name=inp.name, shape=list(shape), dtype=dtype))
    return specs
