"""`edgex verify OUT`: prove a release folder holds exactly the bytes its manifest lists.

Every file is re-hashed (models, packages, tokenizer, reference bundle, report); a changed,
missing or unlisted file fails the check, as does a variant whose recorded artifact digest
disagrees with the file list, or a manifest whose content no longer matches its own digest
(`content_sha256`: an edited field, a verdict flipped to true). A manifest written before the
digest existed is checked file by file and reported as `digest: absent`: its fields cannot be
checked without a signature. A merged release.json (`edgex merge`) is checked cell by cell.
"""

from __future__ import annotations

import json
from pathlib import Path

from exporter.digest import sha256_file
from exporter.errors import UsageError
from exporter.manifest_schema import MANIFEST, Manifest, read_manifest

RELEASE_KIND = "edgex-release"  # the `kind` of the release.json `edgex merge` writes


def _digest_problem(manifest: Manifest) -> tuple[str, list[dict]]:
    if manifest.content_sha256 is None:
        return "absent", []
    if manifest.digest() == manifest.content_sha256:
        return "valid", []
    problem = "content differs from its own digest (content_sha256): a field was edited after the build"
    return "invalid", [{"path": MANIFEST, "problem": problem}]


def verify(folder: Path, public_key: Path | None = None, signature: Path | None = None) -> dict:
    """public_key: also check OUT/manifest.sig (or `signature`) with exporter.signing. A merged
    release.json (edgex merge) is checked cell by cell."""
    if folder.is_file() and folder.name != MANIFEST:
        return verify_release(folder)
    folder = folder.parent if folder.is_file() else folder  # OUT/manifest.json names OUT
    manifest = read_manifest(folder)
    listed = {f.path: f for f in manifest.files}
    root = folder.resolve()
    digest, problems = _digest_problem(manifest)
    for rel, entry in sorted(listed.items()):
        path = (folder / rel).resolve()
        if not path.is_relative_to(root):
            problems.append({"path": rel, "problem": "listed path leaves the release folder"})
        elif not path.is_file():
            problems.append({"path": rel, "problem": "missing"})
        elif path.stat().st_size != entry.bytes or sha256_file(path) != entry.sha256:
            problems.append({"path": rel, "problem": "content differs from the manifest"})
    from exporter.signing import SIGNATURE

    unlisted = {MANIFEST, SIGNATURE}
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - unlisted
    problems += [{"path": rel, "problem": "not listed in the manifest"} for rel in sorted(on_disk - set(listed))]
    for prof in manifest.profiles:
        for v in prof.variants:
            art = v.artifact
            if art.path not in listed or listed[art.path].sha256 != art.sha256:
                problems.append(
                    {"path": art.path, "problem": f"variant '{prof.id}/{v.name}' records a different digest"}
                )
    signed = None
    if public_key is not None:
        from exporter.signing import verify_signature

        problem = verify_signature(folder, public_key, signature)
        signed = not problem
        if problem:
            problems.insert(0, problem)
    result = {"folder": str(folder), "files": len(listed), "ok": not problems, "problems": problems, "digest": digest}
    if signed is not None:
        result["signature"] = "valid" if signed else "invalid"
    return result


def verify_release(path: Path) -> dict:
    """`edgex verify release.json`: each cell's manifest digest, then each cell as a single build."""
    try:
        release = json.loads(Path(path).read_text(encoding="utf-8"))
        cells = release["cells"] if release.get("kind") == RELEASE_KIND else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        cells = None
    if cells is None:
        raise UsageError(
            "not an edgex release.json",
            path=path,
            field="kind",
            fix="give a folder or the release.json `edgex merge` wrote",
        )
    base = Path(path).parent
    problems: list[dict] = []
    listed = {f["path"]: f for f in release.get("files", [])}
    seen: set[str] = set()
    for cell in cells:
        manifest_path = base / cell["manifest"]["path"]
        if not manifest_path.is_file():
            problems.append({"path": cell["manifest"]["path"], "problem": "missing"})
            continue
        if sha256_file(manifest_path) != cell["manifest"]["sha256"]:
            problems.append({"path": cell["manifest"]["path"], "problem": "content differs from release.json"})
            continue
        result = verify(manifest_path.parent)
        problems += [{"path": f"{cell['folder']}/{p['path']}", "problem": p["problem"]} for p in result["problems"]]
        for f in read_manifest(manifest_path).files:
            rel = f"{cell['folder']}/{f.path}"
            seen.add(rel)
            if listed.get(rel, {}).get("sha256") != f.sha256:
                problems.append({"path": rel, "problem": "release.json records a different digest"})
    problems += [{"path": p, "problem": "listed in release.json but in no cell"} for p in sorted(set(listed) - seen)]
    return {"folder": str(path), "files": len(listed), "ok": not problems, "problems": problems}
