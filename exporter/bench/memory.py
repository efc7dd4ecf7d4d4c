"""Peak resident memory of a session (load + runs), measured in a child process.

A child keeps one model's allocations from polluting the next measurement and the parent's
own footprint (torch, the build) out of the number. Reported: peak RSS of the child, and the
increase over the child's RSS just before the session was created (the model's own cost).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# The board script's session and /proc reading (it imports only the standard library), so the
# probe measures the session every timing uses.
_PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[5])
import numpy as np
import onnxruntime  # loaded before the baseline is read: the library is not the model's cost
from board_script import open_session, status_mb

path, threads, runs, feed_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with np.load(feed_path, allow_pickle=False) as npz:
    feed = {k: npz[k] for k in npz.files}
before = status_mb("VmRSS") or 0.0
sess = open_session(path, threads)
for _ in range(runs):
    sess.run(None, feed)
peak = status_mb("VmHWM") or 0.0
print(json.dumps({"peak_rss_mb": round(peak, 2), "baseline_rss_mb": round(before, 2),
                  "session_mb": round(max(peak - before, 0.0), 2)}))
"""


def peak_memory(path: Path, threads: int, feed: dict[str, np.ndarray], runs: int = 5, timeout: float = 300.0) -> dict:
    """Run the probe in a fresh interpreter that imports only numpy and onnxruntime, on the benchmark's own query."""
    with tempfile.TemporaryDirectory(prefix="edgex-mem-") as tmp:
        feed_path = Path(tmp) / "feed.npz"
        np.savez(feed_path, **feed)
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, str(path), str(threads), str(runs), str(feed_path), str(HERE)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory probe failed on {path.name}: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
