"""Bad input is exit 2 with one line naming the file, the field and a fix; never a traceback, never a partial build.

Every case goes through the real CLI in a child process (`run_cli`), with --json, so both the
machine-readable error on stdout and the human line on stderr are checked. All of them fail
before export: none of these tests runs a build that succeeds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, run_cli, write_tiny_project

TORCH_MODEL = {"source": "torch", "factory": "tiny_models.py:build_tiny"}


@dataclass
class Expect:
    """What one bad-input case must produce."""

    args: list[str]  # CLI arguments after `edgex`
    names: Path | str | None  # file the message must name
    field: str | None  # field the message must name (None: the whole file is the problem)
    says: tuple[str, ...] = ()  # further substrings of the message
    project: Path | None = None  # folder whose default `out` must not appear
    out: Path | None = None  # explicit --out that must not appear
    canary: Path | None = None  # a file that malicious input would write
    extra_checks: list[Callable[[], None]] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers


def assert_bad_input(proc, expect: Expect, as_json: bool = True) -> str:
    """The contract for bad input; returns the message."""
    report = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, report
    assert proc.returncode == 2, report

    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("edgex: error:")]
    assert len(errors) == 1, report
    assert lines[-1] == errors[0], report  # the error is the last thing said
    # anything before it is progress logging ("[name] ..."), never a dump or a warning block
    assert all(line.startswith("[") for line in lines[:-1]), report
    message = errors[0][len("edgex: error: ") :]

    if as_json:
        data = json.loads(proc.stdout)  # exactly one JSON document
        assert set(data) == {"error"}, report
        assert set(data["error"]) == {"type", "message", "exit_code"}, report
        assert data["error"]["exit_code"] == 2, report
        assert data["error"]["type"] == "UsageError", report
        assert data["error"]["message"] == message, report
    else:
        assert proc.stdout.strip() == "", report

    if expect.names is not None:
        named = Path(expect.names)
        candidates = {str(expect.names), str(named.resolve()) if named.is_absolute() else str(named)}
        assert any(c in message for c in candidates), f"file {expect.names} not named\n{report}"
    if expect.field is not None:
        assert f"{expect.field}:" in message, f"field {expect.field} not named\n{report}"
    head, sep, fix = message.partition(" — ")
    assert sep and fix.strip(), f"no fix given\n{report}"
    for text in expect.says:
        assert text in message, f"{text!r} not in message\n{report}"
    return message


def assert_nothing_left(expect: Expect) -> None:
    folders = []
    if expect.project is not None:
        folders.append(expect.project / "out")
    if expect.out is not None:
        folders.append(expect.out)
    for final in folders:
        assert not final.exists() and not final.is_symlink(), f"{final} was created"
        leftovers = sorted(p.name for p in final.parent.glob(f".{final.name}.edgex-*"))
        assert leftovers == [], f"staging leftovers beside {final}: {leftovers}"
    if expect.canary is not None:
        assert not expect.canary.exists(), "malicious input ran code"
    for check in expect.extra_checks:
        check()


def project(tmp_path: Path, **overrides) -> Path:
    """The tiny recipe in tmp_path/proj (default output proj/out); returns the recipe path."""
    return write_tiny_project(tmp_path / "proj", **overrides)


def build(recipe: Path, *more: str) -> list[str]:
    return ["build", str(recipe), *more]


def validate(recipe: Path) -> list[str]:
    return ["validate", str(recipe)]


def edit_recipe(recipe: Path, edit: Callable[[dict], None]) -> Path:
    data = yaml.safe_load(recipe.read_text())
    edit(data)
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    return recipe


class Canary:
    """Unpickling this writes a file: proof that untrusted bytes ran code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (exec, (f"open({str(self.path)!r}, 'w').write('pwned')",))


def tiny_onnx_bytes() -> bytes:
    """A real, checker-clean ONNX model (MatMul with a 16x16 weight), a few KB."""
    from tiny_models import matmul_onnx

    return matmul_onnx(16).SerializeToString()


def onnx_with_external_data(location: str) -> bytes:
    """A model whose only initializer claims to live in an external file at `location`."""
    import onnx
    from onnx import TensorProto

    model = onnx.load_from_string(tiny_onnx_bytes())
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(16 * 16 * 4))):
        weight.external_data.append(onnx.StringStringEntryProto(key=key, value=value))
    return model.SerializeToString()


def onnx_project(tmp_path: Path, model_path: str = "model/model.onnx") -> Path:
    return project(tmp_path, model={"source": "onnx", "path": model_path})


# --------------------------------------------------------------------------- recipe cases


def case_unknown_top_level_key(tmp_path):
    recipe = project(tmp_path)
    edit_recipe(recipe, lambda d: d.__setitem__("profile", d.pop("profiles")))
    return Expect(build(recipe), recipe, "profile", ("unknown key", "did you mean 'profiles'"), project=recipe.parent)


def case_unknown_top_level_key_optional(tmp_path):
    recipe = project(tmp_path)
    edit_recipe(recipe, lambda d: d.__setitem__("metrics", d.pop("metric")))
    return Expect(build(recipe), recipe, "metrics", ("unknown key", "did you mean 'metric'"), project=recipe.parent)


def case_unknown_nested_key(tmp_path):
    recipe = project(tmp_path, quantize={"calibration_sample": 16})
    return Expect(
        build(recipe),
        recipe,
        "quantize.calibration_sample",
        ("unknown key", "did you mean 'calibration_samples'"),
        project=recipe.parent,
    )


def case_missing_required_key(tmp_path):
    recipe = project(tmp_path)
    edit_recipe(recipe, lambda d: d.pop("model"))
    return Expect(build(recipe), recipe, "model", ("required key is missing",), project=recipe.parent)


def case_wrong_type(tmp_path):
    recipe = project(tmp_path, seed="abc")
    return Expect(build(recipe), recipe, "seed", ("integer",), project=recipe.parent)


def case_invalid_yaml(tmp_path):
    recipe = project(tmp_path)
    recipe.write_text("version: 1\nname: tiny\ninputs: [unclosed\nprofiles: [raspberry-pi-5-cpu]\n")
    return Expect(build(recipe), recipe, "line 4", ("not valid YAML", "fix the YAML syntax"), project=recipe.parent)


def case_yaml_list(tmp_path):
    recipe = project(tmp_path)
    recipe.write_text("- version: 1\n- name: tiny\n")
    # the whole document is the wrong shape: there is no field to name
    return Expect(build(recipe), recipe, None, ("YAML mapping",), project=recipe.parent)


def case_recipe_not_found(tmp_path):
    recipe = tmp_path / "proj" / "missing.yaml"
    recipe.parent.mkdir()
    return Expect(build(recipe), recipe, None, ("not found",), project=recipe.parent)


def case_version_2(tmp_path):
    recipe = project(tmp_path, version=2)
    return Expect(build(recipe), recipe, "version", (), project=recipe.parent)


def case_compress_step(tmp_path):
    recipe = project(tmp_path, compress=[{"prune": {"amount": 0.5}}])
    return Expect(build(recipe), recipe, "compress.0.prune.amount", ("unknown key", "goal"), project=recipe.parent)


def case_unknown_profile(tmp_path):
    recipe = project(tmp_path, profiles=["raspberry-pi-5-cpuu"])
    return Expect(
        build(recipe),
        recipe,
        "profiles",
        ("unknown profile 'raspberry-pi-5-cpuu'", "did you mean 'raspberry-pi-5-cpu'"),
        project=recipe.parent,
    )


def case_dynamic_axis_out_of_range(tmp_path):
    recipe = project(tmp_path, inputs=[{"name": "image", "shape": [1, 3, 16, 16], "dynamic_axes": {4: "w"}}])
    return Expect(build(recipe), recipe, "inputs.0", ("dynamic axis 4", "rank 4"), project=recipe.parent)


def case_npz_not_found(tmp_path):
    recipe = project(tmp_path, data={"calibration": {"npz": "nope.npz"}, "evaluation": {"npz": "eval.npz"}})
    return Expect(build(recipe), recipe, "data.calibration.npz", ("nope.npz", "not found"), project=recipe.parent)


def case_npz_wrong_array_name(tmp_path):
    recipe = project(tmp_path)
    np.savez(recipe.parent / "calib.npz", pixels=np.zeros((8, 3, 16, 16), np.float32))
    return Expect(build(recipe), recipe, "data.calibration", ("'pixels'", "'image'"), project=recipe.parent)


def case_npz_wrong_shape(tmp_path):
    recipe = project(tmp_path)
    np.savez(recipe.parent / "calib.npz", image=np.zeros((8, 3, 8, 8), np.float32))
    return Expect(
        build(recipe), recipe, "data.calibration", ("shape [8, 3, 8, 8]", "[N, 3, 16, 16]"), project=recipe.parent
    )


def case_npz_nan(tmp_path):
    recipe = project(tmp_path)
    ev = np.ones((8, 3, 16, 16), np.float32)
    ev[3, 1, 2, 2] = np.nan
    np.savez(recipe.parent / "eval.npz", image=ev, labels=np.zeros(8, np.int64))
    return Expect(build(recipe), recipe, "data.evaluation", ("'image'", "NaN"), project=recipe.parent)


def case_npz_pickled_objects(tmp_path):
    recipe = project(tmp_path)
    canary = tmp_path / "npz-canary.txt"
    evil = np.empty(1, dtype=object)
    evil[0] = Canary(canary)
    np.savez(recipe.parent / "calib.npz", image=evil)  # numpy pickles object arrays
    assert not canary.exists()
    return Expect(build(recipe), recipe, "data.calibration.npz", ("pickled",), project=recipe.parent, canary=canary)


def case_top1_without_labels(tmp_path):
    recipe = project(tmp_path, metric="top1")
    np.savez(recipe.parent / "eval.npz", image=np.ones((8, 3, 16, 16), np.float32))
    return Expect(build(recipe), recipe, "data.evaluation", ("top1", "labels"), project=recipe.parent)


def case_factory_file_missing(tmp_path):
    recipe = project(tmp_path, model={"source": "torch", "factory": "nowhere.py:build_tiny"})
    return Expect(build(recipe), recipe, "model.factory", ("nowhere.py", "not found"), project=recipe.parent)


def case_factory_attr_missing(tmp_path):
    recipe = project(tmp_path, model={"source": "torch", "factory": "tiny_models.py:build_huge"})
    return Expect(build(recipe), recipe, "model.factory", ("'build_huge'",), project=recipe.parent)


def case_factory_import_raises(tmp_path):
    recipe = project(tmp_path, model={"source": "torch", "factory": "broken.py:build"})
    (recipe.parent / "broken.py").write_text("raise RuntimeError('no GPU driver here')\n\ndef build():\n    pass\n")
    return Expect(
        build(recipe),
        recipe,
        "model.factory",
        ("broken.py", "RuntimeError", "no GPU driver here"),
        project=recipe.parent,
    )


def case_factory_call_raises(tmp_path):
    recipe = project(tmp_path, model={"source": "torch", "factory": "broken.py:build"})
    (recipe.parent / "broken.py").write_text("def build():\n    raise RuntimeError('bad width')\n")
    return Expect(build(recipe), recipe, "model.factory", ("bad width",), project=recipe.parent)


def case_data_callable_raises(tmp_path):
    recipe = project(
        tmp_path, data={"calibration": {"callable": "data.py:calibration"}, "evaluation": {"npz": "eval.npz"}}
    )
    (recipe.parent / "data.py").write_text("def calibration():\n    raise FileNotFoundError('images/')\n")
    return Expect(build(recipe), recipe, "data.calibration.callable", ("images/",), project=recipe.parent)


def case_checkpoint_missing(tmp_path):
    recipe = project(tmp_path, model={**TORCH_MODEL, "checkpoint": "weights/tiny.safetensors"})
    return Expect(build(recipe), recipe, "model.checkpoint", ("tiny.safetensors", "not found"), project=recipe.parent)


def case_checkpoint_malicious_pickle(tmp_path):
    import torch

    recipe = project(tmp_path, model={**TORCH_MODEL, "checkpoint": "tiny.pt"})
    canary = tmp_path / "pt-canary.txt"
    torch.save({"stem.0.weight": Canary(canary)}, recipe.parent / "tiny.pt")
    assert not canary.exists()
    return Expect(
        build(recipe), recipe, "model.checkpoint", ("tiny.pt", "safetensors"), project=recipe.parent, canary=canary
    )


def case_checkpoint_garbage_safetensors(tmp_path):
    recipe = project(tmp_path, model={**TORCH_MODEL, "checkpoint": "tiny.safetensors"})
    (recipe.parent / "tiny.safetensors").write_bytes(os.urandom(8) + b"not a safetensors file" * 20)
    return Expect(build(recipe), recipe, "model.checkpoint", ("tiny.safetensors", "safetensors"), project=recipe.parent)


def case_checkpoint_wrong_keys(tmp_path):
    import torch
    from safetensors.torch import save_file

    recipe = project(tmp_path, model={**TORCH_MODEL, "checkpoint": "tiny.safetensors"})
    save_file({"encoder.weight": torch.zeros(4, 4)}, str(recipe.parent / "tiny.safetensors"))
    return Expect(build(recipe), recipe, "model.checkpoint", ("does not fit", "encoder.weight"), project=recipe.parent)


def case_checkpoint_wrong_shapes(tmp_path):
    import torch
    from safetensors.torch import save_file
    from tiny_models import build_tiny

    recipe = project(tmp_path, model={**TORCH_MODEL, "checkpoint": "tiny.safetensors"})
    state = {k: torch.zeros(1) for k in build_tiny().state_dict()}  # right names, wrong shapes
    save_file(state, str(recipe.parent / "tiny.safetensors"))
    return Expect(build(recipe), recipe, "model.checkpoint", (), project=recipe.parent)


# --------------------------------------------------------------------------- ONNX model source


def case_onnx_missing(tmp_path):
    recipe = onnx_project(tmp_path)
    return Expect(build(recipe), recipe, "model.path", ("model.onnx", "not found"), project=recipe.parent)


def case_onnx_truncated(tmp_path):
    recipe = onnx_project(tmp_path)
    (recipe.parent / "model").mkdir()
    (recipe.parent / "model" / "model.onnx").write_bytes(tiny_onnx_bytes()[:100])
    return Expect(build(recipe), recipe, "model.path", ("model.onnx", "truncated"), project=recipe.parent)


def case_onnx_lfs_pointer(tmp_path):
    recipe = onnx_project(tmp_path)
    (recipe.parent / "model").mkdir()
    (recipe.parent / "model" / "model.onnx").write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        "size 12345\n"
    )
    return Expect(build(recipe), recipe, "model.path", ("Git LFS pointer", "git lfs pull"), project=recipe.parent)


def _external_data_case(tmp_path, location: str, make_outside: Callable[[Path], None] | None = None):
    recipe = onnx_project(tmp_path)
    model_dir = recipe.parent / "model"
    model_dir.mkdir()
    outside = recipe.parent / "outside.bin"
    outside.write_bytes(b"\x07" * (16 * 16 * 4))
    before = outside.read_bytes()
    if make_outside is not None:
        make_outside(model_dir)
    (model_dir / "model.onnx").write_bytes(onnx_with_external_data(location))

    def outside_untouched() -> None:
        assert outside.read_bytes() == before

    return Expect(
        build(recipe),
        recipe,
        "model.path",
        ("external data", "weight"),
        project=recipe.parent,
        extra_checks=[outside_untouched],
    )


def case_onnx_external_data_parent(tmp_path):
    return _external_data_case(tmp_path, "../outside.bin")


def case_onnx_external_data_absolute(tmp_path):
    return _external_data_case(tmp_path, str(tmp_path / "proj" / "outside.bin"))


def case_onnx_external_data_symlink(tmp_path):
    return _external_data_case(
        tmp_path, "weights.bin", lambda d: (d / "weights.bin").symlink_to(d.parent / "outside.bin")
    )


def case_onnx_input_names_mismatch(tmp_path):
    """A valid ONNX model whose input is 'x' while the recipe declares 'image'."""
    recipe = onnx_project(tmp_path)
    (recipe.parent / "model").mkdir()
    (recipe.parent / "model" / "model.onnx").write_bytes(tiny_onnx_bytes())
    return Expect(build(recipe), recipe, "inputs", ("'image'",), project=recipe.parent)


# --------------------------------------------------------------------------- `edgex validate`


def case_validate_unknown_key(tmp_path):
    recipe = project(tmp_path, quantize={"calibration_sample": 16})
    return Expect(validate(recipe), recipe, "quantize.calibration_sample", ("did you mean 'calibration_samples'",))


def case_validate_npz_nan(tmp_path):
    expect = case_npz_nan(tmp_path)
    expect.args = validate(Path(expect.names))
    return expect


def case_validate_malicious_checkpoint(tmp_path):
    expect = case_checkpoint_malicious_pickle(tmp_path)
    expect.args = validate(Path(expect.names))
    return expect


def case_validate_onnx_external_data(tmp_path):
    expect = case_onnx_external_data_parent(tmp_path)
    expect.args = validate(Path(expect.names))
    return expect


# --------------------------------------------------------------------------- profiles


def shipped_profile() -> dict:
    return yaml.safe_load((ROOT / "device_profiles" / "raspberry-pi-5-cpu.yaml").read_text())


def write_profile(folder: Path, data: dict, stem: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem or data['id']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def case_profile_unknown_key(tmp_path):
    data = shipped_profile()
    data["thread"] = 4
    path = write_profile(tmp_path / "profiles", data)
    return Expect(["profiles", "validate", str(path)], path, "thread", ("unknown key", "did you mean 'threads'"))


def case_profile_missing_budget(tmp_path):
    data = shipped_profile()
    del data["budgets"]["latency"]
    path = write_profile(tmp_path / "profiles", data)
    return Expect(["profiles", "validate", str(path)], path, "budgets.latency", ("required key is missing",))


def case_profile_unknown_target(tmp_path):
    data = shipped_profile()
    data["target"] = "xnnpak"
    path = write_profile(tmp_path / "profiles", data)
    return Expect(
        ["profiles", "validate", str(path)], path, "target", ("unknown target 'xnnpak'", "did you mean 'xnnpack'")
    )


def case_profile_id_differs_from_file(tmp_path):
    data = shipped_profile()
    path = write_profile(tmp_path / "profiles", data, stem="my-pi")
    return Expect(["profiles", "validate", str(path)], path, "id", ("raspberry-pi-5-cpu", "my-pi"))


def case_profiles_validate_folder(tmp_path):
    folder = tmp_path / "profiles"
    write_profile(folder, shipped_profile())
    data = shipped_profile()
    data["id"] = "zz-board"
    data["budgets"]["latency"]["max_ms"] = -5
    path = write_profile(folder, data)
    return Expect(["profiles", "validate", str(folder)], path, "budgets.latency.max_ms", ())


def case_build_with_broken_profiles_dir(tmp_path):
    recipe = project(tmp_path)
    data = shipped_profile()
    data["id"] = "my-board"
    data["budgets"]["latency"]["max_msec"] = 10
    broken = write_profile(tmp_path / "profiles", data)
    return Expect(
        ["--profiles-dir", str(broken.parent), *build(recipe)],
        broken,
        "budgets.latency.max_msec",
        ("did you mean 'max_ms'",),
        project=recipe.parent,
    )


def case_build_with_missing_profiles_dir(tmp_path):
    recipe = project(tmp_path)
    missing = tmp_path / "no-such-profiles"
    # the folder itself is the problem: no field inside a file to name
    return Expect(
        ["--profiles-dir", str(missing), *build(recipe)], missing, None, ("not found",), project=recipe.parent
    )


# --------------------------------------------------------------------------- output folder


def _symlink_out_case(tmp_path, dangling: bool):
    recipe = project(tmp_path)
    target = tmp_path / "elsewhere"
    link = tmp_path / "release"
    if not dangling:
        target.mkdir()
        (target / "keep.txt").write_text("precious")
    link.symlink_to(target, target_is_directory=True)

    def target_untouched() -> None:
        assert link.is_symlink() and os.readlink(link) == str(target)
        if dangling:
            assert not target.exists()
        else:
            assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
            assert (target / "keep.txt").read_text() == "precious"
        assert sorted(p.name for p in tmp_path.glob(".release.edgex-*")) == []

    return Expect(
        build(recipe, "--out", str(link)),
        link,
        "output",
        ("symlink",),
        project=recipe.parent,
        extra_checks=[target_untouched],
    )


def case_out_symlink_to_folder(tmp_path):
    return _symlink_out_case(tmp_path, dangling=False)


def case_out_dangling_symlink(tmp_path):
    return _symlink_out_case(tmp_path, dangling=True)


# --------------------------------------------------------------------------- the cases


CASES = [
    # recipe
    pytest.param(case_unknown_top_level_key, id="recipe-unknown-top-level-key"),
    pytest.param(case_unknown_top_level_key_optional, id="recipe-unknown-top-level-key-optional"),
    pytest.param(case_unknown_nested_key, id="recipe-unknown-nested-key"),
    pytest.param(case_missing_required_key, id="recipe-missing-model"),
    pytest.param(case_wrong_type, id="recipe-seed-not-int"),
    pytest.param(case_invalid_yaml, id="recipe-invalid-yaml"),
    pytest.param(case_yaml_list, id="recipe-yaml-list"),
    pytest.param(case_recipe_not_found, id="recipe-not-found"),
    pytest.param(case_version_2, id="recipe-version-2"),
    pytest.param(case_compress_step, id="recipe-compress-step"),
    pytest.param(case_unknown_profile, id="recipe-unknown-profile"),
    pytest.param(case_dynamic_axis_out_of_range, id="recipe-dynamic-axis-out-of-range"),
    # data
    pytest.param(case_npz_not_found, id="data-npz-not-found"),
    pytest.param(case_npz_wrong_array_name, id="data-npz-wrong-array-name"),
    pytest.param(case_npz_wrong_shape, id="data-npz-wrong-shape"),
    pytest.param(case_npz_nan, id="data-npz-nan"),
    pytest.param(case_npz_pickled_objects, id="data-npz-pickled-objects"),
    pytest.param(case_top1_without_labels, id="data-top1-without-labels"),
    pytest.param(case_data_callable_raises, id="data-callable-raises"),
    # torch model source
    pytest.param(case_factory_file_missing, id="factory-file-missing"),
    pytest.param(case_factory_attr_missing, id="factory-attr-missing"),
    pytest.param(case_factory_import_raises, id="factory-import-raises"),
    pytest.param(case_factory_call_raises, id="factory-call-raises"),
    pytest.param(case_checkpoint_missing, id="checkpoint-missing"),
    pytest.param(case_checkpoint_malicious_pickle, id="checkpoint-malicious-pickle"),
    pytest.param(case_checkpoint_garbage_safetensors, id="checkpoint-garbage-safetensors"),
    pytest.param(case_checkpoint_wrong_keys, id="checkpoint-wrong-keys"),
    pytest.param(case_checkpoint_wrong_shapes, id="checkpoint-wrong-shapes"),
    # ONNX model source
    pytest.param(case_onnx_missing, id="onnx-missing"),
    pytest.param(case_onnx_truncated, id="onnx-truncated"),
    pytest.param(case_onnx_lfs_pointer, id="onnx-lfs-pointer"),
    pytest.param(case_onnx_external_data_parent, id="onnx-external-data-parent"),
    pytest.param(case_onnx_external_data_absolute, id="onnx-external-data-absolute"),
    pytest.param(case_onnx_external_data_symlink, id="onnx-external-data-symlink"),
    pytest.param(case_onnx_input_names_mismatch, id="onnx-input-names-mismatch"),
    # edgex validate
    pytest.param(case_validate_unknown_key, id="validate-unknown-key"),
    pytest.param(case_validate_npz_nan, id="validate-npz-nan"),
    pytest.param(case_validate_malicious_checkpoint, id="validate-malicious-checkpoint"),
    pytest.param(case_validate_onnx_external_data, id="validate-onnx-external-data"),
    # profiles
    pytest.param(case_profile_unknown_key, id="profile-unknown-key"),
    pytest.param(case_profile_missing_budget, id="profile-missing-budget"),
    pytest.param(case_profile_unknown_target, id="profile-unknown-target"),
    pytest.param(case_profile_id_differs_from_file, id="profile-id-differs-from-file"),
    pytest.param(case_profiles_validate_folder, id="profiles-validate-folder"),
    pytest.param(case_build_with_broken_profiles_dir, id="profiles-dir-broken-profile"),
    pytest.param(case_build_with_missing_profiles_dir, id="profiles-dir-missing"),
    # output
    pytest.param(case_out_symlink_to_folder, id="out-symlink-to-folder"),
    pytest.param(case_out_dangling_symlink, id="out-dangling-symlink"),
]


@pytest.mark.parametrize("make_case", CASES)
def test_bad_input_is_exit_2_with_one_line(make_case, tmp_path):
    expect = make_case(tmp_path)
    proc = run_cli(*expect.args, "--json")
    assert_bad_input(proc, expect, as_json=True)
    assert_nothing_left(expect)


@pytest.mark.parametrize(
    "make_case",
    [
        pytest.param(case_unknown_top_level_key_optional, id="recipe-unknown-top-level-key-optional"),
        pytest.param(case_npz_pickled_objects, id="data-npz-pickled-objects"),
        pytest.param(case_onnx_lfs_pointer, id="onnx-lfs-pointer"),
        pytest.param(case_profile_unknown_target, id="profile-unknown-target"),
    ],
)
def test_without_json_stdout_stays_empty(make_case, tmp_path):
    expect = make_case(tmp_path)
    proc = run_cli(*expect.args)
    assert_bad_input(proc, expect, as_json=False)
    assert_nothing_left(expect)


def test_canaries_have_teeth(tmp_path):
    """The malicious files are real: loading them the unsafe way does run code and write the canary."""
    import torch

    pt = case_checkpoint_malicious_pickle(tmp_path / "pt")
    torch.load(Path(pt.names).parent / "tiny.pt", weights_only=False)
    assert pt.canary.read_text() == "pwned"

    npz = case_npz_pickled_objects(tmp_path / "npz")
    with np.load(Path(npz.names).parent / "calib.npz", allow_pickle=True) as data:
        data["image"]
    assert npz.canary.read_text() == "pwned"


def test_custom_profiles_dir_is_listed(tmp_path):
    folder = tmp_path / "my-profiles"
    folder.mkdir()
    src = ROOT / "device_profiles" / "raspberry-pi-5-cpu.yaml"
    text = src.read_text().replace("id: raspberry-pi-5-cpu", "id: acme-board-cpu")
    assert "id: acme-board-cpu" in text
    (folder / "acme-board-cpu.yaml").write_text(text)

    proc = run_cli("--profiles-dir", str(folder), "profiles", "list", "--json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    rows = json.loads(proc.stdout)
    assert isinstance(rows, list) and all(isinstance(r, dict) for r in rows)
    for row in rows:
        assert {"id", "class", "target", "budgets"} <= set(row), row
    by_id = {r["id"]: r for r in rows}
    assert "acme-board-cpu" in by_id and "raspberry-pi-5-cpu" in by_id
    mine = by_id["acme-board-cpu"]
    assert mine["class"] == "embedded" and mine["target"] == "cpu"
    assert mine["budgets"]["latency"] == {"percentile": 90.0, "max_ms": 50.0}
    assert "Traceback" not in proc.stderr
