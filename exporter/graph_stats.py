"""Static facts about an ONNX graph: op histogram, parameters, MACs, size.

MACs are counted for the ops that dominate edge models (Conv, ConvTranspose, Gemm, MatMul, their
quantized forms, and fused Attention) from inferred shapes: at the given input shapes, or with
dynamic dimensions counted as 1.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

_DTYPES = {v: k for k, v in onnx.TensorProto.DataType.items()}


def _shapes(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """Inferred shapes; with input_shapes the graph is fixed to them first and onnxruntime's
    symbolic inference (which knows the contrib ops of fused transformer graphs) is used."""
    inferred = model
    if input_shapes:
        try:
            from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            fixed = onnx.ModelProto()
            fixed.CopyFrom(model)
            graph_inputs = {i.name for i in fixed.graph.input}
            for name, shape in input_shapes.items():
                if name in graph_inputs:
                    make_input_shape_fixed(fixed.graph, name, list(shape))
            # On a graph it cannot finish, onnxruntime saves "sym_shape_infer_temp.onnx" and its
            # external data into the working folder: run it in a scratch folder, not the user's.
            with tempfile.TemporaryDirectory(prefix="edgex-shapes-") as scratch, contextlib.chdir(scratch):
                inferred = SymbolicShapeInference.infer_shapes(fixed, auto_merge=True)
        except Exception:
            inferred = model
    if inferred is model:
        try:
            inferred = shape_inference.infer_shapes(model)
        except Exception:
            inferred = model
    shapes: dict[str, list[int]] = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.output) + list(inferred.graph.value_info):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.dim_value > 0 else 1 for d in dims]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _weight_shape(node_input: str, shapes: dict[str, list[int]], producers: dict[str, onnx.NodeProto]) -> list[int]:
    """Follow a DequantizeLinear back to its quantized initializer in QDQ graphs."""
    if node_input in shapes:
        return shapes[node_input]
    prod = producers.get(node_input)
    if prod is not None and prod.op_type == "DequantizeLinear":
        return shapes.get(prod.input[0], [])
    return []


def macs_per_node(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> dict[str, int]:
    """MACs of each node that does multiply-accumulate work, keyed by node name (or op#index)."""
    shapes = _shapes(model, input_shapes)
    producers = {o: n for n in model.graph.node for o in n.output}
    found: dict[str, int] = {}
    for index, node in enumerate(model.graph.node):
        op = node.op_type
        out = shapes.get(node.output[0]) if node.output else None
        if not out:
            continue
        macs = 0
        if op in ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose"):
            w = _weight_shape(node.input[3 if op == "QLinearConv" else 1], shapes, producers)
            if len(w) >= 3:
                if op == "ConvTranspose":
                    macs = int(np.prod(shapes.get(node.input[0], [0]))) * int(np.prod(w[1:]))
                else:
                    macs = int(np.prod(out)) * int(np.prod(w[1:]))
        elif op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "QGemm"):
            a = shapes.get(node.input[0], [])
            if op == "Gemm" and next((at.i for at in node.attribute if at.name == "transA"), 0):
                k = a[0] if a else 0
            else:
                k = a[-1] if a else 0
            macs = int(np.prod(out)) * int(k)
        elif op == "Attention":  # com.microsoft fused attention: QKV projection + the two attention products
            x, w = shapes.get(node.input[0], []), _weight_shape(node.input[1], shapes, producers)
            if len(x) == 3 and len(w) == 2:
                batch, seq, _ = x
                inner = w[1] // 3
                macs = batch * seq * w[0] * w[1] + 2 * batch * seq * seq * inner
        if macs:
            found[node.name or f"{op}#{index}"] = macs
    return found


def count_macs(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> int:
    return sum(macs_per_node(model, input_shapes).values())


def inspect_model(path: Path, input_shapes: dict[str, list[int]] | None = None) -> dict:
    """input_shapes: the shapes MACs are counted at (dynamic dimensions otherwise count as 1)."""
    model = onnx.load(str(path))
    params = 0
    init_bytes = 0
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init) if init.data_location != onnx.TensorProto.EXTERNAL else None
        n = int(np.prod(init.dims)) if init.dims else 1
        params += n
        init_bytes += arr.nbytes if arr is not None else 0
    init_names = {i.name for i in model.graph.initializer}

    def io(values):
        out = []
        for v in values:
            if v.name in init_names:
                continue
            t = v.type.tensor_type
            dims = [d.dim_value if d.dim_value > 0 else (d.dim_param or "?") for d in t.shape.dim]
            out.append({"name": v.name, "dtype": _DTYPES.get(t.elem_type, str(t.elem_type)).lower(), "shape": dims})
        return out

    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": io(model.graph.input),
        "outputs": io(model.graph.output),
        "nodes": len(model.graph.node),
        "op_histogram": dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
        "parameters": params,
        "initializer_bytes": init_bytes,
        "macs": count_macs(model, input_shapes),
    }
