"""P5, N7: what an operator sees in Flower. Every task has a name that says what it does and a
queue that says where it runs; a dispatch task shows its channel and how many messages it
carries, and carries nothing but a channel name and message ids (no address, no name)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import timedelta

import pytest

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
    assert [(o["queue"], o["argsrepr"]) for o in sent] == [("email", "email: 3 messages"),
                                                           ("email", "email: 2 messages")]
    for options in sent:
        channel, ids = options["args"]
        assert channel == "email" and all(isinstance(i, int) for i in ids)
    assert "@" not in json.dumps([o["args"] for o in sent]) + "".join(o["argsrepr"] for o in sent)
