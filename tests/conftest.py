"""Shared fixtures: real services (PostgreSQL, Redis, RabbitMQ) with names of their own,
an SQLite store, an SMTP sink, and builders for events.

A test that needs a service it cannot reach is skipped, or fails when
NOTIFIER_REQUIRE_SERVICES=1 (CI sets it): nothing is silently left out there.

Tests name the requirement IDs they cover (R1, N2, ...; docs/requirements.md defines each, and
tests/unit/test_requirements.py refuses an ID it does not define).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from notifier.bootstrap import Context, build
from notifier.channels.fake import FakeChannel
from notifier.clock import FileClock
from notifier.domain.model import Channel
from notifier.services import load_tenants
from notifier.settings import Settings, load_settings

REQUIRE_SERVICES = os.environ.get("NOTIFIER_REQUIRE_SERVICES") == "1"
PG_ADMIN_URL = os.environ.get("NOTIFIER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("NOTIFIER_TEST_REDIS", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("NOTIFIER_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
ROOT = Path(__file__).resolve().parent.parent
TENANTS = ROOT / "tests" / "data" / "tenants"


# what to install or start for each thing a test may find missing (`make test` ends by saying it)
REMEDIES = {
    "PostgreSQL": "apt-get install postgresql and start it (pg_ctlcluster <version> main start); the tests connect "
                  "as postgres with trust auth to 127.0.0.1:5432/test (NOTIFIER_TEST_PG=URL for another)",
    "Redis": "apt-get install redis-server and start it (redis-server --daemonize yes); 127.0.0.1:6379 "
             "(NOTIFIER_TEST_REDIS=URL for another)",
    "RabbitMQ": "apt-get install rabbitmq-server and start it (rabbitmq-server -detached); guest/guest on "
                "127.0.0.1:5672 (NOTIFIER_TEST_AMQP=URL for another)",
    "Chromium": "apt-get install chromium chromium-driver (/usr/bin/chromium and /usr/bin/chromedriver)",
    "selenium": "pip install -e '.[dev]' (make test installs it)",
}
UNREACHABLE = " is not reachable ("


def unavailable(what: str, exc: BaseException) -> None:
    message = f"{what}{UNREACHABLE}{exc.__class__.__name__}: {exc})"
    if REQUIRE_SERVICES:
        pytest.fail(message + "; NOTIFIER_REQUIRE_SERVICES=1 forbids skipping", pytrace=False)
    pytest.skip(message)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Say what could not run for want of a service or a tool, and what to install or start for it,
    instead of leaving a skip count to decode."""
    missing: dict[str, list[str]] = {}  # what was missing -> the tests that needed it
    for outcome in ("skipped", "failed", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            text = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr or "")
            if UNREACHABLE not in text:
                continue
            what = text.split(UNREACHABLE)[0].removeprefix("Skipped: ")
            key = next((k for k in REMEDIES if k.lower() in what.lower()), what)
            missing.setdefault(key, []).append(report.nodeid if outcome != "skipped" else report.location[0])
    if not missing:
        return
    terminalreporter.section("what these tests needed and did not find")
    for key, tests in sorted(missing.items()):
        files = sorted({t.split("::")[0] for t in tests})
        terminalreporter.write_line(f"{key}: {len(tests)} tests ({', '.join(files)})")
        terminalreporter.write_line(f"    {REMEDIES.get(key, 'see the message of each one above')}")
    if not REQUIRE_SERVICES:
        terminalreporter.write_line("They were skipped; NOTIFIER_REQUIRE_SERVICES=1 (CI) makes them fail instead.")


# --- services ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pg_admin() -> str:
    import psycopg

    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001
        unavailable("PostgreSQL at " + PG_ADMIN_URL, exc)
    return PG_ADMIN_URL


@pytest.fixture
def pg_url(pg_admin: str) -> Iterator[str]:
    """A database of this test's own, dropped afterwards."""
    import psycopg

    name = f"notifier_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = pg_admin.rsplit("/", 1)[0]
    yield f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        unavailable("Redis at " + REDIS_URL, exc)
    yield REDIS_URL
    client.close()


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted afterwards."""
    import redis

    prefix = f"nt{uuid.uuid4().hex[:8]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}*", count=500):
        client.delete(key)
    client.close()


@pytest.fixture
def amqp_url() -> str:
    from kombu import Connection

    try:
        with Connection(AMQP_URL, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # noqa: BLE001
        unavailable("RabbitMQ at " + AMQP_URL, exc)
    return AMQP_URL


@pytest.fixture
def mail_sink():
    from notifier.devtools import MailSink

    with MailSink() as sink:
        yield sink


# --- stores and contexts ---------------------------------------------------------------------

START = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)  # 07:00 in Berlin
METRICS_TOKEN = "test-metrics-token-0123456789"  # the web app's /metrics and /health details


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    env = {
        "NOTIFIER_DATABASE_URL": f"sqlite:///{tmp_path / 'notifier.db'}",
        "NOTIFIER_DATA_DIR": str(tmp_path),
        "NOTIFIER_TENANTS_PATH": str(TENANTS),
        "NOTIFIER_CLOCK": f"file:{tmp_path / 'clock'}",
        "NOTIFIER_DISPATCH_CONCURRENCY": "4",
        "NOTIFIER_METRICS_TOKEN": METRICS_TOKEN,
        "NOTIFIER_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32",  # the tests' webhook receivers are on loopback
    }
    env.update({f"NOTIFIER_{k.upper()}": str(v) for k, v in overrides.items()})
    return load_settings(env)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a subprocess these settings."""
    from dataclasses import fields

    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_") or k.startswith("NOTIFIER_TEST")}
    for f in fields(Settings):
        if f.name != "extra":
            env[f"NOTIFIER_{f.name.upper()}"] = str(getattr(settings, f.name))
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture
def clock(tmp_path: Path) -> FileClock:
    clock = FileClock(tmp_path / "clock")
    clock.set(START)
    return clock


def operator_headers(ctx: Context) -> dict[str, str]:
    """The Authorization header of a new operator key: every /api route (docs/security.md)."""
    from notifier.access import create_key

    key = create_key(ctx.store, tenant_id=None, name="tests", now=ctx.clock.now()).key
    return {"Authorization": f"Bearer {key}"}


def api_client(ctx: Context, app: Any = None) -> Any:
    """A test client of ctx's web app that presents an operator key."""
    from fastapi.testclient import TestClient

    from notifier.web.app import create_app

    return TestClient(app or create_app(ctx), headers=operator_headers(ctx))


METRICS_HEADERS = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def make_context(settings: Settings, channels: dict | None = None) -> Context:
    ctx = build(settings, channels=channels)
    ctx.store.migrate()
    load_tenants(ctx.store, settings.tenants_dir, now=ctx.clock.now())
    return ctx


@pytest.fixture
def email() -> FakeChannel:
    return FakeChannel("email")


@pytest.fixture
def ctx(tmp_path: Path, clock: FileClock, email: FakeChannel) -> Iterator[Context]:
    """An SQLite-backed context with a fake email channel and a simulated clock at START."""
    context = make_context(make_settings(tmp_path), channels={Channel.EMAIL: email})
    yield context
    context.close()


# --- events ------------------------------------------------------------------------------

def event(type_: str, data: dict[str, Any], *, tenant: str = "salon-berlin", revision: int = 1,
          at: datetime = START, event_id: str | None = None) -> dict[str, Any]:
    return {"schema_version": 1, "event_id": event_id or str(uuid.uuid4()), "type": type_,
            "occurred_at": at.isoformat(), "tenant_id": tenant, "revision": revision, "data": data}


def customer(cid: str = "c1", *, language: str = "de", email: str | None = "kunde@example.org",
             phone: str | None = None, consents: dict[str, bool] | None = None, **extra: Any) -> dict[str, Any]:
    data = {"id": cid, "name": "Erika Mustermann", "language": language, "email": email, "phone": phone,
            "consents": consents if consents is not None else {"email": True}, "privacy_accepted": True}
    data.update(extra)
    return data


def created(booking_id: str = "b1", *, starts_at: datetime | None = None, minutes: int = 60,
            cust: dict[str, Any] | None = None, resource: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    starts_at = starts_at or START + timedelta(hours=6)  # 13:00 Berlin the same day
    return event("booking.created", {
        "booking_id": booking_id, "customer": cust or customer(),
        "resource": resource or {"id": "anna", "name": "Anna Weber", "type": "specialist"},
        "starts_at": starts_at.isoformat(), "ends_at": (starts_at + timedelta(minutes=minutes)).isoformat(),
    }, **kw)
