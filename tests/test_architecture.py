"""The house rules, checked on every run: imports only go down the layers, no import circles,
no module too big to hold in one's head.

Layers (highest first; a module may import its own layer or any lower one, never a higher one):
face (cli, the public API) -> release (matrix, verify, signing, compare) -> pipeline -> stages
(sources, compress, export, quantize, package, measure, bench) -> records (manifest, report) ->
foundations (schemas, onnx_io, runtime, staging, log, errors, the sandbox). Every import counts,
function-local and TYPE_CHECKING ones included: a circle hidden in a function is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "exporter"
MAX_LINES = 450

# Most specific prefix wins. A module no prefix names is a failure: every new module gets a layer.
LAYERS: dict[str, int] = {
    "exporter.cli": 5,
    "exporter.matrix": 4,
    "exporter.verify": 4,
    "exporter.signing": 4,
    "exporter.compare": 4,
    "exporter.pipeline": 3,
    "exporter.validate": 3,
    "exporter.sources": 2,
    "exporter.loaded_model": 2,
    "exporter.hf": 2,
    "exporter.hf.text": 0,  # text corpora are data, read by data.py
    "exporter.compress": 2,
    "exporter.llm": 2,
    "exporter.export": 2,
    "exporter.ingest": 2,
    "exporter.quantize": 2,
    "exporter.quant": 2,
    "exporter.package": 2,
    "exporter.preflight": 2,
    "exporter.measure": 2,
    "exporter.bench": 2,
    "exporter.bench_file": 2,
    "exporter.sandbox_jobs": 2,  # the jobs the sandbox (a foundation) runs by reference
    "exporter.manifest": 1,
    "exporter.manifest_schema": 1,
    "exporter.report": 1,
    "exporter.replay": 1,
    "exporter.junit": 1,
}
FOUNDATIONS = 0
LAYER_NAMES = ["foundations", "records", "stages", "pipeline", "release", "face"]
# Board-side modules run on a device with only numpy + onnxruntime + the standard library: they
# import nothing from edgex, so anything may use them.
BOARD_SIDE = {"exporter.bench.affinity", "exporter.bench.power", "exporter.bench.board_script"}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(PACKAGE.parent).with_suffix("").as_posix().replace("/", ".")
        mods[name.removesuffix(".__init__")] = path
    return mods


def _layer(module: str) -> int:
    if module == "exporter":
        return LAYER_NAMES.index("face")
    if module in BOARD_SIDE:
        return FOUNDATIONS
    best, depth = FOUNDATIONS, -1
    for prefix, layer in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
            best, depth = layer, prefix.count(".")
    return best


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import sub` imports the submodule when there is one, else pkg itself
                names = [
                    next((c for c in (f"{node.module}.{a.name}", node.module) if c in mods), "") for a in node.names
                ]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            edges[module].update(name for name in names if name in mods and name != module)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[str]:
    """Strongly connected components with more than one module (Tarjan), each as one line."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[str] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(" <-> ".join(sorted(component)))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert _cycles(_edges(_modules())) == []


def test_imports_only_go_down_the_layers():
    wrong = []
    for module, targets in _edges(_modules()).items():
        for target in sorted(targets):
            if _layer(target) > _layer(module):
                wrong.append(
                    f"{module} ({LAYER_NAMES[_layer(module)]}) imports {target} ({LAYER_NAMES[_layer(target)]})"
                )
    assert wrong == []


def test_board_side_modules_import_nothing_from_edgex():
    edges = _edges(_modules())
    assert {m: sorted(edges[m]) for m in BOARD_SIDE if edges.get(m)} == {}


def test_no_module_is_too_big():
    sizes = {str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines()) for p in _modules().values()}
    assert {f: n for f, n in sizes.items() if n > MAX_LINES} == {}


def test_the_checks_see_a_circle_and_an_upward_import():
    """Never trust a gate you have not seen fail."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a <-> b <-> c"]
    assert _layer("exporter.manifest") < _layer("exporter.pipeline.context") < _layer("exporter.cli.build")
    assert _layer("exporter.bench.power") == FOUNDATIONS


def test_every_name_of_a_from_import_is_an_edge(tmp_path):
    """`from pkg import a, b` depends on both submodules, not only the first one named."""
    for name, text in {"pkg": "", "a": "", "b": "", "m": "from pkg import a, b\nimport os\n"}.items():
        (tmp_path / f"{name}.py").write_text(text)
    mods = {name: tmp_path / f"{name}.py" for name in ("pkg", "pkg.a", "pkg.b", "m")}
    mods["pkg.a"], mods["pkg.b"] = tmp_path / "a.py", tmp_path / "b.py"
    assert _edges(mods)["m"] == {"pkg.a", "pkg.b"}
