"""The manifest's one schema: written and read through it, its own digest checked by `edgex verify`,
and one one-line error for a malformed manifest in every command that reads one."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import run_cli

from exporter.errors import EXIT_INTERNAL
from exporter.manifest import InvalidManifest, write_manifest
from exporter.manifest_schema import DIGEST_FIELD, content_digest, manifest_json_schema, read_manifest


def _dump(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


@pytest.fixture()
def release(tiny_build, tmp_path):
    copy = tmp_path / "release"
    shutil.copytree(tiny_build["out"], copy)
    return copy


def _edit(release, change) -> None:
    """Edit the manifest as a person would: change a field, write it back in the same layout."""
    data = json.loads((release / "manifest.json").read_text())
    change(data)
    (release / "manifest.json").write_text(_dump(data))


def _one_line_error(proc, *says: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and lines[-1].startswith("edgex: error:"), proc.stderr
    assert [line for line in lines if line.startswith("edgex: error:")] == [lines[-1]], proc.stderr
    for text in says:
        assert text in lines[-1], (text, lines[-1])
    return lines[-1]


def test_a_real_manifest_round_trips_byte_for_byte(tiny_build):
    path = tiny_build["out"] / "manifest.json"
    raw = path.read_text()
    manifest = read_manifest(tiny_build["out"])
    assert _dump(manifest.to_dict()) == raw  # nothing coerced, nothing added, nothing dropped
    data = json.loads(raw)
    assert data[DIGEST_FIELD] == content_digest(data) == manifest.digest()
    assert data == tiny_build["manifest"]  # `build --json` prints what it wrote, digest included


def test_json_schema_is_valid_and_accepts_a_real_manifest(tiny_build):
    jsonschema = pytest.importorskip("jsonschema")
    schema = manifest_json_schema()
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    assert "schema_version" in schema["required"] and schema["properties"]["schema_version"]["const"] == 1
    data = json.loads((tiny_build["out"] / "manifest.json").read_text())
    validator(schema).validate(data)
    del data["profiles"][0]["variants"][0]["latency_ms"]["p99.9"]
    assert not validator(schema).is_valid(data)


def test_an_edited_verdict_in_an_unsigned_manifest_is_caught(release):
    assert json.loads(run_cli("verify", str(release), "--json").stdout)["digest"] == "valid"

    def flip(data):
        verdict = data["profiles"][0]["verdicts"][0]
        verdict["ok"] = not verdict["ok"]

    _edit(release, flip)
    proc = run_cli("verify", str(release), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["digest"] == "invalid" and result["problems"][0]["path"] == "manifest.json"
    assert "content_sha256" in result["problems"][0]["problem"]
    text = run_cli("verify", str(release))
    assert text.returncode == 1 and "manifest.json" in text.stdout + text.stderr


def test_a_manifest_without_a_digest_still_verifies_file_by_file(release):
    """Manifests written before `content_sha256` existed: files are checked, the fields cannot be."""
    _edit(release, lambda data: data.pop(DIGEST_FIELD))
    result = json.loads(run_cli("verify", str(release), "--json").stdout)
    assert result["ok"] and result["digest"] == "absent"
    (release / "raspberry-pi-5-cpu" / "runtime.json").write_text("{}")
    assert not json.loads(run_cli("verify", str(release), "--json").stdout)["ok"]


def _renamed(data):
    data["profiles"][0]["variants"][0]["latency"] = data["profiles"][0]["variants"][0].pop("latency_ms")


def _missing(data):
    del data["files"]


@pytest.mark.parametrize(
    "change, field",
    [(_renamed, "profiles.0.variants.0.latency"), (_missing, "files")],
    ids=["renamed", "missing"],
)
def test_a_malformed_manifest_is_one_line_exit_2_in_every_reader(release, tiny_build, tmp_path, change, field):
    _edit(release, change)
    manifest = release / "manifest.json"
    says = (str(manifest), field, "not an edgex manifest")
    _one_line_error(run_cli("verify", str(release)), *says)
    _one_line_error(run_cli("compare", str(tiny_build["out"]), str(release)), *says)
    _one_line_error(run_cli("merge", str(manifest), "-o", str(tmp_path / "release.json")), *says)
    assert not (tmp_path / "release.json").exists()
    replay = run_cli("build", str(tiny_build["recipe"]), "--out", str(tmp_path / "again"), "--replay", str(manifest))
    _one_line_error(replay, *says)


def test_replaying_another_recipes_manifest_is_refused(release, tiny_build, tmp_path):
    _edit(release, lambda data: data["recipe"].update(sha256="0" * 64))
    proc = run_cli("build", str(tiny_build["recipe"]), "--out", str(tmp_path / "again"), "--replay", str(release))
    _one_line_error(proc, "recipe.sha256", "different recipe")


def test_a_newer_schema_version_is_refused_by_name(release):
    _edit(release, lambda data: data.update(schema_version=2))
    _one_line_error(run_cli("verify", str(release)), "schema_version 2", "manifest.json")


def test_a_build_never_writes_a_manifest_its_schema_refuses(tiny_build, tmp_path):
    data = json.loads((tiny_build["out"] / "manifest.json").read_text())
    data["profiles"][0]["variants"][0]["latency_ms"]["p50"] = "fast"
    with pytest.raises(InvalidManifest) as err:
        write_manifest(tmp_path, data)
    assert err.value.exit_code == EXIT_INTERNAL and "profiles.0.variants.0.latency_ms.p50" in str(err.value)
    assert not (tmp_path / "manifest.json").exists()


def test_written_manifest_carries_the_digest_of_what_it_holds(tiny_build, tmp_path):
    data = json.loads((tiny_build["out"] / "manifest.json").read_text())
    data["seed"] = 7  # write_manifest seals what it is given: the digest follows the content
    write_manifest(tmp_path, data)
    written = json.loads((tmp_path / "manifest.json").read_text())
    assert written["seed"] == 7 and written[DIGEST_FIELD] == content_digest(written) != data[DIGEST_FIELD]


def test_verify_accepts_the_manifest_file_itself(release):
    """Bug found on the way: `edgex verify OUT/manifest.json` was an internal error (exit 3)."""
    proc = run_cli("verify", str(release / "manifest.json"), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["ok"]
