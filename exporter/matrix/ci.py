"""CI shapes of a plan beyond GitHub's `fromJson(plan).matrix`: a GitLab child pipeline.

GitLab cannot read a matrix from JSON at run time; a parent job writes this file as an artifact
and triggers it (`trigger: include: artifact:`). One job per cell, tagged with the cell's runner
labels, fetching the plan from the parent's `plan` job; a last stage merges and verifies. Job
settings shared by all cells (image, install, cache) live in the `.edgex-cell` template the
repository keeps (`include: local:`), so the generated file holds only what the plan decides.
"""

from __future__ import annotations

import shlex


def gitlab_child(plan: dict, plan_file: str, template: str) -> dict:
    q = shlex.quote
    jobs: dict[str, dict] = {}
    for inc in plan["matrix"]["include"]:
        cell = inc["cell"]
        jobs[f"cell {cell}"] = {
            "extends": ".edgex-cell",
            "stage": "build",
            "tags": list(inc["runner"]),
            "needs": [{"pipeline": "$PARENT_PIPELINE_ID", "job": "plan"}],
            "variables": {"EDGEX_CELL": cell, "EDGEX_CELL_KEY": inc["key"]},
            "script": [f"edgex build --plan {q(plan_file)} --cell {q(cell)} --out {q('out/' + cell)}"],
            "artifacts": {"when": "always", "paths": [f"out/{cell}/"]},
        }
    if not jobs:  # GitLab refuses a pipeline without jobs; say why nothing is built
        jobs["nothing to build"] = {
            "stage": "build",
            "script": ["echo 'every cell of this shard is cached: nothing to build'"],
        }
    merge = {
        "extends": ".edgex-cell",
        "stage": "merge",
        "when": "always",
        "script": ["edgex merge out/*/manifest.json -o release.json", "edgex verify release.json"],
        "artifacts": {"when": "always", "paths": ["release.json", "out/"]},
    }
    return {"include": [{"local": template}], "stages": ["build", "merge"], **jobs, "merge": merge}
