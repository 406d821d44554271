"""P5, N7: what an operator sees in Flower. Every task has a name that says what it does and a
queue that says where it runs; a dispatch task shows its channel and how many messages it
carries, and carries nothing but a channel name and message ids (no address, no name)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import text

from notifier.services import apply_events
from tests.conftest import START, created, customer


@pytest.fixture
def celery_conf(tmp_path, monkeypatch):
    """The Celery configuration as a fresh process would read it (nothing connects)."""
    monkeypatch.setenv("NOTIFIER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("NOTIFIER_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("NOTIFIER_SWEEP_INTERVAL_S", "2")
    monkeypatch.setenv("NOTIFIER_HOUSEKEEPING_INTERVAL_S", "600")
    from tasks.celery_app import celery_config

    return celery_config()


def test_P5_every_task_has_a_plain_name_a_description_and_a_declared_queue(celery_conf):
    import tasks.sweep  # noqa: F401 - registers the tasks
    from tasks.celery_app import ALL_QUEUES, app

    ours = {name: task for name, task in app.tasks.items() if not name.startswith("celery.")}
    assert set(ours) == {"notifier.sweep_due", "notifier.sweep_states", "notifier.housekeeping",
                         "notifier.dispatch_batch"}
    assert all(re.fullmatch(r"notifier\.[a-z]+(_[a-z]+)*", name) for name in ours)
    routes = celery_conf["task_routes"]
    for name in ("notifier.sweep_due", "notifier.sweep_states", "notifier.housekeeping"):  # beat's tasks
        assert routes[name]["queue"] == "sweep"
        assert (ours[name].__doc__ or "").strip(), f"{name} says nothing about itself"
    assert set(ALL_QUEUES) == {"sweep", "email", "sms", "whatsapp", "staff", "activity"}  # one per channel (P3)


def test_P2_beat_sends_both_sweeps_and_housekeeping_from_a_schedule_in_memory(celery_conf):
    schedule = celery_conf["beat_schedule"]
    assert {entry["task"]: entry["schedule"] for entry in schedule.values()} == {
        "notifier.sweep_due": 2.0, "notifier.sweep_states": 2.0, "notifier.housekeeping": 600.0}
    assert celery_conf["beat_scheduler"] == "tasks.celery_app:MemoryScheduler"  # no schedule file two beats share
    assert "beat_schedule_filename" not in celery_conf


def test_N7_a_dispatch_task_shows_channel_and_count_and_carries_only_ids(ctx, monkeypatch):
    import tasks.sweep as sweep

    bodies = [json.dumps(created(f"b{i}", starts_at=START + timedelta(days=2),
                                 cust=customer(f"c{i}", email=f"erika{i}@example.org"))) for i in range(5)]
    apply_events(ctx.store, bodies, now=START, source="test")
    sent: list[dict] = []
    monkeypatch.setattr(sweep, "context", lambda: ctx)
    monkeypatch.setattr(sweep.dispatch_batch, "apply_async", lambda **options: sent.append(options))
    monkeypatch.setattr(ctx, "settings", replace(ctx.settings, dispatch_batch=3))  # batches of three ids

    assert sweep.sweep_due_task() == 5
    assert [(o["queue"], o["argsrepr"], o["shadow"]) for o in sent] == [
        ("email", "email: 3 messages", "dispatch email (3)"), ("email", "email: 2 messages", "dispatch email (2)")]
    for options in sent:
        channel, ids = options["args"]
        assert channel == "email" and all(isinstance(i, int) for i in ids)
    assert "@" not in json.dumps([o["args"] for o in sent]) + "".join(o["argsrepr"] for o in sent)


def test_P5_a_batch_with_a_permanent_failure_fails_as_a_task_after_everything_is_recorded(ctx, email, monkeypatch,
                                                                                        caplog):
    """Flower counts the task as failed (issue 22): `MessagesFailed` names the channel, the counts
    and the failed ids, never an address; each failure is logged at WARNING, the address masked."""
    import logging

    import tasks.dispatch as task
    from notifier.channels.base import PermanentFailure
    from notifier.dispatch import MessagesFailed
    from notifier.services import sweep_due

    def refuse(message):
        if message.to == "weg@example.org":
            raise PermanentFailure("recipient refused: 550 <weg@example.org> no such user", code="550")

    email.behaviour = refuse
    apply_events(ctx.store, [json.dumps(created(f"b{i}", starts_at=START + timedelta(days=2),
                                                cust=customer(f"c{i}", email=address)))
                             for i, address in enumerate(["da@example.org", "weg@example.org"])],
                 now=START, source="test")
    monkeypatch.setattr(task, "context", lambda: ctx)
    [(channel, ids)] = sweep_due(ctx.store, now=START, lease_s=60, limit=10, batch=10)
    with caplog.at_level(logging.WARNING, logger="notifier.dispatch"), pytest.raises(MessagesFailed) as failed:
        task.dispatch_batch(channel.value, ids)
    assert str(failed.value) == f"email: 1 of 2 failed for good (message {ids[1]} (550)); 1 sent"
    assert failed.value.counts == {"sent": 1, "failed": 1}
    assert task.dispatch_batch.throws == (MessagesFailed,)  # an expected outcome: logged without a traceback
    assert ctx.store.count_by_state() == {"sent": 1, "failed": 1}  # recorded before it was raised
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warning.getMessage().startswith(f"message {ids[1]} (email, info) failed for good: recipient refused:")
    assert "weg@example.org" not in warning.getMessage() and warning.code == "550"  # masked (N7); the code kept
    assert task.dispatch_batch(channel.value, ids) == {"skipped": 2}  # redelivered: nothing, and no failure


def test_P5_metrics_count_a_failed_batchs_messages_and_not_a_task_error():
    from celery.signals import task_failure, task_postrun

    import tasks.dispatch as task
    from notifier.dispatch import MessagesFailed
    from notifier.observability import metrics as m

    m.connect_worker_signals()
    registry = m.metrics()
    before_errors = registry.task_failures.labels("notifier.dispatch_batch")._value.get()
    before_sent = registry.dispatch_messages.labels("sms", "sent")._value.get()
    exc = MessagesFailed("sms: 1 of 3 failed for good", {"sent": 2, "failed": 1})
    task_failure.send(sender=task.dispatch_batch, task_id="t1", exception=exc)
    task_postrun.send(sender=task.dispatch_batch, task_id="t1", task=task.dispatch_batch, args=("sms", [1, 2, 3]),
                      retval=exc, state="FAILURE")
    assert registry.task_failures.labels("notifier.dispatch_batch")._value.get() == before_errors
    assert registry.dispatch_messages.labels("sms", "sent")._value.get() == before_sent + 2


def test_P2_beat_sends_a_sweep_when_its_work_waits_and_else_only_a_heartbeat(ctx, monkeypatch):
    """Issue 22: idle sweeps do not flood Flower, the broker and the worker's log."""
    import tasks.celery_app as celery_app
    from tasks.celery_app import MemoryScheduler, app

    monkeypatch.setattr(celery_app, "context", lambda: ctx)
    monkeypatch.setattr(ctx, "settings", replace(ctx.settings, sweep_idle_s=60))
    now = [1000.0]
    monkeypatch.setattr(celery_app.time, "monotonic", lambda: now[0])
    sent: list[str] = []
    scheduler = MemoryScheduler(app=app, lazy=True)
    scheduler.setup_schedule()
    monkeypatch.setattr(scheduler, "apply_async", lambda entry, **_: sent.append(entry.task))
    due, states = scheduler.schedule["sweep-due"], scheduler.schedule["sweep-states"]

    def tick(seconds: float) -> list[str]:
        now[0] += seconds
        sent.clear()
        for entry in (due, states):
            scheduler.apply_entry(entry)
        return list(sent)

    assert tick(0) == ["notifier.sweep_due", "notifier.sweep_states"]  # at start: both
    assert tick(2) == []  # nothing due, nothing to publish, no marker to change
    apply_events(ctx.store, [json.dumps(created("b1", starts_at=START + timedelta(hours=3)))], now=START,
                 source="test")  # its info is due now; its red counter lights in an hour
    assert tick(2) == ["notifier.sweep_due"]
    ctx.store.claim_due(START, lease_s=60, limit=10)
    with ctx.store.engine.begin() as conn:  # the worker took it and died: its lease runs out
        conn.execute(text("UPDATE messages SET state = 'sending'"))
    assert tick(2) == []
    ctx.clock.set(START + timedelta(hours=1, seconds=61))
    assert tick(2) == ["notifier.sweep_due", "notifier.sweep_states"]  # a lapsed claim; the red counter
    with ctx.store.engine.begin() as conn:
        conn.execute(text("UPDATE messages SET state = 'sent'"))
        conn.execute(text("UPDATE bookings SET next_check_at = NULL"))
        conn.execute(text("UPDATE outbox SET published_at = '2026-12-01 06:00:00'"))
    assert tick(2) == []
    assert tick(58) == ["notifier.sweep_due", "notifier.sweep_states"]  # the heartbeat
    monkeypatch.setattr(ctx.store, "work_waiting", lambda *a: (_ for _ in ()).throw(OSError("db down")))
    assert tick(2) == ["notifier.sweep_due", "notifier.sweep_states"]  # beat cannot ask: sent, the worker says why


def test_P5_an_idle_sweeps_lines_are_debug_and_a_busy_ones_stay_info(restore_root_level):
    import logging

    from notifier.observability.logs import QuietIdleSweeps

    quiet = QuietIdleSweeps()

    def line(name: str, **data) -> logging.LogRecord:
        record = logging.LogRecord("celery.app.trace", logging.INFO, __file__, 1, "Task %(name)s", None, None)
        record.data = {"name": name, **data}
        return record

    logging.getLogger().setLevel(logging.INFO)
    assert not quiet.filter(line("notifier.sweep_due"))  # "received"
    assert not quiet.filter(line("notifier.sweep_states", return_value="0", runtime=0.01))
    assert quiet.filter(line("notifier.sweep_due", return_value="120", runtime=0.2))
    assert quiet.filter(line("dispatch sms (100)"))
    logging.getLogger().setLevel(logging.DEBUG)
    idle = line("notifier.sweep_due", return_value="0", runtime=0.01)
    assert quiet.filter(idle) and idle.levelname == "DEBUG"


@pytest.fixture
def restore_root_level():
    import logging

    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)
