"""Realistic event streams for the benchmarks: bookings created, moved, cancelled, customers changing."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta

TENANTS = ("salon-berlin", "studio-roma")
RESOURCES = {"salon-berlin": [("anna", "specialist"), ("jonas", "specialist"), ("sauna", "equipment")],
             "studio-roma": [("giulia", "specialist"), ("room-a", "equipment")]}
START = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


def _event(kind: str, tenant: str, revision: int, at: datetime, data: dict) -> str:
    return json.dumps({"schema_version": 1, "event_id": uuid.uuid4().hex, "type": kind,
                       "occurred_at": at.isoformat(), "tenant_id": tenant, "revision": revision, "data": data},
                      separators=(",", ":"))


def booking_events(n: int, *, seed: int = 7, customers: int = 5000) -> list[str]:
    """`n` events: ~60% created, 25% rescheduled, 10% cancelled, 5% customer.updated, each
    booking's events in revision order (as a booking system publishes them)."""
    rng = random.Random(seed)
    out: list[str] = []
    open_bookings: list[tuple[str, str, int]] = []
    customer_revision: dict[tuple[str, str], int] = {}
    at = START
    i = 0
    while len(out) < n:
        at += timedelta(milliseconds=200)
        roll = rng.random()
        if roll < 0.6 or not open_bookings:
            tenant = rng.choice(TENANTS)
            resource, rtype = rng.choice(RESOURCES[tenant])
            cid = f"c{rng.randrange(customers)}"
            starts = START + timedelta(days=rng.randrange(1, 30), hours=rng.randrange(2, 12))
            i += 1
            bid = f"bk{i}"
            out.append(_event("booking.created", tenant, 1, at, {
                "booking_id": bid,
                "customer": {"id": cid, "name": f"Kunde {cid}", "email": f"{cid}@example.org",
                             "phone": "0151 23456789" if tenant == "salon-berlin" else "+39 347 123 4567",
                             "language": "de" if tenant == "salon-berlin" else "it",
                             "consents": {"email": True, "sms": int(cid[1:]) % 10 < 3}, "privacy_accepted": True},
                "resource": {"id": resource, "name": resource.title(), "type": rtype},
                "starts_at": starts.isoformat(), "ends_at": (starts + timedelta(minutes=45)).isoformat()}))
            open_bookings.append((tenant, bid, 1))
        elif roll < 0.85:
            k = rng.randrange(len(open_bookings))
            tenant, bid, rev = open_bookings[k]
            starts = START + timedelta(days=rng.randrange(1, 30), hours=rng.randrange(2, 12))
            out.append(_event("booking.rescheduled", tenant, rev + 1, at, {
                "booking_id": bid, "starts_at": starts.isoformat(),
                "ends_at": (starts + timedelta(minutes=45)).isoformat()}))
            open_bookings[k] = (tenant, bid, rev + 1)
        elif roll < 0.95:
            tenant, bid, rev = open_bookings.pop(rng.randrange(len(open_bookings)))
            out.append(_event("booking.cancelled", tenant, rev + 1, at, {"booking_id": bid, "by": "customer"}))
        else:
            tenant = rng.choice(TENANTS)
            cid = f"c{rng.randrange(customers)}"
            rev = customer_revision.get((tenant, cid), 0) + 1
            customer_revision[(tenant, cid)] = rev
            out.append(_event("customer.updated", tenant, rev, at, {"customer": {
                "id": cid, "name": f"Kunde {cid}", "email": f"{cid}@example.org",
                "language": "de" if tenant == "salon-berlin" else "it",
                "consents": {"email": True, "sms": False}, "privacy_accepted": True}}))
    return out
