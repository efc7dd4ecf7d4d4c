"""Class 6, fuzzing: recipe and profile parsing never fail with anything but a UsageError, and 200+
mutants of small valid ONNX models end in success or a clear error, checked in this process and run
in the sandbox child: this process survives every one of them."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import onnx
import yaml
from conftest import ROOT, write_tiny_project
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from test_bad_inputs import tiny_onnx_bytes

from exporter.errors import UsageError
from exporter.onnx_io import check_onnx_file
from exporter.profiles import load_profile_file
from exporter.recipe import load_recipe
from exporter.sandbox_jobs import probe

MUTANTS = 220

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=True), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _mutate(data: dict, path: list, value) -> dict:
    node = data
    for key in path[:-1]:
        if isinstance(node, dict) and key in node:
            node = node[key]
        else:
            return data
    if isinstance(node, dict):
        node[path[-1]] = value
    return data


def _keys(data, prefix=()):
    if isinstance(data, dict):
        for k, v in data.items():
            yield (*prefix, k)
            yield from _keys(v, (*prefix, k))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(choice=st.integers(0, 10**6), value=values, drop=st.booleans())
def test_recipe_parsing_fails_only_with_usage_errors(tmp_path_factory, choice, value, drop):
    folder = tmp_path_factory.mktemp("r")
    recipe = write_tiny_project(folder)
    data = yaml.safe_load(recipe.read_text())
    keys = list(_keys(data))
    path = list(keys[choice % len(keys)])
    if drop:
        parent = data
        for k in path[:-1]:
            parent = parent[k]
        parent.pop(path[-1], None)
    else:
        _mutate(data, path, value)
    recipe.write_text(yaml.safe_dump(data))
    try:
        load_recipe(recipe)
    except UsageError as exc:
        assert "\n" not in exc.one_line() and str(recipe) in str(exc)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(choice=st.integers(0, 10**6), value=values, text=st.text(max_size=40))
def test_profile_parsing_fails_only_with_usage_errors(tmp_path_factory, choice, value, text):
    data = yaml.safe_load((ROOT / "device_profiles" / "raspberry-pi-5-cpu.yaml").read_text())
    keys = list(_keys(data))
    _mutate(data, list(keys[choice % len(keys)]), value)
    path = tmp_path_factory.mktemp("p") / "raspberry-pi-5-cpu.yaml"
    path.write_text(yaml.safe_dump(data) if choice % 7 else text)  # sometimes not even YAML
    try:
        load_profile_file(path)
    except UsageError as exc:
        assert "\n" not in exc.one_line()


def _seeds() -> list[bytes]:
    conv_w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [conv_w],
    )
    conv = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    conv.ir_version = 8
    return [tiny_onnx_bytes(), conv.SerializeToString()]


def _structural(model: onnx.ModelProto, rng: random.Random) -> None:
    g = model.graph
    kind = rng.randrange(7)
    if kind == 0 and g.initializer:
        t = g.initializer[rng.randrange(len(g.initializer))]
        t.dims[rng.randrange(len(t.dims))] = rng.choice([0, -1, 3, 1 << 31, 7])
    elif kind == 1 and g.node:
        g.node[rng.randrange(len(g.node))].op_type = rng.choice(["Gemm", "Foo", "Add", "Conv", "Reshape", ""])
    elif kind == 2:
        v = rng.choice(list(g.input) + list(g.output))
        dims = v.type.tensor_type.shape.dim
        if dims:
            dims[rng.randrange(len(dims))].dim_value = rng.choice([0, 2, 1 << 40, 5])
    elif kind == 3 and g.initializer:
        g.initializer[rng.randrange(len(g.initializer))].data_type = rng.choice([2, 7, 11, 10, 99])
    elif kind == 4 and g.node:
        node = g.node[rng.randrange(len(g.node))]
        node.input.append(rng.choice(["x", "ghost", ""]))
    elif kind == 5:
        model.opset_import[0].version = rng.choice([1, 7, 13, 99, 10**6])
    elif g.initializer:
        t = g.initializer[0]
        raw = bytearray(t.raw_data)
        if raw:
            raw[rng.randrange(len(raw))] = 0xFF  # NaN-ish bytes in the weights
            t.raw_data = bytes(raw)


def test_onnx_mutants_end_in_success_or_a_clear_error(tmp_path):
    rng = random.Random(2026)
    seeds = _seeds()
    outcomes = {"checker refused": 0, "ran": 0, "sandbox refused": 0}
    start = time.monotonic()
    for i in range(MUTANTS):
        data = seeds[i % len(seeds)]
        if i % 2:
            raw = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            if rng.random() < 0.2:
                raw = raw[: rng.randrange(len(raw))]
            data = bytes(raw)
        else:
            model = onnx.load_from_string(data)
            for _ in range(rng.randint(1, 3)):
                _structural(model, rng)
            data = model.SerializeToString()
        path = Path(tmp_path / f"m{i}" / "model.onnx")
        path.parent.mkdir()
        path.write_bytes(data)
        try:
            check_onnx_file(path)
        except UsageError:
            outcomes["checker refused"] += 1
            continue
        try:
            probe(path)
            outcomes["ran"] += 1
        except UsageError:
            outcomes["sandbox refused"] += 1
    print(outcomes, f"{time.monotonic() - start:.1f} s")
    assert sum(outcomes.values()) == MUTANTS  # every mutant ended in one of the three, none crashed us
    assert outcomes["checker refused"] and outcomes["ran"]
