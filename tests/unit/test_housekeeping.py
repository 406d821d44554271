"""Housekeeping (issue 7, P2's third beat task), on the embedded store: what is past its retention
goes, what is still needed stays, a second run changes nothing, and a redelivered event whose id
was forgotten still does not send anything twice (N2)."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import func, select

from notifier.housekeeping import HousekeepingReport, housekeeping
from notifier.services import apply_events, publish_outbox
from notifier.store import schema as t
from tests.conftest import START, created, event
from tests.unit.test_services import run_due

DAY = timedelta(days=1)
RETENTION = {"processed_events": 30 * 86400, "outbox": 7 * 86400, "attempts": 90 * 86400}


def apply(ctx, *events, now=START):
    return apply_events(ctx.store, [json.dumps(e) for e in events], now=now, source="test")


def count(ctx, table, *where):
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def run(ctx, now):
    return housekeeping(ctx.store, now=now, hold_s=300, retention_s=RETENTION, batch=2)


def test_rows_past_retention_go_and_the_rest_stays_and_a_second_run_does_nothing(ctx):
    apply(ctx, created("b1"), created("b2"))  # processed ids at START, info emails due at once
    assert run_due(ctx)["sent"] == 2  # two attempts at START
    with ctx.store.transaction() as tx:  # one outbox event published at START, one never published
        tx.conn.execute(t.outbox.insert(), [
            {"tenant_id": "salon-berlin", "type": "slot.released", "payload": {}, "created_at": START},
            {"tenant_id": "salon-berlin", "type": "slot.released", "payload": {}, "created_at": START}])
    publish_outbox(ctx.store, lambda *a: None, now=START, limit=1)
    apply(ctx, created("b3", starts_at=START + 30 * DAY), now=START + 29 * DAY)  # a recent event id

    report = run(ctx, START + 31 * DAY)  # ids past 30 days, published outbox rows past 7 days
    assert report == HousekeepingReport(processed_events=2, outbox=1)
    assert count(ctx, t.processed_events) == 1  # b3's
    assert count(ctx, t.outbox) == 1 and count(ctx, t.outbox, t.outbox.c.published_at.is_(None)) == 1  # N1
    assert count(ctx, t.send_attempts) == 2  # attempts are kept for 90 days

    assert run(ctx, START + 91 * DAY) == HousekeepingReport(processed_events=1, attempts=2)
    assert run(ctx, START + 91 * DAY) == HousekeepingReport()  # nothing left to do: the same answer again
    assert count(ctx, t.messages) > 0 and count(ctx, t.timeline) > 0  # messages and timelines are not its business


def test_N2_an_event_redelivered_after_its_id_was_forgotten_still_sends_nothing_twice(ctx):
    first = created("b1")
    confirmed = event("booking.confirmed", {"booking_id": "b1", "via": "phone"}, revision=2)
    apply(ctx, first, confirmed)
    assert run_due(ctx)["sent"] == 1
    assert run(ctx, START + 31 * DAY).processed_events == 2
    report = apply(ctx, first, confirmed, now=START + 32 * DAY)  # the publisher sends both again
    assert (report.applied, report.stale) == (0, 2)  # older than what the booking has seen
    assert run_due(ctx)["sent"] == 0
    assert count(ctx, t.messages, t.messages.c.kind == "info") == 1


def test_a_held_event_whose_booking_never_came_is_dead_lettered_without_an_ingester(ctx):
    moved = event("booking.rescheduled", {"booking_id": "ghost", "starts_at": START.isoformat(),
                                          "ends_at": (START + timedelta(hours=1)).isoformat()}, revision=2)
    assert apply(ctx, moved).held == 1
    assert run(ctx, START + timedelta(seconds=299)).holds_dead == 0  # still waiting for booking.created
    assert run(ctx, START + timedelta(seconds=301)).holds_dead == 1
    assert count(ctx, t.held_events) == 0
    with ctx.store.engine.connect() as conn:
        [reason] = conn.execute(select(t.dead_letters.c.reason)).scalars()
    assert "booking:ghost never arrived" in reason
    assert run(ctx, START + timedelta(seconds=400)) == HousekeepingReport()


def test_a_retention_of_zero_keeps_rows_for_ever(ctx):
    apply(ctx, created("b1"))
    report = housekeeping(ctx.store, now=START + 3650 * DAY, hold_s=300, batch=100,
                          retention_s={"processed_events": 0, "outbox": 0, "attempts": 0})
    assert report == HousekeepingReport()
    assert count(ctx, t.processed_events) == 1
