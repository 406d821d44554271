"""The state sweep (R12, R16-R18): markers light at their moment, counters are exact, an
unmarked visit's slot is released with the staff told and the booking system informed."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import select

from notifier.services import apply_events, publish_outbox, sweep_states, timeline_of
from notifier.store import schema as t
from tests.conftest import START, api_client, created, customer, event
from tests.unit.test_services import run_due

TENANT = "clinic-full"
VISIT = START + timedelta(days=1, hours=3)  # Wednesday 10:00 in Berlin


def book(ctx, booking_id="b1"):
    body = created(booking_id, tenant=TENANT, starts_at=VISIT, cust=customer(f"c-{booking_id}"),
                   resource={"id": "dr-weiss", "name": "Dr. Weiss", "type": "specialist"})
    apply_events(ctx.store, [json.dumps(body)], now=START, source="test")


def row(ctx, booking_id="b1"):
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(t.bookings).where(t.bookings.c.id == booking_id)).one()


def outbound(ctx):
    sent = []
    publish_outbox(ctx.store, lambda type_, tenant, payload: sent.append((type_, payload)), now=ctx.clock.now())
    return sent


def at(ctx, moment):
    ctx.clock.set(moment)
    return sweep_states(ctx.store, now=moment)


def test_R12_the_red_marker_lights_two_hours_before_and_goes_off_on_confirmation(ctx):
    book(ctx)
    assert at(ctx, VISIT - timedelta(hours=3)) == 0  # nothing due yet: the sweep touches no booking
    assert at(ctx, VISIT - timedelta(hours=2, minutes=-1)) == 1
    assert row(ctx).red_since == VISIT - timedelta(hours=2)  # the moment it lit, not when the sweep ran
    assert [p["red"] for kind, p in outbound(ctx) if kind == "counters.changed"] == [True]
    apply_events(ctx.store, [json.dumps(event("booking.confirmed", {"booking_id": "b1", "via": "phone"},
                                              tenant=TENANT, revision=2))], now=VISIT - timedelta(hours=1),
                 source="test")
    assert row(ctx).red_since is None
    assert [p["red"] for kind, p in outbound(ctx) if kind == "counters.changed"] == [False]


def test_R16_R17_R18_the_late_path_to_an_automatic_release(ctx):
    book(ctx)
    at(ctx, VISIT + timedelta(minutes=6))
    assert row(ctx).late_since == VISIT + timedelta(minutes=5) and row(ctx).late_counter_since is None
    run_due(ctx)  # the late follow-up to the customer (R16)
    at(ctx, VISIT + timedelta(minutes=31))  # R18: still not marked after 30 minutes
    released = row(ctx)
    assert (released.status, released.cancelled_by) == ("cancelled", "release") and released.released_at
    kinds = [e["kind"] for e in timeline_of(ctx.store, TENANT, "b1")]
    assert "marker.late.on" in kinds and "slot.released" in kinds
    assert ("slot.released", "b1") in [(k, p["booking_id"]) for k, p in outbound(ctx)]
    run_due(ctx)  # the staff hear of it (R17's activity and R18's notice)
    with ctx.store.engine.connect() as conn:
        sent = dict(conn.execute(select(t.messages.c.kind, t.messages.c.state)).all())
    assert sent["late"] == "sent" and sent["staff_released"] == "failed"  # no webhook configured in this test
    assert at(ctx, VISIT + timedelta(hours=5)) == 0  # a released booking is not swept again


def test_R16_R27_under_the_defaults_the_late_counter_lights_before_the_slot_is_released(ctx):
    """The late counter came at +2 h (Bitrix24's delayedCounterDelay) while the slot went at +30 min,
    taking the booking off the board: it could never light. Under the defaults it lights at +10 min."""
    book(ctx)
    at(ctx, VISIT + timedelta(minutes=6))
    assert row(ctx).late_since == VISIT + timedelta(minutes=5) and row(ctx).late_counter_since is None
    at(ctx, VISIT + timedelta(minutes=11))
    assert row(ctx).late_counter_since == VISIT + timedelta(minutes=10) and row(ctx).status == "active"
    lit = [p for kind, p in outbound(ctx) if kind == "counters.changed"]
    assert [(p["late"], p["late_counter"]) for p in lit] == [(True, False), (True, True)]
    assert "marker.late_counter.on" in [e["kind"] for e in timeline_of(ctx.store, TENANT, "b1")]
    at(ctx, VISIT + timedelta(minutes=31))
    assert row(ctx).status == "cancelled" and row(ctx).late_counter_since is None


def test_R12_R16_counters_are_exact_whenever_they_are_read(ctx):
    book(ctx, "b1")
    book(ctx, "b2")
    apply_events(ctx.store, [json.dumps(event("booking.confirmed", {"booking_id": "b2", "via": "desk"},
                                              tenant=TENANT, revision=2))], now=START, source="test")
    client = api_client(ctx)
    ctx.clock.set(VISIT - timedelta(minutes=90))  # no sweep has run: the counters are right anyway
    assert client.get(f"/api/tenants/{TENANT}/counters", params={"day": "2026-12-02"}).json() == {
        "dr-weiss": {"unconfirmed": 1, "red": 1, "late": 0, "late_counter": 0}}
    ctx.clock.set(VISIT + timedelta(minutes=20))  # neither marked arrived: both late
    counts = client.get(f"/api/tenants/{TENANT}/counters", params={"day": "2026-12-02"}).json()["dr-weiss"]
    assert (counts["late"], counts["late_counter"], counts["red"]) == (2, 2, 0)
    ctx.clock.set(VISIT + timedelta(minutes=31))  # due for release: off the board even before the sweep
    assert client.get(f"/api/tenants/{TENANT}/counters", params={"day": "2026-12-02"}).json()["dr-weiss"] == {
        "unconfirmed": 0, "red": 0, "late": 0, "late_counter": 0}
