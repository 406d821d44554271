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
    # R16-R18: each of the four visits nobody marked arrived has its late path planned at its start
    # (the clock stops there and the state sweep runs) and its follow-up sent five minutes after it
    late = re.findall(r"Wed 02 (\d\d:\d\d)  message\.sent +kind=late,", done.stdout)
    assert sorted(late) == ["09:35", "11:05", "14:05", "18:05"], done.stdout[-3000:]
    assert "Wed 02 11:00  message.planned        kind=late," in done.stdout and "slot.released" in done.stdout
