"""`make audit`: the pinned dependencies (requirements.lock, what the image installs) against a
vulnerability database, with pip-audit, and a verdict that cannot be mistaken.

pip-audit reports "No known vulnerabilities found" and exits 0 even when it could look nothing
up (every package "skipped": the database unreachable, or a mirror without its JSON API). Here
that is a third outcome, said plainly and with its own exit status:

| exit | verdict |
| --- | --- |
| 0 | every pinned package was looked up; no known vulnerability |
| 1 | known vulnerabilities (each listed with its fixed versions) |
| 2 | NOT CHECKED: the database could not be reached for some or all packages |
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLEAN, VULNERABLE, NOT_CHECKED = 0, 1, 2


@dataclass
class Verdict:
    status: int
    lines: list[str] = field(default_factory=list)


def judge(report: dict[str, Any] | None, *, service: str, stderr: str = "", expected: int = 0) -> Verdict:
    """The verdict on pip-audit's JSON report (None: it produced none)."""
    if report is None:
        last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "no output")
        return Verdict(NOT_CHECKED, [f"audit: NOT CHECKED: pip-audit could not reach the {service} vulnerability "
                                     f"database ({last.strip()[:200]}). This is not a clean result."])
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if d.get("skip_reason")]
    vulnerable = [d for d in deps if d.get("vulns")]
    lines = []
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixed = ", ".join(vuln.get("fix_versions") or []) or "no fixed version yet"
            lines.append(f"  {dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixed})")
    checked = len(deps) - len(skipped)
    if vulnerable:
        return Verdict(VULNERABLE, [f"audit: {len(vulnerable)} of {len(deps)} pinned packages have known "
                                    "vulnerabilities:", *lines]
                       + ([f"audit: and {len(skipped)} could not be checked"] if skipped else []))
    if skipped:
        sample = "; ".join(f"{d['name']}: {d['skip_reason']}" for d in skipped[:3])
        return Verdict(NOT_CHECKED, [f"audit: NOT CHECKED: {len(skipped)} of {len(deps)} pinned packages could not "
                                     f"be looked up in the {service} vulnerability database ({sample}). This is not "
                                     "a clean result."])
    if checked < expected // 2:  # markers leave a few out (other Pythons); most must have been looked up
        return Verdict(NOT_CHECKED, [f"audit: NOT CHECKED: pip-audit looked up {checked} of the {expected} pinned "
                                     "packages. This is not a clean result."])
    return Verdict(CLEAN, [f"audit: {checked} pinned packages checked against the {service} vulnerability database: "
                           "no known vulnerabilities"])


def pinned(requirements: Path) -> int:
    """How many packages the lock file pins."""
    return sum(1 for line in requirements.read_text().splitlines() if "==" in line and not line.startswith((" ", "#")))


def audit(requirements: Path, *, service: str = "pypi", timeout_s: float = 600.0) -> Verdict:
    command = [sys.executable, "-m", "pip_audit", "--requirement", str(requirements), "--require-hashes",
               "--disable-pip", "--vulnerability-service", service, "--format", "json", "--progress-spinner", "off"]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return judge(None, service=service, stderr=f"no answer within {timeout_s:.0f} s")
    try:
        report = json.loads(run.stdout) if run.stdout.strip() else None
    except json.JSONDecodeError:
        report = None
    return judge(report, service=service, stderr=run.stderr, expected=pinned(requirements))
