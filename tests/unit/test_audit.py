"""`make audit` (issue 16): the pinned dependencies against a vulnerability database, and a
verdict that says plainly when the database could not be reached instead of reporting clean."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from notifier.audit import CLEAN, NOT_CHECKED, VULNERABLE, judge

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"


def dep(name: str, version: str, **more) -> dict:
    return {"name": name, "version": version, **more}


def test_a_report_of_skipped_packages_is_not_checked_never_clean():
    report = {"dependencies": [dep("jinja2", "3.1.6", skip_reason="Dependency not found on PyPI"),
                               dep("urllib3", "2.5.0", vulns=[])]}
    verdict = judge(report, service="pypi")
    assert verdict.status == NOT_CHECKED and "NOT CHECKED: 1 of 2" in verdict.lines[0]
    assert judge({"dependencies": []}, service="pypi", expected=60).status == NOT_CHECKED
    assert judge(None, service="osv", stderr="ConnectionError: no route").lines[0].startswith(
        "audit: NOT CHECKED: pip-audit could not reach the osv vulnerability database (ConnectionError")


def test_vulnerabilities_are_listed_with_their_fixes_and_a_full_lookup_is_clean():
    report = {"dependencies": [dep("jinja2", "3.1.5", vulns=[{"id": "GHSA-cpwx-vrp4-4pq7", "fix_versions": ["3.1.6"]}]),
                               dep("urllib3", "2.5.0", vulns=[])]}
    verdict = judge(report, service="pypi")
    assert verdict.status == VULNERABLE and "jinja2 3.1.5: GHSA-cpwx-vrp4-4pq7 (fixed in 3.1.6)" in verdict.lines[1]
    clean = judge({"dependencies": [dep("urllib3", "2.5.0", vulns=[])]}, service="pypi", expected=1)
    assert clean.status == CLEAN and "no known vulnerabilities" in clean.lines[0]


def test_make_audit_says_not_checked_when_its_database_cannot_be_reached(tmp_path):
    """pip-audit itself would print "No known vulnerabilities found" and exit 0 here."""
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "NO_PROXY": "", "no_proxy": "", "PIP_AUDIT_CACHE_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "notifier.cli", "dev", "audit", "--requirements", str(LOCK),
                          "--service", "osv"], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == NOT_CHECKED, run.stderr
    assert "NOT CHECKED" in run.stderr and "not a clean result" in run.stderr
    assert "no known vulnerabilities" not in (run.stdout + run.stderr).lower()


# --- the lock file ----------------------------------------------------------------------------------

def pins() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of requirements.lock."""
    out, name = {}, None
    for line in LOCK.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)", line):
            name = match.group(1).lower().replace("_", "-")
            out[name] = (match.group(2), 0)
        elif name and line.strip().startswith("--hash=sha256:"):
            out[name] = (out[name][0], out[name][1] + 1)
    return out


def floors() -> dict[str, tuple[int, ...]]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {}
    for spec in [*project["dependencies"], *project["optional-dependencies"]["flower"]]:
        match = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^]]*\])?>=([0-9.]+)", spec)
        assert match, f"{spec}: every dependency has a floor"
        out[match.group(1).lower()] = tuple(int(p) for p in match.group(2).split("."))
    return out


def version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text.split("post")[0])[:4])


def test_the_lock_pins_every_runtime_dependency_with_hashes_above_its_floor():
    locked, wanted = pins(), floors()
    missing = set(wanted) - set(locked)
    assert not missing, f"make lock: {sorted(missing)} are not pinned"
    for name, (pinned_version, hashes) in locked.items():
        assert hashes >= 1, f"{name} has no hash"
        if name in wanted:
            assert version(pinned_version) >= wanted[name], f"{name} {pinned_version} is below its floor"


@pytest.mark.parametrize(("name", "floor"), [
    ("jinja2", "3.1.6"), ("urllib3", "2.5"), ("requests", "2.32.4"), ("aiosmtpd", "1.4.6"), ("starlette", "0.47.2"),
    ("python-multipart", "0.0.18"), ("h11", "0.16"), ("tornado", "6.5"), ("orjson", "3.9.15")])
def test_floors_are_above_the_known_advisories(name, floor):
    assert floors()[name] >= version(floor)


def test_the_image_installs_the_lock_with_hashes_checked():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"pip install [^\n]*--require-hashes[^\n]*-r [^\n]*requirements\.lock", dockerfile)
    assert "--only-binary=:all:" in dockerfile  # no build of an unhashed wheel in the image
    assert re.search(r"pip install [^\n]*--no-deps[^\n]*notifier", dockerfile)  # the project alone, on top
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "requirements.lock" not in ignored and "*.lock" not in ignored  # in the build context
