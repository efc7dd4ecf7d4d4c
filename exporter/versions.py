"""Tool versions recorded in every manifest: a rebuild is only comparable with the same ones."""

from __future__ import annotations

import platform
from importlib import metadata


def tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "edgex",
        "torch",
        "onnx",
        "onnxruntime",
        "onnxruntime-qnn",  # QNN's HTP backend (edgex[qnn]): its QAIRT version is in each QNN profile's record
        "onnxscript",
        "numpy",
        "scikit-learn",
        "transformers",
        "optimum",
        "optimum-onnx",
        "sentence-transformers",
        "tokenizers",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def host_facts() -> dict[str, object]:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "system": platform.system()}


def source_date_epoch() -> str | None:
    """SOURCE_DATE_EPOCH (reproducible-builds.org): unset, or a whole number of seconds; anything else is refused."""
    import os

    from exporter.errors import UsageError

    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise UsageError(
            f"'{raw[:40]}' is not a whole number of seconds since 1970",
            path="environment",
            field="SOURCE_DATE_EPOCH",
            fix="set it to e.g. $(git log -1 --format=%ct), or unset it",
        )
    return raw
