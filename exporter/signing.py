"""Optional signing of a release's manifest with the OpenSSF `model_signing` library (key-based, offline).

The manifest lists every file's sha256, so a valid signature over `manifest.json` plus a clean
`edgex verify` proves every byte of the release. The signature is a Sigstore bundle written to
`OUT/manifest.sig` (not listed in the manifest it signs). Needs the `sign` extra:
`pip install 'edgex[sign]'` (model-signing, and pyOpenSSL which model-signing imports without
declaring it).
"""

from __future__ import annotations

from pathlib import Path

from exporter.errors import UsageError
from exporter.manifest_schema import MANIFEST
from exporter.staging import atomic_file

SIGNATURE = "manifest.sig"


def _library(field: str):
    try:
        from model_signing import signing, verifying
    except ImportError as exc:
        raise UsageError(
            f"signing needs the model-signing library ({exc.name} missing)",
            path="edgex",
            field=field,
            fix="pip install 'edgex[sign]'",
        ) from None
    return signing, verifying


def _manifest(folder: Path) -> Path:
    path = folder / MANIFEST
    if not path.is_file():
        raise UsageError(
            "no manifest.json in this folder",
            path=folder,
            field="(folder)",
            fix="give the output folder of an edgex build",
        )
    return path


def sign_release(folder: Path, private_key: Path, password: str | None = None) -> Path:
    """Sign OUT/manifest.json with an elliptic-curve private key (PEM); the signature replaces any old one atomically."""
    signing, _ = _library("--key")
    manifest = _manifest(folder)
    if not private_key.is_file():
        raise UsageError("private key not found", path=private_key, field="--key", fix="give a PEM private key file")
    with atomic_file(folder / SIGNATURE) as tmp:
        try:
            signing.Config().use_elliptic_key_signer(private_key=private_key, password=password).sign(manifest, tmp)
        except (ValueError, TypeError) as exc:
            raise UsageError(
                f"cannot sign with this key ({' '.join(str(exc).split())[:200]})",
                path=private_key,
                field="--key",
                fix="give an unencrypted EC private key in PEM (or its password in the environment)",
            ) from None
    return folder / SIGNATURE


def verify_signature(folder: Path, public_key: Path, signature: Path | None = None) -> dict:
    """Check the signature over OUT/manifest.json; a problem entry (never an exception) when it does not hold."""
    _, verifying = _library("--public-key")
    manifest = _manifest(folder)
    signature = signature or folder / SIGNATURE
    if not public_key.is_file():
        raise UsageError("public key not found", path=public_key, field="--public-key", fix="give a PEM public key")
    if not signature.is_file():
        return {"path": signature.name, "problem": "no signature (sign the release with `edgex sign`)"}
    try:
        verifying.Config().use_elliptic_key_verifier(public_key=public_key).verify(manifest, signature)
    except Exception as exc:  # the library raises ValueError and others for every kind of mismatch
        return {"path": signature.name, "problem": f"signature does not verify ({type(exc).__name__})"}
    return {}
