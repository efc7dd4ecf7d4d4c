"""Class 5, release integrity: provenance in every ONNX file, one flipped byte caught anywhere, and a
replayed build byte-identical to the original except the documented timing fields."""

from __future__ import annotations

import json
import shutil

import onnx

from exporter.errors import UsageError
from exporter.manifest import DERIVED_FIELDS, TIMING_FIELDS, write_manifest
from exporter.verify import verify

from .conftest import SDE, edgex


def test_every_onnx_file_carries_its_provenance(release):
    manifest = release["manifest"]
    assert manifest["source_date_epoch"] == SDE
    assert manifest["tool_versions"]["onnxruntime"] and manifest["data"]["calibration"]["sha256"]
    for prof in manifest["profiles"]:
        for v in prof["variants"]:
            props = {p.key: p.value for p in onnx.load(str(release["out"] / v["artifact"]["path"])).metadata_props}
            assert props["edgex.source_date_epoch"] == SDE
            assert props["edgex.seed"] == "0" and props["edgex.recipe_sha256"] == manifest["recipe"]["sha256"]
            assert props["edgex.execution_provider"] == "CPUExecutionProvider" and props["edgex.opset"]
            assert props["edgex.onnxruntime"] == manifest["tool_versions"]["onnxruntime"]
            assert v["weights_check"]["non_finite"] == [] and v["weights_check"]["zero_scales"] == []
        int8 = next(v for v in prof["variants"] if v["name"] == "int8")
        props = {p.key: p.value for p in onnx.load(str(release["out"] / int8["artifact"]["path"])).metadata_props}
        assert props["edgex.calibration_sha256"] == int8["produced_by"]["calibration_sha256"]


def test_one_flipped_byte_in_any_file_is_caught(release, tmp_path):
    copy = tmp_path / "release"
    shutil.copytree(release["out"], copy)
    listed = [f["path"] for f in release["manifest"]["files"]] + ["manifest.json"]
    for rel in listed:
        path = copy / rel
        original = path.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 3] ^= 0x40
        path.write_bytes(bytes(flipped))
        try:
            result = verify(copy)
        except UsageError as exc:  # a flipped manifest may no longer parse: that is a refusal too
            result = None
            assert rel == "manifest.json" and "manifest.json" in str(exc), f"{rel}: {exc}"
        finally:
            path.write_bytes(original)
        # Outside the try: a missed change must fail here, not be caught as a refusal.
        if result is not None:
            assert not result["ok"], rel
            assert result["problems"][0]["path"] == rel, result["problems"]
    assert verify(copy)["ok"]


def _strip(value, keys: set[str]):
    if isinstance(value, dict):
        return {k: _strip(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_strip(v, keys) for v in value]
    return value


def _differences(a, b, where: str = "") -> list[str]:
    """The paths where two manifests differ, so a failure names the field rather than a truncated dump."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{where}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def test_replayed_build_is_byte_identical_except_timing_fields(release, tmp_path):
    out = tmp_path / "again"
    proc = edgex(
        "build",
        str(release["recipe"]),
        "--out",
        str(out),
        "--replay",
        str(release["out"] / "manifest.json"),
        "--json",
        env={"SOURCE_DATE_EPOCH": SDE},
    )
    assert proc.returncode in (0, 1), proc.stderr
    again = json.loads(proc.stdout)
    first = release["manifest"]
    timing_files = set(TIMING_FIELDS["files"])
    a = {f["path"]: f["sha256"] for f in first["files"] if f["path"] not in timing_files}
    b = {f["path"]: f["sha256"] for f in again["files"] if f["path"] not in timing_files}
    assert a == b  # models, runtime.json, reference bundle: the same bytes
    keys = set(TIMING_FIELDS["keys"]) | set(DERIVED_FIELDS) | {"files"}  # the digest covers timings
    differences = _differences(_strip(first, keys), _strip(again, keys))
    assert differences == [], "\n".join(differences)
    for prof in again["profiles"]:
        assert prof["decisions"]["by"] == "replayed"
        old = next(p for p in first["profiles"] if p["id"] == prof["id"])
        assert prof["deliverable"] == old["deliverable"]
        int8 = next(v for v in prof["variants"] if v["name"] == "int8")
        assert int8["produced_by"]["speed_guard"]["replayed"] is True


def _keypair(folder):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / "release.pem", folder / "release.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def test_signed_manifest_verifies_and_any_change_breaks_it(release, tmp_path):
    from exporter.signing import sign_release

    copy = tmp_path / "release"
    shutil.copytree(release["out"], copy)
    private, public = _keypair(tmp_path)
    proc = edgex("sign", str(copy), "--key", str(private))
    assert proc.returncode == 0, proc.stderr
    proc = edgex("verify", str(copy), "--public-key", str(public), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["signature"] == "valid"

    # a manifest edited to match a swapped model, its own digest recomputed by a deliberate editor:
    # hashes and digest agree, the signature does not
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["seed"] = 1
    write_manifest(copy, manifest)
    result = verify(copy, public)
    assert not result["ok"] and result["signature"] == "invalid" and result["digest"] == "valid"

    # another key's signature does not verify either
    sign_release(copy, private)
    _, other_public = _keypair(tmp_path / "x" if (tmp_path / "x").mkdir() is None else tmp_path)
    assert verify(copy, public)["ok"] and verify(copy, other_public)["signature"] == "invalid"
