"""Integration ring: real PostgreSQL, Redis, RabbitMQ, SMTP on loopback, processes as subprocesses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from notifier.devtools import ProcessGroup


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def procs(tmp_path: Path, request) -> Iterator[ProcessGroup]:
    """Processes started by the test; stopped afterwards, their logs shown if the test failed."""
    group: ProcessGroup | None = None

    def start(env: dict[str, str]) -> ProcessGroup:
        nonlocal group
        group = ProcessGroup(tmp_path, env)
        return group

    yield start  # type: ignore[misc]
    if group is not None:
        group.stop()
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            for log in sorted(tmp_path.glob("*.log")):
                print(f"----- {log.name}\n{log.read_text(errors='replace')[-4000:]}")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)
