"""Issue 7 acceptance 4 (N2, P2): two `notifier beat` processes, by mistake or for availability,
run with a Celery worker on PostgreSQL and Redis for ten minutes of simulated time while bookings
keep coming. Every message is sent exactly once: the SMTP server receives each Message-ID once, and
what it received is what the store says was sent. Both beats really ran (each sent its sweeps),
on one data folder, with no schedule file between them to fight over."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from notifier.devtools import wait_for
from notifier.domain.model import MessageState
from notifier.services import apply_events
from notifier.store import schema as t
from tests.conftest import created, customer, make_context, make_settings, settings_env

T0 = datetime(2026, 12, 1, 6, 55, tzinfo=UTC)  # 07:55 in Berlin: the morning reminders fall due at 08:00
STEP = timedelta(seconds=30)
STEPS = 20  # ten minutes
OPEN = (MessageState.PLANNED.value, MessageState.QUEUED.value, MessageState.SENDING.value)


def sweeps_sent(group, name: str) -> int:
    log = (group.root / f"{name}.log").read_text(errors="replace")
    return len(re.findall(r"Sending due task sweep-due", log))


def test_N2_P2_two_beats_for_ten_simulated_minutes_send_each_message_once(tmp_path, pg_url, redis_url, key_prefix,
                                                                            mail_sink, clock, procs):
    clock.set(T0)
    settings = make_settings(tmp_path, database_url=pg_url, broker_url=redis_url, broker_key_prefix=key_prefix,
                             events_url=redis_url, events_queue=f"{key_prefix}.events",
                             outbound_queue=f"{key_prefix}.outbound", smtp_port=mail_sink.port,
                             sweep_interval_s=0.3, dispatch_batch=3,
                             sweep_idle_s=1)  # beats send idle sweeps too (a heartbeat a second): the quiet spell
    ctx = make_context(settings)
    group = procs(settings_env(settings))
    group.start("worker", "worker", "-c", "2")  # two sweeps can run at the same moment
    group.start("beat-1", "beat")
    group.start("beat-2", "beat")  # the same settings, the same data folder
    c = t.messages.c

    def settled(now: datetime) -> bool:
        """Everything due by `now` has been sent and the mail server has it."""
        with ctx.store.engine.connect() as conn:
            waiting = conn.execute(select(func.count()).where(c.state.in_(OPEN), c.due_at <= now)).scalar_one()
            sent = conn.execute(select(func.count()).where(c.state == MessageState.SENT.value)).scalar_one()
        return waiting == 0 and len(mail_sink.messages) >= sent

    booked = 0
    reminded = 0
    for step in range(STEPS + 1):
        now = T0 + step * STEP
        clock.set(now)
        if step < STEPS - 2:  # two new bookings every half minute, visits later today
            bodies = []
            for _ in range(2):
                booked += 1
                visit = datetime(2026, 12, 1, 9, 0, tzinfo=UTC) + timedelta(minutes=15 * booked)
                bodies.append(json.dumps(created(f"B-{booked}", starts_at=visit, at=now,
                                                 cust=customer(f"c{booked}", email=f"kunde{booked}@example.org"))))
                reminded += now <= datetime(2026, 12, 1, 7, 0, tzinfo=UTC)  # booked before the morning reminder
            assert apply_events(ctx.store, bodies, now=now, source="test").applied == 2
        wait_for(lambda at=now: settled(at), f"what is due at {now:%H:%M:%S} to be sent", group, timeout_s=60)

    # a quiet spell in which both beats sweep again and again: any second send would show now
    before = {name: sweeps_sent(group, name) for name in ("beat-1", "beat-2")}
    wait_for(lambda: all(sweeps_sent(group, name) >= before[name] + 5 for name in before),
             "both beats to sweep five more times", group, timeout_s=30)
    wait_for(lambda: settled(now), "the last sweeps to finish", group, timeout_s=30)

    received = [mail["Message-ID"] for mail in mail_sink.messages]
    with ctx.store.engine.connect() as conn:
        states = dict(conn.execute(select(c.state, func.count()).group_by(c.state)).all())
        sent_ids = conn.execute(select(c.provider_message_id).where(c.state == MessageState.SENT.value)).scalars().all()
        sent_on_timeline = conn.execute(select(func.count()).select_from(t.timeline)
                                        .where(t.timeline.c.kind == "message.sent")).scalar_one()
    assert len(received) == len(set(received)), "a message reached the customer twice"
    assert sorted(received) == sorted(sent_ids)
    assert states.get(MessageState.SENT.value) == booked + reminded == sent_on_timeline
    assert reminded > 0 and booked == 2 * (STEPS - 2)
    assert set(states) <= {MessageState.SENT.value, MessageState.PLANNED.value}  # later reminders wait; none failed
    assert before["beat-1"] > 0 and before["beat-2"] > 0  # both beats were at work all along
    for name in ("beat-1", "beat-2"):  # and each sent housekeeping when it started (run twice: harmless)
        assert "Sending due task housekeeping" in (group.root / f"{name}.log").read_text(errors="replace")
    assert not list(tmp_path.glob("celerybeat-schedule*"))  # beat's schedule lives in memory
    ctx.close()
