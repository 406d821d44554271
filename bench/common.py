"""What every benchmark shares: throw-away databases and key prefixes, the machine, the record."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "bench"
PG_ADMIN = os.environ.get("NOTIFIER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("NOTIFIER_TEST_REDIS", "redis://127.0.0.1:6379/0")


@contextmanager
def scratch_database() -> Iterator[str]:
    """A PostgreSQL database of the benchmark's own (SQLAlchemy URL), dropped afterwards."""
    import psycopg

    name = f"notifier_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def redis_prefix() -> Iterator[str]:
    import redis

    prefix = f"nb{uuid.uuid4().hex[:8]}"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()


@contextmanager
def provider_process(*, latency_s: float) -> Iterator[Any]:
    """The loopback Twilio/Meta provider as a process of its own (notifier.fake_providers), so
    its CPU is not the benchmark's; `.received()` asks it what it received."""
    import requests

    proc = subprocess.Popen([sys.executable, "-m", "notifier.fake_providers", "--latency-s", str(latency_s)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not url:
            raise RuntimeError("the fake provider process did not start")

        def received() -> list[dict[str, Any]]:
            return requests.get(f"{url}/_fake/received", timeout=60).json()["received"]

        yield SimpleNamespace(url=url, account_sid="ACtest", auth_token="secret-token", received=received)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_until(condition: Callable[[], bool], *, timeout_s: float, poll_s: float = 0.05,
               check: Callable[[], None] | None = None) -> float:
    """Seconds until `condition()` held; raises TimeoutError past the deadline."""
    start = time.perf_counter()
    while not condition():
        if check:
            check()
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError("benchmark condition not reached in time")
        time.sleep(poll_s)
    return time.perf_counter() - start


def machine() -> dict[str, object]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    pg = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip() or "?"
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gb": mem_gb, "python": platform.python_version(),
            "postgres_client": pg}


def record(name: str, command: str, figures: dict[str, object], notes: str = "") -> None:
    """Save the figures (docs/bench/NAME.json), regenerate docs/benchmarks.md, print the JSON line."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    entry = {"name": name, "command": command, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
             "machine": machine(), "figures": figures, "notes": notes}
    (RESULTS / f"{name}.json").write_text(json.dumps(entry, indent=2) + "\n")
    from bench.report import write_report

    write_report()
    sys.stdout.flush()
    print(json.dumps(figures, separators=(",", ":")))


def prepared_store(url: str, history: list[str], *, batch: int = 1000, tune=None):
    """A migrated store with the shipped tenants, `tune(tx)` applied, `history` applied and
    ANALYZEd: a live database has statistics (autovacuum keeps them); a fresh one misleads."""
    from sqlalchemy import text

    from bench.workload import START
    from notifier.services import apply_events, load_tenants
    from notifier.settings import shipped_path
    from notifier.store.sql import Store, make_engine

    store = Store(make_engine(url))
    store.migrate()
    load_tenants(store, shipped_path("config") / "tenants", now=START)
    if tune is not None:
        with store.transaction() as tx:
            tune(tx)
    for i in range(0, len(history), batch):
        apply_events(store, history[i:i + batch], now=START, source="bench")
    with store.engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    return store


def count_rows(store, table, *where) -> int:
    from sqlalchemy import func, select

    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def stop_processes(procs) -> None:
    import subprocess

    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
