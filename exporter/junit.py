"""JUnit XML for CI: one testsuite per profile, one testcase per budget of what ships.

A missed budget is a <failure> with value, limit and basis; a budget that could not be evaluated
is <skipped>, so CI dashboards show it as neither passed nor failed.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path


def _case(suite: ET.Element, classname: str, verdict: dict) -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=verdict["budget"], time="0")
    detail = f"value {verdict['value']} limit {verdict['limit']} ({verdict['unit']}; {verdict['basis']})"
    if verdict["ok"] is False:
        ET.SubElement(case, "failure", message=f"{verdict['budget']} missed: {detail}", type="BudgetMissed")
    elif verdict["ok"] is None:
        ET.SubElement(case, "skipped", message=f"not evaluated: {verdict['basis']}")


def write_junit(path: Path, suites: list[tuple[str, list[dict]]]) -> Path:
    """suites: (name, verdicts) pairs, e.g. one per profile."""
    root = ET.Element("testsuites", name="edgex")
    for name, verdicts in suites:
        failures = sum(v["ok"] is False for v in verdicts)
        skipped = sum(v["ok"] is None for v in verdicts)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=name,
            tests=str(len(verdicts)),
            failures=str(failures),
            skipped=str(skipped),
            errors="0",
        )
        for verdict in verdicts:
            _case(suite, name, verdict)
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


def from_manifest(manifest: dict) -> list[tuple[str, list[dict]]]:
    return [(f"{p['id']}/{p['deliverable']}", p["verdicts"]) for p in manifest["profiles"]]
