"""Housekeeping with two beats (N2, P2): two runs at once on PostgreSQL split the work. Each held
event is decided once (one dead letter, not two), each expired row is deleted once, neither run
fails, and what the two runs report adds up to what there was."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

from sqlalchemy import func, select

from notifier.housekeeping import HousekeepingReport, housekeeping
from notifier.services import apply_events
from notifier.store import schema as t
from tests.conftest import START, event, make_context, make_settings

GHOSTS = 40  # bookings whose booking.created never comes: their later events are held
OLD_IDS = 3000  # processed event ids past retention


def test_N2_two_housekeeping_runs_at_once_do_everything_once(tmp_path, pg_url, clock):
    ctx = make_context(make_settings(tmp_path, database_url=pg_url), channels={})
    moved = [event("booking.rescheduled", {"booking_id": f"ghost-{i}", "starts_at": START.isoformat(),
                                           "ends_at": (START + timedelta(hours=1)).isoformat()}, revision=2)
             for i in range(GHOSTS)]
    assert apply_events(ctx.store, [json.dumps(e) for e in moved], now=START, source="test").held == GHOSTS
    with ctx.store.transaction() as tx:
        tx.conn.execute(t.processed_events.insert(), [
            {"event_id": f"old-{i}", "tenant_id": "salon-berlin", "type": "booking.created",
             "aggregate": f"booking:old-{i}", "revision": 1, "outcome": "applied",
             "processed_at": START - timedelta(days=60)} for i in range(OLD_IDS)])

    reports: list[HousekeepingReport] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(2)

    def beat_run() -> None:
        gate.wait()
        try:
            reports.append(housekeeping(ctx.store, now=START + timedelta(hours=1), hold_s=300, batch=100,
                                        retention_s={"processed_events": 30 * 86400}))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    runs = [threading.Thread(target=beat_run) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=120)
    assert errors == []
    with ctx.store.engine.connect() as conn:
        dead = conn.execute(select(t.dead_letters.c.body)).scalars().all()
        held = conn.execute(select(func.count()).select_from(t.held_events)).scalar_one()
        ids = conn.execute(select(t.processed_events.c.event_id)).scalars().all()
    assert sorted(json.loads(body)["data"]["booking_id"] for body in dead) == sorted(f"ghost-{i}" for i in range(GHOSTS))
    assert held == 0
    assert not [i for i in ids if i.startswith("old-")]
    assert sum(r.holds_dead for r in reports) == GHOSTS
    assert sum(r.processed_events for r in reports) == OLD_IDS
    ctx.close()
