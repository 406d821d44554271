"""Logs and metrics of the processes (N7, P5): personal data masked wherever it appears in a log
record, JSON lines out, and the metrics each process exports counting what happened."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass

import pytest
import structlog

from notifier.channels.base import Outgoing, PermanentFailure, TemporaryFailure
from notifier.channels.fake import FakeChannel
from notifier.observability import metrics as m
from notifier.observability.logs import MASK, configure_logging, mask_text

PERSONAL = ["Erika Mustermann", "kunde@example.org", "+4915123456789", "0151 23456789", "+49 151 23456789",
            "(030) 1234567", "06 6982 1234", "4915123456789"]


@pytest.mark.parametrize("text, expected", [
    ("send to +4915123456789 failed", f"send to {MASK} failed"),
    ("Tel. 0151 23456789, please", f"Tel. {MASK}, please"),
    ("call (030) 1234567 now", f"call {MASK} now"),
    ("Roma: 06 6982 1234", f"Roma: {MASK}"),
    ("wa_id 4915123456789 read", f"wa_id {MASK} read"),
    ("kunde@example.org bounced", f"{MASK} bounced"),
    ("To=kunde%40example.org", f"To={MASK}"),
    ("To: Erika Mustermann <kunde@example.org>", f"To: {MASK} <{MASK}>"),
    ('To: "Mustermann, Erika" <kunde@example.org>', f"To: {MASK} <{MASK}>"),
    ("Customer(id='c1', name='Erika Mustermann', email='kunde@example.org')",
     f"Customer(id='c1', name='{MASK}', email='{MASK}')"),
    ('{"name": "Erika Mustermann", "phone": "0151 23456789"}', f'{{"name": "{MASK}", "phone": "{MASK}"}}'),
    ("first_name=Erika done", f"first_name={MASK} done"),
])
def test_N7_personal_data_is_masked_in_text(text, expected):
    """N7: email addresses, display names, phone numbers as people write them and in E.164, and
    named values in reprs and JSON bodies are replaced by ***."""
    assert mask_text(text) == expected


@pytest.mark.parametrize("text", [
    "due 2026-12-01T06:00:00+00:00", "2026-12-01 06:00:00", "retrying batch of 3 in 0.5s",
    "Task notifier.dispatch_batch[e3b0c442-98fc-1c14-9afb-f4c8996fb924] succeeded in 0.0123s: {'sent': 3}",
    "ids [101, 102, 103]", "{'name': 'notifier.sweep_due'}", "redis://127.0.0.1:6379/0", "version 1.2.3",
    "email: 3 messages", "elapsed 1733034000.123",
    "Task notifier.sweep_states[35178521-56ca-4c42-b5a6-94d02fe090e5] received",  # a task id that starts with digits
])
def test_N7_masking_leaves_times_ids_and_task_names_readable(text):
    """Operations: what a log is for (times, ids, counts, task names, addresses of services) stays."""
    assert mask_text(text) == text


def _configured(level: str = "DEBUG") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(level, stream=stream)
    return stream


@pytest.fixture
def restore_logging():
    root, pool = logging.getLogger(), logging.getLogger("multiprocessing")
    handlers, level = list(root.handlers), root.level
    pool_handlers, pool_propagate = list(pool.handlers), pool.propagate
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    pool.handlers[:], pool.propagate = pool_handlers, pool_propagate
    structlog.reset_defaults()


def test_N7_a_log_record_is_one_masked_json_line_whatever_carries_the_data(restore_logging):
    """N7: personal data in the message, its %-arguments, `extra` fields (nested too) and in an
    exception's traceback is masked; each record is one JSON object with level, logger and time."""
    stream = _configured()
    log = logging.getLogger("notifier.test")
    log.info("sending to %s", "kunde@example.org", extra={"customer": {"name": "Erika Mustermann", "id": "c1"},
                                                          "phone": "+4915123456789", "message_id": 7})
    try:
        raise ValueError("Customer(name='Erika Mustermann', phone='0151 23456789') refused")
    except ValueError:
        log.exception("send failed")
    structlog.get_logger("notifier.structured").warning("retry", to="+49 151 23456789", attempt=2)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert all({"event", "level", "logger", "timestamp"} <= set(r) for r in records)
    assert records[0]["event"] == f"sending to {MASK}" and records[0]["message_id"] == 7
    assert records[0]["customer"] == {"name": MASK, "id": MASK} and records[0]["phone"] == MASK
    assert "ValueError" in records[1]["exception"] and records[2]["to"] == MASK and records[2]["attempt"] == 2
    for value in PERSONAL:
        assert value not in stream.getvalue()


def test_N7_celery_pool_messages_are_json_too(restore_logging):
    """Operations: billiard (Celery's pool) logs to a logger that does not propagate; its lines
    are JSON like every other, not Python's raw last-resort output."""
    stream = _configured("INFO")
    logging.getLogger("multiprocessing").error("Process %r exited with %r", "ForkPoolWorker-1", "signal 9")
    [line] = stream.getvalue().splitlines()
    assert json.loads(line)["logger"] == "multiprocessing"


def test_N7_debug_level_does_not_switch_on_sql_echo(restore_logging):
    """N7: at DEBUG, SQLAlchemy stays quiet (at INFO it would log statements with their
    parameters: names and addresses)."""
    from sqlalchemy import create_engine, text

    stream = _configured("DEBUG")
    engine = create_engine("sqlite://")
    with engine.connect() as conn:
        conn.execute(text("select :email"), {"email": "kunde@example.org"})
    assert "select" not in stream.getvalue().lower()


def _value(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def _outgoing() -> Outgoing:
    return Outgoing(message_id=1, idempotency_key="k1", to="kunde@example.org", text="Hallo")


def test_P5_provider_calls_are_counted_by_channel_and_outcome_and_timed():
    """Operations: every provider call counts once under its outcome; the adapter's other
    abilities pass through the metering wrapper."""
    answers = iter([None, TemporaryFailure("503"), PermanentFailure("550")])

    def behaviour(_message: Outgoing) -> None:
        error = next(answers)
        if error:
            raise error

    fake = FakeChannel("email", behaviour=behaviour)
    [(channel, adapter)] = m.metered_channels({"unit-email": fake}).items()
    before = {o: _value("notifier_sends_total", channel="unit-email", outcome=o) for o in ("sent", "temporary",
                                                                                            "permanent")}
    timed = _value("notifier_send_seconds_count", channel="unit-email")
    assert adapter.send(_outgoing()).provider_message_id.startswith("fake-email")
    with pytest.raises(TemporaryFailure):
        adapter.send(_outgoing())
    with pytest.raises(PermanentFailure):
        adapter.send(_outgoing())
    for outcome in before:
        assert _value("notifier_sends_total", channel="unit-email", outcome=outcome) == before[outcome] + 1
    assert _value("notifier_send_seconds_count", channel="unit-email") == timed + 3
    assert adapter.sent == fake.sent  # passes through


@dataclass
class _Report:
    applied: int = 0
    duplicates: int = 0
    stale: int = 0
    held: int = 0
    dead: int = 0


def test_P5_ingested_events_by_outcome_and_batch_time_from_arrival_to_ack():
    from notifier.ingest import Batch

    acked = []

    class Source:
        name = "unit"

        def fetch(self, max_n, wait_s, block_s):
            return Batch(bodies=[b"{}", b"{}", b"{}"], ack=lambda: acked.append(True))

        def close(self):
            pass

    before = {o: _value("notifier_ingest_events_total", outcome=o) for o in ("applied", "duplicate", "dead")}
    batches = _value("notifier_ingest_batch_seconds_count")
    batch = m.MeteredSource(Source()).fetch(500, 0.05, 1.0)
    m.count_ingested(_Report(applied=1, duplicates=1, dead=1))
    batch.ack()
    assert acked == [True]
    assert _value("notifier_ingest_batch_seconds_count") == batches + 1
    for outcome, value in before.items():
        assert _value("notifier_ingest_events_total", outcome=outcome) == value + 1
    assert _value("notifier_ingest_last_batch_timestamp_seconds") > 0


def test_P5_metrics_endpoint_serves_the_text_format():
    import urllib.request

    server = m.serve(0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5) as answer:
            body = answer.read().decode()
    finally:
        server.shutdown()
    assert "# TYPE notifier_sends_total counter" in body and "notifier_ingest_batch_seconds_bucket" in body
