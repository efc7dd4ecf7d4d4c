"""Static facts about an ONNX graph: op histogram, parameters, MACs, size.

MACs are counted for the ops that dominate edge models (Conv, ConvTranspose, Gemm, MatMul, their
quantized forms, and fused Attention) from shapes inferred at the input shapes given (the file is
copied with its inputs fixed to them, then onnxruntime's symbolic inference runs, onnx's as the
fallback): a model declaring dynamic sizes gets real figures (PP-OCRv4 det: 3.0 M MACs with every
dynamic size taken as 1, 2.3 G at 1x3x640x640). A node whose sizes stay unknown even then is not
guessed: it is listed as uncounted, and so are nodes with subgraphs (If/Loop/Scan: which branch runs
is decided at run time). Parameters include weights held in Constant nodes (PaddlePaddle exports
keep every weight there) and in subgraphs, not only the main graph's initializers.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from exporter.shapes import fixed_copy

_DTYPES = {v: k for k, v in onnx.TensorProto.DataType.items()}
_MAC_OPS = {
    "Conv",
    "ConvInteger",
    "QLinearConv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "MatMulInteger",
    "QLinearMatMul",
    "QGemm",
    "Attention",
}
Shape = list[int | None]  # None: a size inference could not establish


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's symbolic inference (it knows the contrib ops of fused transformer graphs and
    propagates sizes through Shape/Resize chains), else onnx's with data propagation."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        # On a graph it cannot finish, onnxruntime saves "sym_shape_infer_temp.onnx" and its
        # external data into the working folder: run it in a scratch folder, not the user's.
        with tempfile.TemporaryDirectory(prefix="edgex-shapes-") as scratch, contextlib.chdir(scratch):
            return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:
        pass
    try:
        return shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        return model


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
    return None


def _constant_elements(node: onnx.NodeProto) -> int:
    """Elements a Constant node holds, whichever attribute carries them."""
    for attr in node.attribute:
        if attr.name == "value":
            return int(np.prod(attr.t.dims)) if attr.t.dims else 1
        if attr.name == "sparse_value":
            return int(np.prod(attr.sparse_value.dims)) if attr.sparse_value.dims else 1
        if attr.name in ("value_floats", "value_ints", "value_strings"):
            return len(attr.floats) + len(attr.ints) + len(attr.strings)
        if attr.name in ("value_float", "value_int", "value_string"):
            return 1
    return 0


def _shapes(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> dict[str, Shape]:
    """Inferred shapes of every tensor. With input_shapes the inputs are fixed to them first and a
    size inference cannot establish is None. Without them the file's own shapes are used and a
    dynamic size counts as 1: only for files edgex built at a batch of 1 (build-path callers)."""
    unknown_as = None if input_shapes else 1
    inferred = _infer(fixed_copy(model, input_shapes)) if input_shapes else _infer_plain(model)
    shapes: dict[str, Shape] = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.output) + list(inferred.graph.value_info):
        if not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.dim_value > 0 else unknown_as for d in dims]
    for node in inferred.graph.node:
        t = _constant_tensor(node) if node.op_type == "Constant" else None
        if t is not None and node.output:
            shapes[node.output[0]] = list(t.dims)
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _infer_plain(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model)
    except Exception:
        return model


def _known(shape: Shape | None) -> bool:
    return bool(shape) and all(d is not None for d in shape)


def _weight_shape(node_input: str, shapes: dict[str, Shape], producers: dict[str, onnx.NodeProto]) -> Shape:
    """Follow a DequantizeLinear back to its quantized weight in QDQ graphs."""
    if node_input in shapes:
        return shapes[node_input]
    prod = producers.get(node_input)
    if prod is not None and prod.op_type == "DequantizeLinear":
        return shapes.get(prod.input[0], [])
    return []


def _node_macs(node: onnx.NodeProto, shapes: dict[str, Shape], producers: dict[str, onnx.NodeProto]) -> int | None:
    """MACs of one node; None when a size it needs is unknown."""
    op = node.op_type
    out = shapes.get(node.output[0]) if node.output else None
    if not _known(out):
        return None
    if op in ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose"):
        w = _weight_shape(node.input[3 if op == "QLinearConv" else 1], shapes, producers)
        if len(w) < 3 or not _known(w):
            return None
        if op == "ConvTranspose":
            x = shapes.get(node.input[0])
            return int(np.prod(x)) * int(np.prod(w[1:])) if _known(x) else None
        return int(np.prod(out)) * int(np.prod(w[1:]))
    if op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "QGemm"):
        a = shapes.get(node.input[0], [])
        if not _known(a):
            return None
        trans_a = op == "Gemm" and next((at.i for at in node.attribute if at.name == "transA"), 0)
        k = a[0] if trans_a else a[-1]
        return int(np.prod(out)) * int(k)
    if op == "Attention":  # com.microsoft fused attention: QKV projection + the two attention products
        x, w = shapes.get(node.input[0], []), _weight_shape(node.input[1], shapes, producers)
        if len(x) != 3 or len(w) != 2 or not (_known(x) and _known(w)):
            return None
        batch, seq, _ = x
        inner = w[1] // 3
        return batch * seq * w[0] * w[1] + 2 * batch * seq * seq * inner
    return 0


def mac_table(
    model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None
) -> tuple[dict[str, int], list[str]]:
    """(MACs of each node doing multiply-accumulate work, names of such nodes whose sizes stay unknown)."""
    shapes = _shapes(model, input_shapes)
    producers = {o: n for n in model.graph.node for o in n.output}
    found: dict[str, int] = {}
    uncounted: list[str] = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in _MAC_OPS:
            continue
        name = node.name or f"{node.op_type}#{index}"
        macs = _node_macs(node, shapes, producers)
        if macs is None:
            uncounted.append(name)
        elif macs:
            found[name] = macs
    return found, uncounted


def macs_per_node(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> dict[str, int]:
    """MACs of each node that does multiply-accumulate work, keyed by node name (or op#index)."""
    return mac_table(model, input_shapes)[0]


def count_macs(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> int:
    return sum(macs_per_node(model, input_shapes).values())


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [g for a in node.attribute for g in ([a.g] if a.HasField("g") else []) + list(a.graphs)]


def _graph_parameters(graph: onnx.GraphProto, counts: Counter, nested: bool) -> None:
    for init in graph.initializer:
        n = int(np.prod(init.dims)) if init.dims else 1
        counts["total"] += n
        counts["in_subgraphs"] += n if nested else 0
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            n = _constant_elements(node)
            counts["total"] += n
            counts["in_constant_nodes"] += n
            counts["in_subgraphs"] += n if nested else 0
        for sub in _subgraphs(node):
            _graph_parameters(sub, counts, True)


def parameters(model: onnx.ModelProto) -> dict[str, int]:
    """Weights wherever the file keeps them: initializers and Constant nodes (PaddlePaddle exports
    keep every weight in Constant nodes), in the main graph and in If/Loop/Scan bodies."""
    counts: Counter = Counter()
    _graph_parameters(model.graph, counts, False)
    init_bytes = sum(
        numpy_helper.to_array(i).nbytes for i in model.graph.initializer if i.data_location != onnx.TensorProto.EXTERNAL
    )
    return {
        "total": counts["total"],
        "in_constant_nodes": counts["in_constant_nodes"],
        "in_subgraphs": counts["in_subgraphs"],
        "initializer_bytes": init_bytes,
    }


def inspect_model(path: Path, input_shapes: dict[str, list[int]] | None = None) -> dict:
    """input_shapes: the shapes MACs are counted at (`exporter.shapes.resolve_shapes` gives them for
    a file the user named; the build passes its benchmark shapes)."""
    model = onnx.load(str(path))
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

    params = parameters(model)
    macs, uncounted = mac_table(model, input_shapes)
    with_subgraphs = [n.name or f"{n.op_type}#{i}" for i, n in enumerate(model.graph.node) if _subgraphs(n)]
    facts = {
        "path": str(path),
        "bytes": path.stat().st_size,
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": io(model.graph.input),
        "outputs": io(model.graph.output),
        "nodes": len(model.graph.node),
        "op_histogram": dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
        "parameters": params["total"],
        "parameters_in_constant_nodes": params["in_constant_nodes"],
        "parameters_in_subgraphs": params["in_subgraphs"],
        "initializer_bytes": params["initializer_bytes"],
        "macs": sum(macs.values()),
    }
    if uncounted:
        facts["macs_uncounted_nodes"] = uncounted
    if with_subgraphs:  # which branch runs is decided at run time: their MACs are not added up
        facts["macs_not_counted_in_subgraphs_of"] = with_subgraphs
    return facts
