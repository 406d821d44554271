"""Issue 22, acceptance 2 (P5, N7): Flower tells the truth, against a real Flower process.

Flower, a Celery worker and beat run as processes on Redis and PostgreSQL, with SMS through a
loopback Twilio API that refuses one number for good. The dispatch task of that batch is
FAILURE in Flower's API (the chosen signal: the task raises `MessagesFailed` after recording
every message, docs/operations.md), named "dispatch sms (2)", its exception saying how many of
the batch failed, which and what became of the rest, without a phone number. The worker logs
the permanent failure at WARNING with the message's id, channel and reason, the number masked.
Then the pipeline idles for sixty sweep intervals: Flower's task list gains a few heartbeat
sweeps, not two per interval, and the worker writes no INFO line about them.
"""

from __future__ import annotations

import json
import socket
import time
from datetime import timedelta

import httpx
import pytest

from notifier.devtools import wait_for
from notifier.fake_providers import FakeProviders
from notifier.services import apply_events
from tests.conftest import START, created, customer, make_context, make_settings, settings_env
from tests.integration.test_message_events import REFUSED, TENANT, tenant_files

INTERVAL_S = 0.5
IDLE_S = 30.0  # sixty sweep intervals
AUTH = ("ops", "flower-test-secret")
SWEEPS = {"notifier.sweep_due", "notifier.sweep_states"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_P5_N7_flower_counts_a_batch_with_a_permanent_failure_as_failed_and_idle_sweeps_stay_few(
        tmp_path, pg_url, redis_url, key_prefix, clock, procs):
    tenant_files(tmp_path / "tenants")
    with FakeProviders() as providers:
        providers.invalid_numbers.add(REFUSED)
        settings = make_settings(tmp_path, database_url=pg_url, tenants_path=tmp_path / "tenants",
                                 broker_url=redis_url, broker_key_prefix=key_prefix,
                                 twilio_account_sid=providers.account_sid, twilio_auth_token=providers.auth_token,
                                 twilio_from="+4930123456", twilio_api_url=providers.url,
                                 sweep_interval_s=INTERVAL_S, sweep_idle_s=10)
        ctx = make_context(settings)
        port = free_port()
        group = procs(settings_env(settings))
        group.start("flower", "flower", f"--port={port}", f"--basic-auth={AUTH[0]}:{AUTH[1]}")
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=AUTH, timeout=10)

        def tasks() -> dict[str, dict]:
            try:
                answer = api.get("/api/tasks")
            except httpx.HTTPError:
                return {}
            return answer.json() if answer.status_code == 200 else {}

        wait_for(lambda: api_up(api), "Flower's API", group, timeout_s=60)
        group.start("worker", "worker", "-Q", "sweep,sms", "-c", "2")
        group.start("beat", "beat")
        wait_for(lambda: any(t["name"] in SWEEPS for t in tasks().values()), "Flower to see a sweep", group,
                 timeout_s=90)

        bookings = [created(b, tenant=TENANT, starts_at=START + timedelta(days=3, hours=6),
                            resource={"id": "giulia", "name": "Giulia", "type": "specialist"},
                            cust=customer(f"c-{b}", language="it", email=None, phone=phone, consents={"sms": True}))
                    for b, phone in (("sent", "+39 347 123 4567"), ("refused", REFUSED))]
        apply_events(ctx.store, [json.dumps(b) for b in bookings], now=START, source="test")

        def dispatched() -> list[dict]:
            return [t for t in tasks().values() if t["name"].startswith("dispatch sms")]

        wait_for(lambda: any(t["state"] == "FAILURE" for t in dispatched()), "the dispatch task to fail in Flower",
                 group, timeout_s=90, explain=lambda: json.dumps(dispatched()))
        [task] = dispatched()
        assert task["name"] == "dispatch sms (2)" and task["args"] == "sms: 2 messages"
        refused_id = message_id(ctx, "refused")
        assert f"sms: 1 of 2 failed for good (message {refused_id} (400)); 1 sent" in task["exception"]
        assert "347" not in task["exception"] + task["args"]  # ids and counts, never a number (N7)

        # the idle window opens once the store has nothing for a sweep and the sweeps beat sent
        # while the batch's outcome waited to be published have all reached the worker (at load
        # 20 the worker is seconds behind beat: their `received` would otherwise fall inside it)
        wait_for(lambda: settled(ctx, settings, tasks()), "the pipeline to settle", group, timeout_s=60)
        idle_from = time.time()
        time.sleep(IDLE_S)  # the pipeline idles: what Flower and the worker's log gain meanwhile
        idle = [t for t in tasks().values() if (t.get("received") or 0) >= idle_from]
        sweeps = [t for t in idle if t["name"] in SWEEPS]
        # two tasks every interval before (120 in this window); now a heartbeat every sweep_idle_s each
        assert len(sweeps) <= 2 * (IDLE_S / 10 + 1), [t["name"] for t in idle]
        ctx.close()
        group.stop()

    lines = [json.loads(line) for line in (tmp_path / "worker.log").read_text().splitlines()
             if line.startswith("{")]
    [warning] = [line for line in lines if line["level"] == "warning" and "failed for good" in line["event"]]
    assert warning["event"].startswith(f"message {refused_id} (sms, info) failed for good: twilio 21211")
    assert "3471110000" not in json.dumps(warning)  # the refused number is masked in the reason (N7)
    chatter = [line for line in lines if line["level"] == "info" and "notifier.sweep" in line["event"]
               and float_time(line["timestamp"]) >= idle_from]
    assert chatter == [], "idle sweeps log at DEBUG"


def settled(ctx, settings, tasks: dict[str, dict]) -> bool:
    """No work waiting in the store, no sweep waiting in the broker's queue, none unfinished."""
    from kombu import Connection

    from notifier.bootstrap import kombu_url
    from tasks.celery_app import SWEEP_QUEUE

    if any(ctx.store.work_waiting(question, ctx.clock.now()) for question in ("due", "states")):
        return False
    url, options = kombu_url(settings.broker_url, settings)
    with Connection(url, transport_options=options) as conn:
        if conn.default_channel.queue_declare(SWEEP_QUEUE).message_count:
            return False
    return all(t["state"] in ("SUCCESS", "FAILURE", "REVOKED") for t in tasks.values() if t["name"] in SWEEPS)


def api_up(api: httpx.Client) -> bool:
    try:
        return api.get("/api/tasks").status_code == 200
    except httpx.HTTPError:
        return False


def message_id(ctx, booking_id: str) -> int:
    from sqlalchemy import select

    from notifier.store import schema as t

    with ctx.store.engine.connect() as conn:
        return conn.execute(select(t.messages.c.id).where(t.messages.c.booking_id == booking_id,
                                                          t.messages.c.kind == "info")).scalar_one()


def float_time(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
