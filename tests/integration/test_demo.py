"""Issue 2, acceptance 1: the demo runs the real pipeline on the embedded default and says so."""

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_demo_runs_the_pipeline_end_to_end(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "NOTIFIER_DEMO_DIR": str(tmp_path / "demo"), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "notifier.cli", "demo"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"demo: (\d+) events, (\d+) messages sent, (\d+) failed", last)
    assert match, last
    events, sent, failed = map(int, match.groups())
    assert events >= 5 and sent >= 1 and failed == 0
    assert "Dienstag, 1. Dezember 2026 um 10:00 Uhr" in done.stdout  # German, in Berlin time
    assert "message.withdrawn" in done.stdout and "dead letter:" in done.stdout
