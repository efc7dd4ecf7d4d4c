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

_PROBE = r"""
import json, sys
import numpy as np
import onnxruntime as ort

def status_mb(key):
    # VmHWM is this process's own high-water mark; ru_maxrss would carry the parent's from before exec.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0

path, threads, runs, feed_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with np.load(feed_path, allow_pickle=False) as npz:
    feed = {k: npz[k] for k in npz.files}
before = status_mb("VmRSS")
so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
so.log_severity_level = 3
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
for _ in range(runs):
    sess.run(None, feed)
peak = status_mb("VmHWM")
print(json.dumps({"peak_rss_mb": round(peak, 2), "baseline_rss_mb": round(before, 2),
                  "session_mb": round(max(peak - before, 0.0), 2)}))
"""


def peak_memory(path: Path, threads: int, feed: dict[str, np.ndarray], runs: int = 5, timeout: float = 300.0) -> dict:
    """Run the probe in a fresh interpreter that imports only numpy and onnxruntime, on the benchmark's own query."""
    with tempfile.TemporaryDirectory(prefix="edgex-mem-") as tmp:
        feed_path = Path(tmp) / "feed.npz"
        np.savez(feed_path, **feed)
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, str(path), str(threads), str(runs), str(feed_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory probe failed on {path.name}: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
