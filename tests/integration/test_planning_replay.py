"""Issue 4, acceptance 4: a booking system's whole day, replayed through the ingester on
PostgreSQL, leaves exactly the messages the pure planner predicts for the final states."""

from __future__ import annotations

import json
import random
from datetime import timedelta

import redis
from sqlalchemy import func, select

from notifier.devtools import wait_for
from notifier.domain import events as ev
from notifier.domain import transitions as tr
from notifier.domain.planning import plan_booking
from notifier.services import normalize_phone, settings_for
from notifier.store import schema as t
from tests.conftest import START, customer, event, make_context, make_settings, settings_env

TENANT = "clinic-full"


def a_day(seed: int = 11) -> list[dict]:
    """A clinic's day: bookings made from 07:00 on, for today and the next days; moves,
    cancellations by both sides, confirmations, arrivals, consent changes, online requests."""
    rng = random.Random(seed)
    out, revisions, clock = [], {}, START  # 07:00 in Berlin
    for i in range(60):
        clock += timedelta(minutes=rng.randint(1, 12))
        kind = rng.random()
        if kind < 0.55 or not revisions:
            bid = f"d{i}"
            starts = (clock + timedelta(hours=rng.randint(2, 72))).replace(minute=rng.choice([0, 15, 30, 45]))
            cid = f"p{rng.randint(0, 15)}"
            online = rng.random() < 0.15
            out.append(event("booking.created", {
                "booking_id": bid, "starts_at": starts.isoformat(), "ends_at": (starts + timedelta(minutes=30))
                .isoformat(), "resource": rng.choice([{"id": "dr-weiss", "name": "Dr. Weiss", "type": "specialist"},
                                                      {"id": "room-1", "name": "Raum 1", "type": "equipment"}]),
                "customer": customer(cid, phone="0151 2345678" + str(int(cid[1:]) % 10),
                                     consents={"email": True, "sms": int(cid[1:]) % 3 == 0}),
                "source": "online" if online else "staff", "needs_approval": online},
                tenant=TENANT, at=clock))
            revisions[bid] = 1
            continue
        bid = rng.choice(sorted(revisions))
        revisions[bid] += 1
        rev = revisions[bid]
        op = rng.choice(["move", "cancel_c", "cancel_s", "confirm", "arrive", "approve"])
        if op == "move":
            starts = (clock + timedelta(hours=rng.randint(1, 48))).replace(minute=0)
            data = {"booking_id": bid, "starts_at": starts.isoformat(),
                    "ends_at": (starts + timedelta(minutes=30)).isoformat()}
            out.append(event("booking.rescheduled", data, tenant=TENANT, revision=rev, at=clock))
        elif op.startswith("cancel"):
            out.append(event("booking.cancelled", {"booking_id": bid, "by": "customer" if op == "cancel_c"
                                                   else "staff", "reason": "Umzug"}, tenant=TENANT, revision=rev,
                             at=clock))
        elif op == "confirm":
            out.append(event("booking.confirmed", {"booking_id": bid, "via": "phone"}, tenant=TENANT,
                             revision=rev, at=clock))
        elif op == "arrive":
            out.append(event("booking.visit_marked", {"booking_id": bid, "outcome": "arrived"}, tenant=TENANT,
                             revision=rev, at=clock))
        else:
            out.append(event("booking.status_changed", {"booking_id": bid, "status": {
                "id": "ok", "name": "Zugesagt", "kind": "confirmation"}}, tenant=TENANT, revision=rev, at=clock))
    return out


def predicted(ctx, events: list[dict]) -> set[tuple]:
    """The oracle: fold the events in order with the pure transitions, plan each final state."""
    with ctx.store.transaction() as tx:
        tenant = tx.tenant(TENANT)
    bookings, customers, resources = {}, {}, {}
    for raw in events:
        e = ev.parse_event(json.dumps(raw))
        if isinstance(e, ev.BookingCreatedEvent):
            phone, _ = normalize_phone(e.data.customer.phone, tenant.home_region)
            c = tr.customer_from(e.data.customer, TENANT, 0, phone, ev.utc(e.occurred_at))
            if c.newer_than(customers.get(c.id)):
                customers[c.id] = c
            resources.setdefault(e.data.resource.id, tr.resource_from(e.data.resource, TENANT))
            bookings[e.data.booking_id], _ = tr.booking_created(e)
        else:
            bookings[e.data.booking_id], _ = tr.apply_to_booking(bookings[e.data.booking_id], e)
    with ctx.store.transaction() as tx:  # the shipped resources keep their names; settings come from the tenant
        resources = {rid: tx.resource(TENANT, rid) or r for rid, r in resources.items()}
    out = set()
    for b in bookings.values():
        resource = resources[b.resource_id]
        # as the ingester plans: these settings configure no SMS provider, so SMS is never chosen (R27)
        for m in plan_booking(b, customers[b.customer_id], resource, tenant,
                              settings_for(tenant, resource, ctx.unavailable), now=START).messages:
            out.add((b.id, m.key, m.kind.value, m.channel.value, m.due_at))
    return out


def test_a_whole_day_through_the_ingester_matches_the_pure_planner(tmp_path, pg_url, redis_url, key_prefix, clock,
                                                                   procs):
    settings = make_settings(tmp_path, database_url=pg_url, events_url=redis_url,
                             events_queue=f"{key_prefix}.events", ingest_batch_max=7)
    ctx = make_context(settings)
    group = procs(settings_env(settings))
    group.start("ingester", "ingest")
    day = a_day()
    redis.Redis.from_url(redis_url).rpush(f"{key_prefix}.events", *[json.dumps(e) for e in day])

    def processed() -> int:
        with ctx.store.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(t.processed_events)).scalar_one()

    wait_for(lambda: processed() == len(day), "the day's events", group, timeout_s=120)
    m = t.messages.c
    with ctx.store.engine.connect() as conn:
        stored = {(r.booking_id, r.key, r.kind, r.channel, r.due_at) for r in conn.execute(
            select(m.booking_id, m.key, m.kind, m.channel, m.due_at).where(m.state == "planned"))}
    expected = predicted(ctx, day)
    # at 07:00 no visit has begun, so no late path yet (test_late_path follows one through its start)
    assert len(expected) > 100 and {k[2] for k in expected} >= {"info", "confirmation", "reminder", "feedback",
                                                               "change", "activity_unconfirmed"}
    assert stored == expected
    ctx.close()
