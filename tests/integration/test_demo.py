"""Issue 2, acceptance 1: the demo runs the real pipeline on the embedded default and says so."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """One run of `notifier demo`, shared by the tests below."""
    home = tmp_path_factory.mktemp("demo")
    env = {"PATH": "/usr/bin:/bin", "NOTIFIER_DEMO_DIR": str(home / "demo"), "HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "notifier.cli", "demo"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, home / "demo"


def test_demo_runs_the_pipeline_end_to_end(demo_run):
    done, _ = demo_run
    last = done.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"demo: (\d+) events, (\d+) messages sent, (\d+) failed", last)
    assert match, last
    events, sent, failed = map(int, match.groups())
    assert events >= 5 and sent >= 1 and failed == 0
    assert "Dienstag, 1. Dezember 2026 um 10:00 Uhr" in done.stdout  # German, in Berlin time
    assert "message.withdrawn" in done.stdout and "dead letter:" in done.stdout
    # R16-R18: each of the four visits nobody marked arrived has its late path planned at its start
    # (the clock stops there and the state sweep runs) and its follow-up sent five minutes after it
    late = re.findall(r"Wed 2026-12-02 (\d\d:\d\d)  message\.sent +kind=late,", done.stdout)
    assert sorted(late) == ["09:35", "11:05", "14:05", "18:05"], done.stdout[-3000:]
    assert "Wed 2026-12-02 11:00  message.planned        kind=late," in done.stdout and "slot.released" in done.stdout


def test_demo_says_what_it_does_in_local_time_and_keeps_its_folder(demo_run):
    """Issue 21: progress while the simulated day runs, local times in the timelines' details too,
    and the folder it names at the start still there at the end, with the mails in it."""
    done, folder = demo_run
    lines = done.stdout.splitlines()
    assert str(folder) in lines[0]
    progress = [line for line in lines if re.fullmatch(r"  (Tue|Wed) \d\d:\d\d  (published|sent) .*", line)]
    assert len(progress) >= 10 and "  Tue 08:00  sent 8: 8 email" in progress
    assert "booking.rescheduled    from=Tue 2026-12-01 17:00, to=Wed 2026-12-02 11:00" in done.stdout
    assert "+00:00" not in done.stdout
    assert (folder / "notifier.db").is_file() and (folder / "worker.log").is_file()
    assert len(list((folder / "mails").glob("*.eml"))) == json.loads(lines[-4])["mails_received"] > 0
