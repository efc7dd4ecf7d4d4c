"""Graph edits of ingest: Constant weights to initializers, opset conversion, shape inference,
and control flow (If nodes decided by constants inlined; float subgraphs refused on integer-only
targets). Each edit is checked by the caller (`exporter.ingest.ingest`) against the original."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from exporter.errors import UsageError
from exporter.targets import Target

CONTROL_FLOW = ("If", "Loop", "Scan")
DEFAULT_DOMAINS = ("", "ai.onnx")


def model_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)


# --------------------------------------------------------------------------- graph edits


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def control_flow_nodes(graph: onnx.GraphProto) -> list[str]:
    """'op:name' of every If/Loop/Scan, nested ones included (a nameless node gets its index)."""
    found = []
    for i, node in enumerate(graph.node):
        if node.op_type in CONTROL_FLOW:
            found.append(f"{node.op_type}:{node.name or f'#{i}'}")
        for sub in _subgraphs(node):
            found.extend(control_flow_nodes(sub))
    return found


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node holds, for the attributes that are numbers; None for strings/sparse."""
    if len(node.attribute) != 1 or len(node.output) != 1:
        return None
    attr = node.attribute[0]
    name = node.output[0]
    if attr.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attr.t)
        if tensor.data_type == onnx.TensorProto.STRING:
            return None
        tensor.name = name
        return tensor
    if attr.name == "value_float":
        return numpy_helper.from_array(np.array(attr.f, dtype=np.float32), name)
    if attr.name == "value_floats":
        return numpy_helper.from_array(np.array(list(attr.floats), dtype=np.float32), name)
    if attr.name == "value_int":
        return numpy_helper.from_array(np.array(attr.i, dtype=np.int64), name)
    if attr.name == "value_ints":
        return numpy_helper.from_array(np.array(list(attr.ints), dtype=np.int64), name)
    return None  # value_string(s), sparse_value: left as nodes


def promote_constants(graph: onnx.GraphProto, as_inputs: bool = False) -> tuple[int, int]:
    """Constant nodes -> initializers of the graph they sit in (subgraphs included), so the
    quantizer sees weights and the parameter count is true. A Constant that is itself a graph
    output stays a node (an initializer may not be one). Returns (count, bytes).
    as_inputs: IR < 4 wants every initializer listed as a graph input too."""
    outputs = {o.name for o in graph.output}
    keep, count, size = [], 0, 0
    for node in graph.node:
        for sub in _subgraphs(node):
            c, b = promote_constants(sub, False)
            count, size = count + c, size + b
        tensor = _constant_tensor(node) if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS else None
        if tensor is None or node.output[0] in outputs:
            keep.append(node)
            continue
        graph.initializer.append(tensor)
        if as_inputs:
            graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        count += 1
        size += numpy_helper.to_array(tensor).nbytes
    if count:
        del graph.node[:]
        graph.node.extend(keep)
    return count, size


def count_parameters(graph: onnx.GraphProto) -> int:
    """Elements of every float initializer, subgraphs included (what `inspect` calls parameters)."""
    total = 0
    for init in graph.initializer:
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
            total += int(np.prod(init.dims)) if init.dims else 1
    for node in graph.node:
        for sub in _subgraphs(node):
            total += count_parameters(sub)
    return total


def convert_opset(model: onnx.ModelProto, to: int, where: Path | str, field_name: str) -> onnx.ModelProto:
    """onnx's version converter; a failure is the user's model meeting a converter gap: exit 2."""
    from onnx import version_converter

    source = model_opset(model)
    try:
        converted = version_converter.convert_version(model, to)
        onnx.checker.check_model(converted)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        direction = "lower" if to < source else "raise"
        raise UsageError(
            f"onnx's version converter cannot {direction} the model from opset {source} to {to} ({detail})",
            path=where,
            field=field_name,
            fix=f"re-export the model at an opset in the target's range (edgex tried {to})",
        ) from None
    return converted


def infer_shapes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """onnx shape inference, strict off: types for the tensors later stages inspect; a model it
    cannot infer is kept as it was (inference is a help, not a gate)."""
    before = len(model.graph.value_info)
    if model.ByteSize() > 2**31 - 2**20:
        return model, 0
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        return model, 0
    return inferred, len(inferred.graph.value_info) - before


# --------------------------------------------------------------------------- control flow

_FOLDABLE = {
    "Constant",
    "Identity",
    "Equal",
    "Greater",
    "Less",
    "Not",
    "And",
    "Or",
    "Cast",
    "Reshape",
    "Gather",
    "Squeeze",
    "Unsqueeze",
    "Size",
    "Add",
    "Sub",
    "Mul",
}
_SMALL = 64  # elements: conditions and sample rates, never weights


def _evaluate(node: onnx.NodeProto, args: list[np.ndarray], opset: int) -> list[np.ndarray] | None:
    from onnx.reference import ReferenceEvaluator

    try:
        return list(ReferenceEvaluator(node, opsets={"": opset}).run(None, dict(zip(node.input, args))))
    except Exception:
        return None


def inline_constant_ifs(
    model: onnx.ModelProto,
    assumed: Mapping[str, np.ndarray] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> list[str]:
    """If nodes whose condition is known before the model runs (it depends only on constants, e.g.
    a bound sample rate) are replaced by the branch they always take, so the quantizer sees the
    branch's weights (onnxruntime's quantizer does not quantize inside subgraphs). Returns the
    names of the nodes inlined; a graph that would break (name clash) is left as it was.
    assumed: inputs whose value the recipe fixes (`value:`); they stay inputs (the app still feeds
    them) but the branch for their value is the one kept. shapes: input shapes fixed for the
    device (static-shape targets): `Shape` of such an input is known too."""
    graph, opset = model.graph, model_opset(model)
    known: dict[str, np.ndarray] = {
        i.name: numpy_helper.to_array(i) for i in graph.initializer if int(np.prod(i.dims)) <= _SMALL
    }
    known.update({k: np.asarray(v) for k, v in (assumed or {}).items()})
    out, inlined, pending = [], [], list(graph.node)
    while pending:
        node = pending.pop(0)
        if node.op_type == "If" and node.input[0] in known:
            branch = next(
                a.g for a in node.attribute if a.name == ("then_branch" if known[node.input[0]] else "else_branch")
            )
            graph.initializer.extend(branch.initializer)
            for init in branch.initializer:
                if int(np.prod(init.dims)) <= _SMALL:
                    known[init.name] = numpy_helper.to_array(init)
            tail = [
                helper.make_node("Identity", [b.name], [o], name=f"{node.name}/inlined/{o}")
                for b, o in zip(branch.output, node.output)
            ]
            pending = list(branch.node) + tail + pending
            inlined.append(node.name)
            continue
        out.append(node)
        if node.op_type == "Shape" and node.input[0] in (shapes or {}):
            attrs = {a.name: a.i for a in node.attribute}
            dims = np.array(list(shapes[node.input[0]]), np.int64)
            known[node.output[0]] = dims[attrs.get("start", 0) : attrs.get("end", len(dims))]
        elif node.op_type in _FOLDABLE and all(n in known for n in node.input if n) and not _subgraphs(node):
            values = _evaluate(node, [known[n] for n in node.input if n], opset)
            for name, value in zip(node.output, values or []):
                if np.asarray(value).size <= _SMALL:
                    known[name] = np.asarray(value)
    if not inlined:
        return []
    trial = onnx.ModelProto()
    trial.CopyFrom(model)
    del trial.graph.node[:]
    trial.graph.node.extend(out)
    _drop_dead(trial.graph)
    try:
        onnx.checker.check_model(trial)
    except Exception:
        return []
    model.CopyFrom(trial)
    return inlined


def _used_names(graph: onnx.GraphProto) -> set[str]:
    used = set()
    for node in graph.node:
        used.update(node.input)
        for sub in _subgraphs(node):
            used |= _used_names(sub)
            used |= {o.name for o in sub.output}
    return used


def _drop_dead(graph: onnx.GraphProto) -> None:
    """Nodes whose outputs nothing reads (the condition's arithmetic), and unread initializers."""
    while True:
        used = _used_names(graph) | {o.name for o in graph.output}
        live = [n for n in graph.node if any(o in used for o in n.output)]
        if len(live) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(live)
    used = _used_names(graph) | {o.name for o in graph.output}
    inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _weighted_ops(graph: onnx.GraphProto) -> int:
    count = 0
    for node in graph.node:
        count += node.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "RNN", "Attention")
        for sub in _subgraphs(node):
            count += _weighted_ops(sub)
    return count


def refuse_float_subgraphs(model: onnx.ModelProto, targets: Sequence[Target], where: Path | str) -> None:
    """A target that runs only integer graphs (QNN's HTP) cannot run weights the quantizer left in
    float inside an If/Loop/Scan: refused by node name before any work (exit 2)."""
    integer_only = [
        t for t in targets if "fp32" not in t.quantization.precisions and "fp16" not in t.quantization.precisions
    ]
    if not integer_only:
        return
    for i, node in enumerate(model.graph.node):
        if node.op_type in CONTROL_FLOW:
            inside = sum(_weighted_ops(g) for g in _subgraphs(node))
            if inside:
                raise UsageError(
                    f"{node.op_type} node '{node.name or f'#{i}'}' holds {inside} weighted ops (Conv/MatMul/LSTM...)"
                    f" in its subgraphs, which onnxruntime's quantizer leaves in float; target"
                    f" '{integer_only[0].id}' runs only {', '.join(integer_only[0].quantization.precisions)}",
                    path=where,
                    field="model.path",
                    fix="make its condition known before the model runs (a constant input such as a sample rate: edgex then"
                    " inlines the branch),"
                    " or build for a target that runs float",
                )
