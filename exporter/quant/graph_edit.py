"""Graph edits through onnx_ir, carried back onto the original protobuf so untouched bytes stay.

onnx_ir knows each value's producer and uses, so an edit is a few replacements and removals
instead of consumer and rename maps kept by hand. Its serializer is not used for the result: it
drops empty doc strings, writes value_info for every typed value and reorders opset imports, so
the same edit would give a different file, and a build's files must keep their bytes. What comes
back is the original model with only the edit applied: each surviving node is its own protobuf
with the input and output names onnx_ir now gives it (in onnx_ir's node order), initializers in
onnx_ir's order (originals where they were, added ones after them), the rest copied as it was.
Nodes added through onnx_ir are not supported; values may be renamed, initializers added or dropped.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper


class GraphEdit:
    """An onnx_ir view of `model`'s main graph; `result()` is a new model with the edit applied."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.proto = model
        self.graph = ir.serde.deserialize_graph(model.graph)
        self._nodes = {node: i for i, node in enumerate(self.graph)}
        self._initializers = {value: i for i, value in enumerate(self.graph.initializers.values())}
        self._added: dict[ir.Value, onnx.TensorProto] = {}

    def add_initializer(self, name: str, array: np.ndarray) -> ir.Value:
        """The initializer called `name`: the one already there, else a new one holding `array`."""
        found = self.graph.initializers.get(name)
        if found is not None:
            return found
        value = ir.Value(name=name, const_value=ir.Tensor(array, name=name))
        self.graph.register_initializer(value)
        self._added[value] = numpy_helper.from_array(array, name)
        return value

    def drop_unused_initializers(self) -> None:
        for name, value in list(self.graph.initializers.items()):
            if not value.uses():
                self.graph.initializers.pop(name)

    def result(self) -> onnx.ModelProto:
        model = onnx.ModelProto()
        model.CopyFrom(self.proto)
        graph = model.graph
        nodes = []
        for node in self.graph:
            if node not in self._nodes:
                raise ValueError(f"node {node.name!r} was added through onnx_ir; GraphEdit cannot write it back")
            proto = graph.node[self._nodes[node]]
            _rename(proto.input, [v.name or "" if v is not None else "" for v in node.inputs])
            _rename(proto.output, [v.name or "" for v in node.outputs])
            nodes.append(proto)
        initializers = []
        for value in self.graph.initializers.values():
            proto = self._added[value] if value in self._added else graph.initializer[self._initializers[value]]
            if proto.name != value.name:
                proto.name = value.name
            initializers.append(proto)
        for protos, values in ((graph.input, self.graph.inputs), (graph.output, self.graph.outputs)):
            for proto, value in zip(protos, values, strict=True):
                if proto.name != value.name:
                    proto.name = value.name or ""
        del graph.node[:]
        graph.node.extend(nodes)
        del graph.initializer[:]
        graph.initializer.extend(initializers)
        return model


def _rename(field, names: list[str]) -> None:
    """Rewrite a repeated name field only where it changed (an unchanged node keeps its bytes)."""
    if list(field) != names:
        del field[:]
        field.extend(names)


def name_unnamed_nodes(model: onnx.ModelProto) -> int:
    """Give every unnamed node a unique name (op type + index); returns how many were named."""
    taken = {n.name for n in model.graph.node if n.name}
    named = 0
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_edgex_{i}"
            while name in taken:
                name += "_"
            node.name, named = name, named + 1
            taken.add(name)
    return named
