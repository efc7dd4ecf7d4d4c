"""Dynamic INT8 (activations quantized per run, weights per channel) for CPU runtimes.

Not deployable on NPUs, which need fixed scales, but on onnxruntime CPU it is a legitimate preset:
measured on MiniLM here it keeps cosine 0.99 where static QDQ needs the accuracy search, and the
fused QAttention runs faster than the unfused static graph. Offered beside the static artifact;
the deliverable is still chosen by the budgets.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from exporter import log


def quantize_dynamic_int8(fp32_path: Path, out_path: Path) -> dict:
    with log.quiet_libraries():
        quantize_dynamic(
            str(fp32_path),
            str(out_path),
            per_channel=True,
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return {"format": "dynamic", "weight_type": "int8", "per_channel": True}
