"""Class 1, safe loading: every hostile file is refused through the real CLI with exit 2, one line,
no traceback, nothing executed, nothing written, and no byte of a canary outside the project in any
output (cases already in tests/test_bad_inputs.py are not repeated here)."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_bad_inputs import onnx_with_external_data, tiny_onnx_bytes

from .conftest import assert_no_output, assert_one_line_error, edgex, write_onnx_project


def _external(location: str, offset: str = "0", length: str = str(16 * 16 * 4), extra: dict | None = None) -> bytes:
    model = onnx.load_from_string(onnx_with_external_data(location))
    entries = model.graph.initializer[0].external_data
    del entries[:]
    for key, value in {"location": location, "offset": offset, "length": length, **(extra or {})}.items():
        entries.append(onnx.StringStringEntryProto(key=key, value=value))
    return model.SerializeToString()


def _subgraph_external(location: str) -> bytes:
    """The weight hides inside the then-branch of an If node (a subgraph initializer)."""
    weight = numpy_helper.from_array(np.ones((16, 16), np.float32), name="w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "1024")):
        weight.external_data.append(onnx.StringStringEntryProto(key=k, value=v))
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])
    then = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "then", [], [out], [weight])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "else", [], [out])
    cond = numpy_helper.from_array(np.array(True), name="cond")
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [out],
        [cond],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _model_dir(tmp_path: Path, data: bytes) -> Path:
    folder = tmp_path / "proj" / "model"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(data)
    return folder / "model.onnx"


# Each case: (tmp_path, canary) -> (CLI args, substrings of the message, env or None)


def case_external_hardlink(tmp_path, canary):
    model = _model_dir(tmp_path, _external("weights.bin"))
    os.link(canary.path, model.parent / "weights.bin")
    return ["inspect", str(model)], ("hardlink",), None


def case_external_in_subgraph_absolute(tmp_path, canary):
    model = _model_dir(tmp_path, _subgraph_external(str(canary.path)))
    return ["inspect", str(model)], ("external data", "'w'"), None


def case_external_symlinked_folder(tmp_path, canary):
    model = _model_dir(tmp_path, _external("sub/secret.bin"))
    (model.parent / "sub").symlink_to(canary.path.parent, target_is_directory=True)
    return ["inspect", str(model)], ("not a file inside the model's own folder",), None


def case_external_offset_not_a_number(tmp_path, canary):
    model = _model_dir(tmp_path, _external("w.bin", offset="0x10"))
    (model.parent / "w.bin").write_bytes(b"\0" * 1024)
    return ["inspect", str(model)], ("non-integer",), None


def case_external_past_end(tmp_path, canary):
    model = _model_dir(tmp_path, _external("w.bin", offset="512"))
    (model.parent / "w.bin").write_bytes(b"\0" * 1024)
    return ["bench", str(model), "--profile", "raspberry-pi-5-cpu"], ("past the end",), None


def case_external_unknown_key(tmp_path, canary):
    model = _model_dir(tmp_path, _external("w.bin", extra={"basepath": str(canary.path.parent)}))
    (model.parent / "w.bin").write_bytes(b"\0" * 1024)
    return ["inspect", str(model)], ("unknown keys", "basepath"), None


def case_lfs_pointer_for_bench(tmp_path, canary):
    model = _model_dir(tmp_path, b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 9\n")
    return ["bench", str(model), "--profile", "raspberry-pi-5-cpu"], ("Git LFS pointer",), None


def case_truncated_for_quantize(tmp_path, canary):
    model = _model_dir(tmp_path, tiny_onnx_bytes()[:-40])
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.ones((4, 16), np.float32))
    out = tmp_path / "q.onnx"
    args = ["quantize", str(model), "--profile", "raspberry-pi-5-cpu", "--calibration", str(calib), "--out", str(out)]
    return args, ("model.onnx",), None


def case_raw_data_disagrees_with_shape(tmp_path, canary):
    model = onnx.load_from_string(tiny_onnx_bytes())
    model.graph.initializer[0].dims[:] = [16, 1600]
    return ["inspect", str(_model_dir(tmp_path, model.SerializeToString()))], ("re-export",), None


def case_declared_shape_over_memory_limit(tmp_path, canary):
    model = onnx.load_from_string(tiny_onnx_bytes())
    model.graph.value_info.append(helper.make_tensor_value_info("big", TensorProto.FLOAT, [1 << 20, 1 << 20]))
    env = {"EDGEX_SANDBOX_MEMORY_MB": "512"}
    return ["inspect", str(_model_dir(tmp_path, model.SerializeToString()))], ("sandbox memory limit",), env


def case_torchscript_checkpoint(tmp_path, canary):
    import torch

    recipe = write_onnx_project(tmp_path / "proj")
    ts = torch.jit.script(torch.nn.Linear(4, 4))
    torch.jit.save(ts, str(recipe.parent / "tiny.pt"))
    text = recipe.read_text().replace(
        "source: onnx\n  path: model/model.onnx",
        "source: torch\n  factory: tiny_models.py:build_tiny\n  checkpoint: tiny.pt",
    )
    recipe.write_text(text)
    return ["validate", str(recipe)], ("TorchScript", "safetensors"), None


def test_torchscript_loads_only_with_an_explicit_trust_flag(tmp_path):
    import torch
    from conftest import write_tiny_project
    from tiny_models import build_tiny

    model = {"source": "torch", "factory": "tiny_models.py:build_tiny", "checkpoint": "tiny.pt"}
    recipe = write_tiny_project(tmp_path / "proj", model=model)
    torch.jit.save(torch.jit.script(build_tiny()), str(recipe.parent / "tiny.pt"))
    assert_one_line_error(edgex("validate", str(recipe)), 2, "TorchScript", "--trust-code")
    proc = edgex("validate", str(recipe), "--trust-code")
    assert proc.returncode == 0, proc.stderr
    assert "--trust-code was given" in proc.stderr
    assert_no_output(recipe.parent / "out")


def case_nan_weights_in_safetensors(tmp_path, canary):
    import torch
    from safetensors.torch import save_file
    from tiny_models import build_tiny

    recipe = write_onnx_project(tmp_path / "proj")
    state = build_tiny().state_dict()
    state["head.weight"][0, 0] = float("nan")
    save_file(state, str(recipe.parent / "tiny.safetensors"))
    text = recipe.read_text().replace(
        "source: onnx\n  path: model/model.onnx",
        "source: torch\n  factory: tiny_models.py:build_tiny\n  checkpoint: tiny.safetensors",
    )
    recipe.write_text(text)
    assert torch.isnan(state["head.weight"]).any()
    return ["validate", str(recipe)], ("head.weight", "NaN/Inf"), None


def case_nan_initializer_in_onnx_source(tmp_path, canary):
    model = onnx.load_from_string(tiny_onnx_bytes())
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w[3, 3] = np.inf
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "weight"))
    recipe = write_onnx_project(tmp_path / "proj", model=model.SerializeToString())
    return ["validate", str(recipe)], ("model.path", "'weight'", "NaN/Inf"), None


def case_inf_calibration(tmp_path, canary):
    recipe = write_onnx_project(tmp_path / "proj")
    x = np.ones((8, 16), np.float32)
    x[1, 2] = -np.inf
    np.savez(recipe.parent / "calib.npz", x=x)
    return ["validate", str(recipe)], ("data.calibration", "NaN/Inf"), None


def case_npz_header_claims_more_than_it_holds(tmp_path, canary):
    recipe = write_onnx_project(tmp_path / "proj")
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (1 << 28, 16)})
    npy = b"\x93NUMPY\x01\x00" + buf.getvalue()[8:] if not buf.getvalue().startswith(b"\x93") else buf.getvalue()
    with zipfile.ZipFile(recipe.parent / "calib.npz", "w") as zf:
        zf.writestr("x.npy", npy + b"\0" * 64)
    return ["validate", str(recipe)], ("data.calibration.npz", "declares"), None


def case_npz_with_code(tmp_path, canary):
    """An object array pickles a callable that would write ran.txt when loaded unsafely."""
    from test_bad_inputs import Canary as PickleCanary

    recipe = write_onnx_project(tmp_path / "proj")
    evil = np.empty(1, dtype=object)
    evil[0] = PickleCanary(tmp_path / "ran.txt")
    np.savez(recipe.parent / "eval.npz", x=evil)
    return ["validate", str(recipe)], ("data.evaluation.npz", "pickled"), None


def case_bad_source_date_epoch(tmp_path, canary):
    recipe = write_onnx_project(tmp_path / "proj")
    return ["build", str(recipe)], ("SOURCE_DATE_EPOCH",), {"SOURCE_DATE_EPOCH": "yesterday"}


def case_replay_of_what_is_not_a_manifest(tmp_path, canary):
    """Another recipe's real manifest is refused in tests/test_manifest_schema.py."""
    recipe = write_onnx_project(tmp_path / "proj")
    other = tmp_path / "other.json"
    other.write_text('{"schema_version": 1, "recipe": {"sha256": "0"}, "profiles": []}')
    return ["build", str(recipe), "--replay", str(other)], ("other.json", "not an edgex manifest"), None


def _yaml_code(tmp_path) -> str:
    """A YAML tag that runs a shell command when read with yaml.load / unsafe_load (CVE-2017-18342)."""
    ran = tmp_path / "ran.txt"
    return f'!!python/object/apply:os.system ["touch {ran}"]'


def case_yaml_code_in_recipe(tmp_path, canary):
    recipe = write_onnx_project(tmp_path / "proj")
    recipe.write_text(recipe.read_text() + f"notes: {_yaml_code(tmp_path)}\n")
    return ["build", str(recipe)], (str(recipe.name), "YAML"), None


def case_yaml_code_in_profile(tmp_path, canary):
    recipe = write_onnx_project(tmp_path / "proj")
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "evil-board.yaml").write_text(f"id: evil-board\nname: {_yaml_code(tmp_path)}\n")
    return ["--profiles-dir", str(profiles), "build", str(recipe)], ("evil-board.yaml", "YAML"), None


CASES = [
    case_yaml_code_in_recipe,
    case_yaml_code_in_profile,
    case_external_hardlink,
    case_external_in_subgraph_absolute,
    case_external_symlinked_folder,
    case_external_offset_not_a_number,
    case_external_past_end,
    case_external_unknown_key,
    case_lfs_pointer_for_bench,
    case_truncated_for_quantize,
    case_raw_data_disagrees_with_shape,
    case_declared_shape_over_memory_limit,
    case_torchscript_checkpoint,
    case_nan_weights_in_safetensors,
    case_nan_initializer_in_onnx_source,
    case_inf_calibration,
    case_npz_header_claims_more_than_it_holds,
    case_npz_with_code,
    case_bad_source_date_epoch,
    case_replay_of_what_is_not_a_manifest,
]


@pytest.mark.parametrize("make", CASES, ids=[c.__name__[5:] for c in CASES])
def test_hostile_file_is_refused(make, tmp_path, canary):
    args, says, env = make(tmp_path, canary)
    before = sorted(p.name for p in canary.path.parent.iterdir())
    proc = edgex(*args, "--json", env=env)
    assert_one_line_error(proc, 2, *says)
    canary.assert_absent(proc, tmp_path)
    assert sorted(p.name for p in canary.path.parent.iterdir()) == before  # nothing written beside it
    assert not (tmp_path / "ran.txt").exists(), "untrusted bytes ran code"
    assert not (tmp_path / "q.onnx").exists()
    assert_no_output(tmp_path / "proj" / "out")


def test_large_models_keep_external_data_inside_the_folder(tmp_path):
    """Over the 2 GiB protobuf limit (here: a lowered threshold), weights go to `<name>.data` beside the
    model, referenced by a plain relative name, and the checker accepts the pair back."""
    from exporter.onnx_io import check_onnx_file, save_model

    path = tmp_path / "rel" / "big.onnx"
    save_model(onnx.load_from_string(tiny_onnx_bytes()), path, external_threshold=64)
    model = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"big.onnx.data"} and (path.parent / "big.onnx.data").is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["big.onnx", "big.onnx.data"]
    check_onnx_file(path)
