"""Housekeeping: what neither an event nor a sweep clears away. Beat runs it every
`housekeeping_interval_s`.

- Held events whose predecessor never came are applied with the gap recorded, or dead-lettered
  when their booking never came (`hold_s`; the ingesters do it too, under the same locks).
- Processed event ids, published outbox events, send attempts, customers' messages (with the
  attempts' retention) and dead letters older than their
  retention are deleted, `batch` rows per statement, oldest first, each statement its own transaction.

Expired claims need nothing here: the due sweep takes back every claim whose lease ran out.

Two beats, or a run that overlaps the next, do no harm: each delete claims its rows with
`FOR UPDATE SKIP LOCKED` (two runs split the rows, a row is deleted once), a delete of what is
already gone deletes nothing, and held events are decided under the bookings' locks. Every
question is answered from an index on its time column (migration 0002), so a run costs what it
removes, not what the tables hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Delete, delete, select

from notifier.services import release_expired_holds
from notifier.store import schema as t
from notifier.store.sql import Store, among

# what is deleted past its retention: table, key column, time column (each has an index on it)
RETAINED = {
    "processed_events": (t.processed_events, t.processed_events.c.event_id, t.processed_events.c.processed_at),
    "outbox": (t.outbox, t.outbox.c.id, t.outbox.c.published_at),  # published ones only: NULL is never < cutoff
    "attempts": (t.send_attempts, t.send_attempts.c.id, t.send_attempts.c.started_at),
    # status reports that never found their message (another system's, on a shared provider account)
    "pending_statuses": (t.pending_statuses, t.pending_statuses.c.id, t.pending_statuses.c.received_at),
    # providers' answers written down before their send's record (notifier/receipts.py)
    "receipts": (t.receipts, t.receipts.c.id, t.receipts.c.received_at),
    # events that could not be applied: their (capped) bodies hold personal data (migration 0011)
    "dead_letters": (t.dead_letters, t.dead_letters.c.id, t.dead_letters.c.received_at),
    # customers' messages (R3, R11, R14): their text is personal data; kept as long as send attempts
    "inbound_messages": (t.inbound_messages, t.inbound_messages.c.id, t.inbound_messages.c.received_at),
}
PENDING_STATUSES_S = 86400.0  # a send is recorded long before a day is out


@dataclass
class HousekeepingReport:
    holds_released: int = 0  # held events applied (the gap recorded on the timeline) or found stale
    holds_dead: int = 0  # held events whose booking never came: dead letters
    processed_events: int = 0  # rows deleted past retention
    outbox: int = 0
    attempts: int = 0
    pending_statuses: int = 0
    receipts: int = 0
    dead_letters: int = 0
    inbound_messages: int = 0


def expired_rows_statement(what: str, *, before: datetime, limit: int, dialect: str) -> Delete:
    """Delete at most `limit` of the oldest rows of `what` older than `before`."""
    table, key, at = RETAINED[what]
    oldest = select(key).where(at < before).order_by(at).limit(limit)
    if dialect == "postgresql":
        oldest = oldest.with_for_update(skip_locked=True)  # two runs at once split the rows
    return delete(table).where(among(key, oldest, dialect))


def delete_expired(store: Store, what: str, *, before: datetime, batch: int, max_batches: int = 100) -> int:
    """Delete `what` older than `before` in statements of `batch` rows; returns how many went."""
    total = 0
    for _ in range(max_batches):  # a bounded run: a huge backlog is worked off over several runs
        with store.engine.begin() as conn:
            deleted = conn.execute(expired_rows_statement(what, before=before, limit=batch,
                                                          dialect=conn.dialect.name)).rowcount
        total += deleted
        if deleted < batch:
            break
    return total


def housekeeping(store: Store, *, now: datetime, hold_s: float, retention_s: Mapping[str, float], batch: int,
                 regions: Mapping[str, Iterable[str]] | None = None) -> HousekeepingReport:
    """One run. `retention_s` maps "processed_events", "outbox", "attempts" to seconds; 0 or
    absent keeps them for ever."""
    report = HousekeepingReport()
    while True:  # release_expired_holds takes the oldest 100 per call
        held = release_expired_holds(store, now=now, hold_s=hold_s, source="housekeeping", regions=regions)
        report.holds_released += held.applied + held.stale
        report.holds_dead += held.dead
        if held.applied + held.stale + held.dead == 0:
            break
    for what in RETAINED:
        keep_s = retention_s.get(what) or 0
        if keep_s > 0:
            setattr(report, what, delete_expired(store, what, before=now - timedelta(seconds=keep_s), batch=batch))
    return report


def retention_from(settings: Any) -> dict[str, float]:
    return {"processed_events": settings.retention_processed_events_s, "outbox": settings.retention_outbox_s,
            "attempts": settings.retention_attempts_s, "pending_statuses": PENDING_STATUSES_S,
            "receipts": PENDING_STATUSES_S,
            "dead_letters": settings.retention_dead_letters_s, "inbound_messages": settings.retention_attempts_s}
