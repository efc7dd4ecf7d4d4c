"""`edgex verify OUT`: prove a release folder holds exactly the bytes its manifest lists.

Every file is re-hashed (models, packages, tokenizer, reference bundle, report); a changed,
missing or unlisted file fails the check, as does a variant whose recorded artifact digest
disagrees with the file list.
"""

from __future__ import annotations

import json
from pathlib import Path

from exporter.digest import sha256_file
from exporter.errors import UsageError
from exporter.manifest import MANIFEST


def verify(folder: Path, public_key: Path | None = None, signature: Path | None = None) -> dict:
    """public_key: also check OUT/manifest.sig (or `signature`) with exporter.signing. A merged
    release.json (edgex merge) is checked cell by cell."""
    if folder.is_file() and folder.name != MANIFEST:
        from exporter.matrix.merge import verify_release

        return verify_release(folder)
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        listed = {f["path"]: f for f in manifest["files"]}
    except FileNotFoundError:
        raise UsageError(
            "no manifest.json in this folder",
            path=folder,
            field="(folder)",
            fix="give the output folder of an edgex build",
        ) from None
    except (ValueError, KeyError, TypeError):
        raise UsageError(
            "manifest.json is not an edgex manifest",
            path=manifest_path,
            field="files",
            fix="give the output folder of an edgex build",
        ) from None
    root = folder.resolve()
    problems: list[dict] = []
    for rel, entry in sorted(listed.items()):
        path = (folder / rel).resolve()
        if not path.is_relative_to(root):
            problems.append({"path": rel, "problem": "listed path leaves the release folder"})
        elif not path.is_file():
            problems.append({"path": rel, "problem": "missing"})
        elif path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            problems.append({"path": rel, "problem": "content differs from the manifest"})
    from exporter.signing import SIGNATURE

    unlisted = {MANIFEST, SIGNATURE}
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - unlisted
    problems += [{"path": rel, "problem": "not listed in the manifest"} for rel in sorted(on_disk - set(listed))]
    for prof in manifest.get("profiles", []):
        for v in prof.get("variants", []):
            art = v["artifact"]
            if listed.get(art["path"], {}).get("sha256") != art["sha256"]:
                problems.append(
                    {"path": art["path"], "problem": f"variant '{prof['id']}/{v['name']}' records a different digest"}
                )
    signed = None
    if public_key is not None:
        from exporter.signing import verify_signature

        problem = verify_signature(folder, public_key, signature)
        signed = not problem
        if problem:
            problems.insert(0, problem)
    result = {"folder": str(folder), "files": len(listed), "ok": not problems, "problems": problems}
    if signed is not None:
        result["signature"] = "valid" if signed else "invalid"
    return result
