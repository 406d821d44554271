"""Issue 3, acceptance 1 (N2, P1): any order and any duplication of the same events ends in
the state of applying them once, in order."""

from __future__ import annotations

import json
import random
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from notifier.services import apply_events
from notifier.store import schema as t
from tests.conftest import START, created, customer, event

CUSTOMERS = ["c1", "c2"]
BOOKINGS = ["b1", "b2", "b3"]


@st.composite
def histories(draw):
    """A plausible history: bookings created, then moved, confirmed, marked, cancelled;
    customers changing consent and language; every event a minute after the one before."""
    clock = iter(START + timedelta(minutes=i) for i in range(1000))
    events = []
    booking_revision = {}
    customer_revision = {c: 0 for c in CUSTOMERS}
    for booking_id in draw(st.lists(st.sampled_from(BOOKINGS), min_size=1, max_size=3, unique=True)):
        cid = draw(st.sampled_from(CUSTOMERS))
        starts = START + timedelta(days=draw(st.integers(1, 5)), hours=draw(st.integers(3, 12)))
        events.append(created(booking_id, starts_at=starts, at=next(clock),
                              cust=customer(cid, language=draw(st.sampled_from(["de", "it"])))))
        booking_revision[booking_id] = 1
    for _ in range(draw(st.integers(0, 12))):
        op = draw(st.sampled_from(["move", "cancel", "confirm", "mark", "status", "consent"]))
        if op == "consent":
            cid = draw(st.sampled_from(CUSTOMERS))
            customer_revision[cid] += 1
            events.append(event("customer.updated", {"customer": customer(
                cid, language=draw(st.sampled_from(["de", "ru"])),
                consents={"email": draw(st.booleans()), "sms": draw(st.booleans())}, phone="0151 23456789")},
                revision=customer_revision[cid], at=next(clock)))
            continue
        booking_id = draw(st.sampled_from(sorted(booking_revision)))
        booking_revision[booking_id] += 1
        revision, at = booking_revision[booking_id], next(clock)
        if op == "move":
            starts = START + timedelta(days=draw(st.integers(0, 6)), hours=draw(st.integers(2, 14)))
            data = {"booking_id": booking_id, "starts_at": starts.isoformat(),
                    "ends_at": (starts + timedelta(minutes=45)).isoformat()}
            events.append(event("booking.rescheduled", data, revision=revision, at=at))
        elif op == "cancel":
            events.append(event("booking.cancelled", {"booking_id": booking_id, "by": "customer"},
                                revision=revision, at=at))
        elif op == "confirm":
            events.append(event("booking.confirmed", {"booking_id": booking_id, "via": "phone"},
                                revision=revision, at=at))
        elif op == "mark":
            events.append(event("booking.visit_marked", {"booking_id": booking_id, "outcome": "arrived"},
                                revision=revision, at=at))
        else:
            events.append(event("booking.status_changed", {"booking_id": booking_id, "status": {
                "id": "s2", "name": "Geprüft", "kind": "none"}}, revision=revision, at=at))
    return events


def reset(store) -> None:
    with store.transaction() as tx:
        for table in (t.send_attempts, t.timeline, t.messages, t.processed_events, t.held_events, t.dead_letters,
                      t.bookings, t.customers):
            tx.conn.execute(delete(table))


def state(store) -> dict:
    with store.engine.connect() as conn:
        bookings = sorted(tuple(r) for r in conn.execute(select(t.bookings)))
        customers = sorted(tuple(r) for r in conn.execute(select(t.customers)))
        m = t.messages.c
        live = sorted(tuple(r) for r in conn.execute(
            select(m.booking_id, m.key, m.kind, m.channel, m.state, m.due_at).where(m.state != "withdrawn")))
        held = conn.execute(select(t.held_events)).all()
    assert not held, "everything arrived, so nothing may stay held"
    return {"bookings": bookings, "customers": customers, "messages": live}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(histories(), st.randoms(use_true_random=False), st.integers(1, 5))
def test_any_order_and_duplication_converges_to_in_order_once(ctx, history, rng: random.Random, batches):
    bodies = [json.dumps(e) for e in history]
    reset(ctx.store)
    apply_events(ctx.store, bodies, now=START, source="in-order")
    expected = state(ctx.store)

    reset(ctx.store)
    delivered = bodies + [rng.choice(bodies) for _ in range(rng.randint(0, len(bodies)))]
    rng.shuffle(delivered)
    cuts = sorted(rng.sample(range(1, len(delivered)), min(batches - 1, len(delivered) - 1))) \
        if len(delivered) > 1 else []
    for start, end in zip([0, *cuts], [*cuts, len(delivered)], strict=True):
        apply_events(ctx.store, delivered[start:end], now=START, source="shuffled")
    assert state(ctx.store) == expected
