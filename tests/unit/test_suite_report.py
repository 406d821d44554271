"""`make test` ends by naming what its tests needed and did not find, and what to install or start
for it, instead of a bare skip count (issue 21)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.conftest import ROOT


def test_a_missing_service_is_named_with_what_to_start(tmp_path):
    with socket.socket() as probe:  # nobody listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "NOTIFIER_REQUIRE_SERVICES"}
    env["NOTIFIER_TEST_REDIS"] = f"redis://127.0.0.1:{port}/0"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
                           str(ROOT / "tests" / "integration" / "test_ratelimit_redis.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "what these tests needed and did not find" in line)
    assert lines[start + 1] == "Redis: 1 tests (tests/integration/test_ratelimit_redis.py)"
    assert lines[start + 2].strip().startswith("apt-get install redis-server and start it")
    assert lines[-1].strip().startswith("1 skipped"), lines[-1]
