"""Issue 9, acceptance 2 (N7, P5): a full run of the pipeline leaves no personal data in the
processes' logs or in the Celery task arguments, and every process exports its metrics.

One run, shared by the tests of this module: ingester, beat and a prefork worker as separate
processes at DEBUG level on PostgreSQL + Redis, an SMTP sink, a loopback SMS provider and a
staff webhook. Customers with distinctive names, email addresses and phone numbers (written as
people write them) book; an email goes out, an SMS is retried once then sent, an email
address is refused by the mail server (permanent failure), a customer cancels (staff notice),
and an invalid event lands in the dead-letter store. Redis MONITOR records every message
published on the Celery queues: what a task carries is what the broker holds.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from notifier.clock import FileClock
from notifier.devtools import HttpSink, MailSink, ProcessGroup, wait_for
from notifier.fake_providers import FakeProviders
from notifier.store import schema as t
from tests.conftest import REDIS_URL, START, created, customer, event, make_context, make_settings, settings_env

pytestmark = pytest.mark.integration

# the customers: every way their data could be written down is a needle to look for
HENRIKE = {"name": "Henrike Quastenberg", "email": "henrike.quastenberg@example.net", "phone": "0151 23456789",
           "e164": "+4915123456789"}
GIOVANNA = {"name": "Giovanna Pellegrinetti", "email": "g.pellegrinetti@example.it", "phone": "347 123 4567",
            "e164": "+393471234567"}
BARTHOLO = {"name": "Bartholo Wendehals", "email": "b.wendehals@example.org", "phone": "+49 170 1234567",
            "e164": "+491701234567"}
KUNIGUNDE = {"name": "Kunigunde Zwirbelmann", "email": "kunigunde.zwirbelmann@example.com",
             "phone": "+49 30 9876543", "e164": "+49309876543"}  # in the event that is dead on arrival
PEOPLE = (HENRIKE, GIOVANNA, BARTHOLO, KUNIGUNDE)
T0 = START + timedelta(hours=3)  # 10:00 in Berlin and Rome: after the quiet hours
SECRETS = {"twilio_auth_token": "tw-secret-7f3a9c", "webhook_secret": "hook-secret-91d2e4b7c0"}


CELERY_SIGNAL_SAYS = re.compile(r"^worker: (Warm|Cold) shutdown \(MainProcess\)$")


def needles() -> dict[str, str]:
    """Each person's name (and its parts), email (and its local part), phone as given, in E.164 and as digits."""
    found: dict[str, str] = {}
    for person in PEOPLE:
        found[person["name"]] = "name"
        for part in person["name"].split():
            found[part] = "name part"
        found[person["email"]] = "email"
        found[person["email"].split("@")[0]] = "email local part"
        found[person["phone"]] = "phone as given"
        found[person["e164"]] = "phone E.164"
        found[person["e164"].lstrip("+")] = "phone digits"
        found["0" + person["e164"][3:]] = "phone national digits"
    for name, value in SECRETS.items():
        found[value] = f"secret {name}"
    return found


def leaks(text: str) -> list[str]:
    lowered = text.lower()
    return sorted(f"{kind}: {needle!r}" for needle, kind in needles().items() if needle.lower() in lowered)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class BrokerTap:
    """Every LPUSH/RPUSH onto the given Redis keys (Celery queues) and every PUBLISH on a channel
    under the prefix (Celery's task events, which Flower reads), as seen by Redis MONITOR."""

    def __init__(self, url: str, keys: set[str], prefix: str) -> None:
        import redis

        self.keys, self.prefix = keys, prefix
        self.pushed: list[str] = []
        self.published: list[str] = []
        self.failure: Exception | None = None
        self._client = redis.Redis.from_url(url)
        self._monitor = self._client.monitor()
        self._monitor.__enter__()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        import redis

        # MONITOR shows every client of the server, other tests' too: a line redis-py cannot parse
        # is one line lost, not the end of the tap (which would leave the run's lists empty)
        while True:
            try:
                item = self._monitor.next_command()
            except (redis.ConnectionError, OSError):
                return  # closed to stop listening
            except (AttributeError, ValueError):
                continue
            except Exception as exc:  # noqa: BLE001 - told by close(), which the fixture calls
                self.failure = exc
                return
            verb, _, rest = item["command"].partition(" ")
            key, _, payload = rest.partition(" ")
            if verb.upper() in ("LPUSH", "RPUSH") and key in self.keys:
                self.pushed.append(payload)
            elif verb.upper() == "PUBLISH" and key.startswith(self.prefix):
                self.published.append(payload)

    def close(self) -> None:
        try:
            self._monitor.connection.disconnect()
        finally:
            self._thread.join(timeout=5)
            self._client.close()
        if self.failure is not None:
            raise RuntimeError("the Redis MONITOR tap stopped early") from self.failure


@dataclass
class Run:
    root: Path
    logs: dict[str, str] = field(default_factory=dict)
    task_messages: list[dict] = field(default_factory=list)  # decoded Celery messages
    raw_task_messages: list[str] = field(default_factory=list)
    task_events: list[str] = field(default_factory=list)  # raw, and their bodies decoded
    metrics: dict[str, str] = field(default_factory=dict)  # process -> /metrics text


def _decode(raw: str) -> dict:
    envelope = json.loads(raw)
    body = base64.b64decode(envelope["body"]).decode()
    args, kwargs, _embed = json.loads(body)
    return {"task": envelope["headers"]["task"], "args": args, "kwargs": kwargs, "headers": envelope["headers"],
            "body": body}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, pg_admin) -> Run:
    import psycopg
    import redis
    import requests

    from tasks.celery_app import ALL_QUEUES

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001
        from tests.conftest import unavailable

        unavailable("Redis at " + REDIS_URL, exc)
    root = tmp_path_factory.mktemp("observability")
    run = Run(root=root)
    db = f"notifier_t_{uuid.uuid4().hex[:10]}"
    prefix = f"nt{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    pg_url = f"{pg_admin.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+psycopg://')}/{db}"
    raw = redis.Redis.from_url(REDIS_URL)
    clock = FileClock(root / "clock")
    clock.set(T0)
    ports = {"ingester": free_port(), "worker": free_port(), "beat": free_port()}
    tap = BrokerTap(REDIS_URL, {f"{prefix}{queue}" for queue in ALL_QUEUES}, prefix)
    group: ProcessGroup | None = None
    try:
        with MailSink() as mail, FakeProviders(auth_token=SECRETS["twilio_auth_token"]) as sms, HttpSink() as hooks:
            mail.refuse.add(BARTHOLO["email"])
            settings = make_settings(
                root, database_url=pg_url, broker_url=REDIS_URL, broker_key_prefix=prefix, events_url=REDIS_URL,
                events_queue=f"{prefix}.events", smtp_port=mail.port, sweep_interval_s=0.3, log_level="DEBUG",
                twilio_account_sid=sms.account_sid, twilio_auth_token=sms.auth_token, twilio_from="+4930123456",
                twilio_api_url=sms.url, staff_webhook_url=hooks.url, webhook_secret=SECRETS["webhook_secret"],
                retry_base_s=60)
            ctx = make_context(settings)
            group = ProcessGroup(root, settings_env(settings))
            group.start("worker", "worker", "-c", "2", "--metrics-port", str(ports["worker"]))
            group.start("beat", "beat", "--metrics-port", str(ports["beat"]))
            group.start("ingester", "ingest", "--metrics-port", str(ports["ingester"]))

            def publish(*events: dict) -> None:
                raw.rpush(f"{prefix}.events", *[json.dumps(e) for e in events])

            def rows(kind: str, booking: str):
                with ctx.store.engine.connect() as conn:
                    return conn.execute(select(t.messages).where(t.messages.c.kind == kind,
                                                                 t.messages.c.booking_id == booking)).all()

            def attempts(outcome: str) -> int:
                with ctx.store.engine.connect() as conn:
                    return conn.execute(select(func.count()).select_from(t.send_attempts)
                                        .where(t.send_attempts.c.outcome == outcome)).scalar_one()

            visit = T0 + timedelta(days=2, hours=3)
            publish(
                created("B-1", at=T0, starts_at=visit, cust=customer("c-henrike", name=HENRIKE["name"], email=HENRIKE["email"],
                                                             phone=HENRIKE["phone"],
                                                             consents={"email": True, "sms": True})),
                created("R-1", tenant="studio-roma", at=T0, starts_at=visit + timedelta(days=1),
                        resource={"id": "giulia", "name": "Giulia Conti", "type": "specialist"},
                        cust=customer("c-giovanna", language="it", name=GIOVANNA["name"], email=GIOVANNA["email"],
                                      phone=GIOVANNA["phone"], consents={"sms": True, "email": True})),
                created("C-1", tenant="clinic-full", at=T0, starts_at=visit,
                        resource={"id": "dr-weiss", "name": "Dr. Weiss", "type": "specialist"},
                        cust=customer("c-bartholo", name=BARTHOLO["name"], email=BARTHOLO["email"],
                                      phone=BARTHOLO["phone"], consents={"email": True})),
                # dead on arrival: the booking has no start, the customer's data is all there (N3)
                event("booking.created", {"booking_id": "X-1", "customer": customer(
                    "c-kunigunde", name=KUNIGUNDE["name"], email=KUNIGUNDE["email"], phone=KUNIGUNDE["phone"]),
                    "resource": {"id": "anna", "name": "Anna Weber", "type": "specialist"}}, at=T0),
            )
            wait_for(lambda: any(m["To"] == HENRIKE["email"] for m in mail.messages), "Henrike's email", group, 90)
            wait_for(lambda: [r.state for r in rows("info", "C-1")] == ["failed"],
                     "the refused address to fail for good", group, 60)
            publish(event("booking.cancelled", {"booking_id": "C-1", "by": "customer", "reason": "verhindert"},
                          tenant="clinic-full", revision=2, at=T0))
            wait_for(lambda: len(hooks.requests) >= 1, "the staff notice of the cancellation", group, 60)

            sms.script(503)  # the provider stumbles once: a retry, later
            clock.set(T0 + timedelta(minutes=11))  # Rome's info is due 10 minutes after booking
            wait_for(lambda: attempts("temporary") >= 1, "the SMS's first attempt", group, 60)
            clock.set(T0 + timedelta(hours=3))
            wait_for(lambda: len(sms.received) >= 1, "Giovanna's SMS", group, 60)
            wait_for(lambda: [r.state for r in rows("info", "R-1")] == ["sent"], "the SMS recorded", group, 30)
            with ctx.store.engine.connect() as conn:
                assert conn.execute(select(func.count()).select_from(t.dead_letters)).scalar_one() == 1

            def scraped() -> bool:
                run.metrics = {name: requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                               for name, port in ports.items()}
                return ("notifier_sends_total{channel=\"sms\",outcome=\"sent\"}" in run.metrics["worker"]
                        and "outcome=\"dead\"" in run.metrics["ingester"])

            wait_for(scraped, "the processes' metrics to show the run", group, 30)
            ctx.close()
    finally:
        if group is not None:
            group.stop()  # the ingester prints its summary on the way out: part of its log
        tap.close()
        for key in raw.scan_iter(match=f"{prefix}*", count=500):
            raw.delete(key)
        raw.close()
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    run.logs = {log.stem: log.read_text(errors="replace") for log in root.glob("*.log")}
    run.raw_task_messages = list(tap.pushed)
    run.task_messages = [_decode(m) for m in tap.pushed]
    for raw_event in tap.published:
        run.task_events.append(raw_event)
        try:
            run.task_events.append(base64.b64decode(json.loads(raw_event)["body"]).decode())
        except (ValueError, KeyError, TypeError):
            pass
    return run


def test_N7_logs_of_a_full_run_at_debug_level_carry_no_phone_email_or_name(full_run):
    """N7: the ingester's, beat's and the worker's logs, DEBUG level, hold none of the customers'
    names, email addresses or phone numbers (as given, E.164, digits), nor a secret."""
    assert set(full_run.logs) == {"ingester", "beat", "worker"}
    worker, ingester = full_run.logs["worker"], full_run.logs["ingester"]
    # the logs are about the run: tasks received and done, batches applied, a dead letter counted
    assert "notifier.dispatch_batch" in worker and "succeeded" in worker
    assert "applied batch" in ingester and '"dead": 1' in ingester
    for name, text in full_run.logs.items():
        decoded = "\n".join(json.dumps(json.loads(line), ensure_ascii=False) for line in text.splitlines()
                            if line.startswith("{"))  # JSON escapes umlauts: look at the text itself too
        assert not leaks(text + "\n" + decoded), f"{name}.log leaks {leaks(text + decoded)}"


def test_N7_logs_are_json_lines_with_level_logger_and_time(full_run):
    """N7 and operations: every line the processes log is one JSON object a collector can index."""
    for name, text in full_run.logs.items():
        lines = [line for line in text.splitlines() if line.strip()]
        assert lines, f"{name} logged nothing"
        records = []
        for line in lines:
            if name == "ingester" and line.startswith('{"applied"'):
                continue  # its summary on stdout when it stops
            if name == "worker" and CELERY_SIGNAL_SAYS.match(line):
                continue  # printed by Celery's signal handler, which must not take the logging lock
            records.append(json.loads(line))  # fails on any line that is not JSON
        assert all({"event", "level", "logger", "timestamp"} <= set(r) for r in records), name
    levels = {json.loads(line)["level"] for line in full_run.logs["worker"].splitlines() if line.startswith("{")}
    assert "debug" in levels  # the run really was at DEBUG


def test_N7_celery_task_arguments_carry_ids_only(full_run):
    """N7: every message published on a Celery queue during the run (read back from the broker
    with Redis MONITOR) carries ids and a channel name: no phone, email, name or secret."""
    dispatched = [m for m in full_run.task_messages if m["task"] == "notifier.dispatch_batch"]
    assert {m["args"][0] for m in dispatched} >= {"email", "sms", "staff"}
    for message in dispatched:
        channel, ids = message["args"]
        assert isinstance(channel, str) and ids and all(isinstance(i, int) for i in ids), message["args"]
        assert message["kwargs"] == {}
    assert {m["task"] for m in full_run.task_messages} >= {"notifier.sweep_due", "notifier.sweep_states"}
    everything = "\n".join(full_run.raw_task_messages + [m["body"] for m in full_run.task_messages])
    assert not leaks(everything), leaks(everything)


def test_N7_task_events_for_flower_carry_no_personal_data(full_run):
    """N7, P5: the task events workers send for Flower (received, started, succeeded, with the
    arguments' repr) hold no phone, email, name or secret either."""
    events = "\n".join(full_run.task_events)
    assert "task-succeeded" in events and '"name": "dispatch sms (' in events  # dispatch_batch, by its shown name
    assert not leaks(events), leaks(events)


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_P5_ingester_worker_and_beat_export_what_happened(full_run):
    """P5, operations: each process's /metrics shows the run: events by outcome with the dead
    letter, sends by channel and outcome (the retried SMS, the refused email), beat's sweeps.
    Labels carry channels and outcomes only (N7)."""
    ingester, worker, beat = (_samples(full_run.metrics[n]) for n in ("ingester", "worker", "beat"))
    assert ingester[("notifier_ingest_events_total", (("outcome", "applied"),))] >= 4
    assert ingester[("notifier_ingest_events_total", (("outcome", "dead"),))] == 1
    assert ingester[("notifier_ingest_batch_seconds_count", ())] >= 2
    assert ingester[("notifier_ingest_last_batch_timestamp_seconds", ())] > 0

    def sends(channel: str, outcome: str) -> float:
        return worker.get(("notifier_sends_total", (("channel", channel), ("outcome", outcome))), 0)

    assert sends("email", "sent") >= 1 and sends("email", "permanent") == 1
    assert sends("sms", "temporary") == 1 and sends("sms", "sent") == 1
    assert sends("staff", "sent") >= 1
    assert worker[("notifier_send_seconds_count", (("channel", "sms"),))] == 2
    assert worker[("notifier_dispatch_messages_total", (("channel", "email"), ("outcome", "failed")))] == 1
    assert worker[("notifier_sweep_claimed_total", ())] >= 4
    assert worker[("notifier_task_seconds_count", (("task", "notifier.dispatch_batch"),))] >= 4
    assert beat[("notifier_beat_sent_total", (("task", "notifier.sweep_due"),))] >= 1
    assert not leaks("\n".join(full_run.metrics.values()))
