"""Use cases: apply events, sweep what is due, dispatch a batch, load tenants.

Each function receives its ports (store, renderer, channels, clock) as arguments through
the `Context` built by `notifier.bootstrap`; none reads configuration or the clock itself.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError

from notifier.domain import events as ev
from notifier.domain import transitions as tr
from notifier.domain.appointment import Appointment, appointment
from notifier.domain.config import InvalidConfig, tenant_config
from notifier.domain.delivery import PROVIDER_STATUS, advance
from notifier.domain.model import (
    Booking,
    BookingStatus,
    Channel,
    Customer,
    MessageState,
    NotificationSettings,
    NotPlanned,
    Resource,
    Tenant,
)
from notifier.domain.outbound import message_event
from notifier.domain.planning import (
    apply_flags,
    booking_flags,
    card_sent_in,
    diff_plan,
    failed_keys,
    next_flag_change,
    plan_booking,
    sent_keys,
)
from notifier.domain.replies import opted_out_by_error
from notifier.links import well_formed
from notifier.phones import normalize_phone, read_phone  # noqa: F401 - normalize_phone: part of the API
from notifier.producers import Binding
from notifier.store import schema as t
from notifier.store.batch import BatchSession
from notifier.store.bulk import insert_rows
from notifier.store.sql import Store, Tx, booking_from, dead_letter_row, is_outage, state_checks_statement

log = logging.getLogger("notifier")


# --- tenants -----------------------------------------------------------------------------

class TenantFilesInvalid(ValueError):
    """Some tenant files did not fit (each line: file, key path, reason); the others were loaded."""

    def __init__(self, problems: list[str], loaded: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems, self.loaded = problems, loaded


def load_tenants(store: Store, folder: Path, *, now: datetime) -> list[str]:
    """Create or update tenants and their resources from `<folder>/*.yaml`, each file in one
    transaction. A file that does not fit the model (`domain.config`) loads nothing; the others
    load, and `TenantFilesInvalid` then names every problem with its file and key path (N3)."""
    loaded, problems = [], []
    for path in sorted(folder.glob("*.yaml")):
        try:
            doc = tenant_config(yaml.safe_load(path.read_text(encoding="utf-8")))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: not a YAML file: {' '.join(str(exc).split())}")
            continue
        except InvalidConfig as exc:
            problems += [f"{path}: {problem}" for problem in exc.problems]
            continue
        tenant = Tenant(id=doc.id, name=doc.name, timezone=doc.timezone, home_region=doc.home_region,
                        language=doc.language, channels=frozenset(Channel(c) for c in doc.channels),
                        company=dict(doc.company), settings=doc.settings.overrides(), webhook_url=doc.webhook_url,
                        message_events=doc.message_events, sender=doc.sender.values())
        with store.transaction() as tx:
            tx.save_tenant(tenant, now)
            for item in doc.resources:
                existing = tx.resource(tenant.id, item.id)
                settings = item.settings.overrides() if item.settings is not None else \
                    (existing.settings if existing else {})
                tx.save_resource(Resource(id=item.id, tenant_id=tenant.id, name=item.name, type=item.type,
                                          timezone=item.timezone, settings=settings))
        loaded.append(tenant.id)
    if problems:
        raise TenantFilesInvalid(problems, loaded)
    return loaded


# --- ingestion ---------------------------------------------------------------------------

@dataclass
class IngestReport:
    applied: int = 0
    duplicates: int = 0
    stale: int = 0
    held: int = 0
    dead: int = 0
    dead_reasons: list[str] = field(default_factory=list)
    deferred: list[int] = field(default_factory=list)  # positions of the bodies left for the next batch
    # (reason, kind) -> `message.not_planned` kinds written (`notifier_not_planned_total`, counted after the commit)
    not_planned: dict[tuple[str, str], int] = field(default_factory=dict)

    def merge(self, other: "IngestReport") -> None:
        for name in ("applied", "duplicates", "stale", "held", "dead"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.dead_reasons.extend(other.dead_reasons)
        for key, n in other.not_planned.items():
            self.not_planned[key] = self.not_planned.get(key, 0) + n


def _text(body: bytes | str) -> str:
    return body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body


def apply_events(store: Store, bodies: Iterable[bytes | str], *, now: datetime, source: str,
                 regions: Mapping[str, Iterable[str]] | None = None, wait_for_locks: bool = True,
                 bound: Sequence[Binding | None] | None = None) -> IngestReport:
    """Apply raw events in one transaction. Bad ones go to the dead-letter store; a database
    error propagates so the caller keeps the batch unacknowledged and retries it (N1).

    The batch is a unit of work (`BatchSession`): everything it names is loaded in a few
    queries, changed in memory, and written back in bulk. Events are applied in revision
    order per aggregate, so a batch that carries a booking's whole history holds nothing.

    A booking or customer another ingester's batch holds is waited for, or with
    `wait_for_locks=False` left alone: its events are neither applied nor recorded, and
    their positions in `bodies` come back in `report.deferred` for the caller to offer again.

    Isolation (N3): the batch runs in a savepoint. An error that is not an outage (`is_outage`:
    a value the database refuses, a constraint, a bug) is the input's fault: the batch is split in
    halves, each applied in a savepoint of its own, down to the event at fault, which becomes a
    dead letter with the reason while the rest of the batch commits. Only an outage propagates.

    `bound`, parallel to `bodies`: the tenants the queue each came by may speak for (a producer's,
    notifier/producers.py); an event for another tenant is a dead letter. None: any tenant."""
    bodies = list(bodies)
    with store.transaction() as tx:
        report = _apply_isolating(tx.conn, bodies, list(range(len(bodies))), now=now, source=source,
                                  regions=regions, wait_for_locks=wait_for_locks, bound=bound)
    _count_not_planned(report.not_planned)
    return report


def _count_not_planned(counts: dict[tuple[str, str], int]) -> None:
    """The `notifier_not_planned_total` metric, once the transaction that wrote them committed."""
    if counts:
        from notifier.observability.metrics import count_not_planned

        count_not_planned(counts)


def _apply_isolating(conn: Any, bodies: list[bytes | str], positions: list[int], *, now: datetime, source: str,
                     regions: Mapping[str, Iterable[str]] | None, wait_for_locks: bool,
                     bound: Sequence[Binding | None] | None = None) -> IngestReport:
    try:
        with conn.begin_nested():
            report = _apply_batch(conn, [bodies[i] for i in positions], now=now, source=source, regions=regions,
                                  wait_for_locks=wait_for_locks, bound=[bound[i] for i in positions] if bound else None)
    except Exception as exc:  # noqa: BLE001 - an outage propagates; anything else is some event's fault
        if is_outage(exc):
            raise
        if len(positions) > 1:  # halves, waiting for locks: nothing is deferred past this point
            half = len(positions) // 2
            report = _apply_isolating(conn, bodies, positions[:half], now=now, source=source, regions=regions,
                                      wait_for_locks=True, bound=bound)
            report.merge(_apply_isolating(conn, bodies, positions[half:], now=now, source=source, regions=regions,
                                          wait_for_locks=True, bound=bound))
            return report
        reason = _refusal(exc)
        log.warning("event refused by the store, dead-lettered: %s", reason)
        report = IngestReport(dead=1, dead_reasons=[reason])
        conn.execute(t.dead_letters.insert().values(**dead_letter_row(source, reason, bodies[positions[0]], now)))
        return report
    report.deferred = [positions[i] for i in report.deferred]
    return report


def _refusal(exc: BaseException) -> str:
    """Why the store refused an event, in one line (the database's own words where it spoke)."""
    if isinstance(exc, DBAPIError):
        words = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        return f"refused by the database ({exc.orig.__class__.__name__ if exc.orig else 'error'}): {words[:300]}"
    return f"internal error: {exc.__class__.__name__}: {str(exc)[:300]}"


def _apply_batch(conn: Any, bodies: list[bytes | str], *, now: datetime, source: str,
                 regions: Mapping[str, Iterable[str]] | None, wait_for_locks: bool,
                 bound: Sequence[Binding | None] | None = None) -> IngestReport:
    report = IngestReport()
    parsed: list[tuple[ev.Event, str, int]] = []
    session = BatchSession(conn)
    session.regions = dict(regions or {})
    for position, body in enumerate(bodies):
        try:
            event = ev.parse_event(body)
        except ev.InvalidEvent as exc:
            _dead(session, report, source, f"invalid event: {exc.reason}", body, now)
            continue
        refused = bound[position].refuses(event.tenant_id) if bound and bound[position] is not None else None
        if refused:  # a producer speaking for a tenant it is not bound to
            _dead(session, report, source, refused, body, now)
            continue
        parsed.append((event, _text(body), position))
    parsed.sort(key=lambda item: (item[0].tenant_id, ev.aggregate_of(item[0]), item[0].revision))
    busy = _preload(session, [e for e, _, _ in parsed], wait=wait_for_locks)
    if busy:
        report.deferred = sorted(position for event, _, position in parsed if event.event_id in busy)
        parsed = [item for item in parsed if item[0].event_id not in busy]
    fresh = _claim(session, [e for e, _, _ in parsed if session.tenant(e.tenant_id) is not None], now)
    for event, text, _ in parsed:
        if session.tenant(event.tenant_id) is None:
            _dead(session, report, source, f"unknown tenant {event.tenant_id!r}", text, now)
            continue
        if event.event_id not in fresh:
            report.duplicates += 1
            continue
        fresh.discard(event.event_id)  # the same event twice in one batch
        session.begin_event()
        try:
            outcome = _apply_one(session, event, text, now)
        except DBAPIError:
            raise
        except Refused as exc:
            session.rollback_event()
            session.forget_claim(event.event_id)
            _dead(session, report, source, str(exc), text, now)
            continue
        except Exception as exc:  # noqa: BLE001 - a bug on one event must not stop the others (N3)
            session.rollback_event()
            log.exception("event could not be applied", extra={"event_id": event.event_id})
            session.forget_claim(event.event_id)
            _dead(session, report, source, f"internal error: {exc.__class__.__name__}: {exc}", text, now)
            continue
        session.commit_event()
        setattr(report, outcome, getattr(report, outcome) + 1)
    session.flush(now)
    report.not_planned = dict(session.not_planned_written)
    return report


def _lock_keys(event: ev.Event) -> list[str]:
    """The advisory locks an event's application needs before anything is loaded: its booking,
    and the customer it names (a booking's own customer is only known once it is loaded)."""
    kind, aggregate_id = ev.aggregate_of(event)
    keys = [f"b:{event.tenant_id}:{aggregate_id}"] if kind == "booking" else []
    if isinstance(event, (ev.BookingCreatedEvent, ev.CustomerUpdatedEvent)):
        keys.append(f"c:{event.tenant_id}:{event.data.customer.id}")
    return keys


def _preload(session: BatchSession, events: list[ev.Event], *, wait: bool = True) -> set[str]:
    """Lock and load what the batch's events touch. Returns the ids of the events left alone
    because another transaction holds one of their locks (only when not `wait`)."""
    if wait or session.conn.dialect.name != "postgresql":
        return _lock_and_load(session, events, wait=wait)
    session.conn.exec_driver_sql("SAVEPOINT ingest_locks")
    try:
        busy = _lock_and_load(session, events, wait=False)
    except Exception:
        _drop_tried_locks(session)
        raise
    session.conn.exec_driver_sql("RELEASE SAVEPOINT ingest_locks")
    return busy


def _drop_tried_locks(session: BatchSession) -> None:
    """After a failed lock step: session locks are not undone by a rollback, so they are dropped
    here, inside the transaction. A connection that is gone took them with it (the server drops
    a closed session's locks); one that cannot drop them is closed, for the same effect. The
    caller's error is what propagates (a database outage is retried, N1)."""
    conn = session.conn
    if conn.invalidated:
        return
    try:
        conn.exec_driver_sql("ROLLBACK TO SAVEPOINT ingest_locks")
        session.drop_session_locks()
    except DBAPIError:
        conn.invalidate()


def _lock_and_load(session: BatchSession, events: list[ev.Event], *, wait: bool) -> set[str]:
    needs = {e.event_id: _lock_keys(e) for e in events}
    refused = session.take((k for keys in needs.values() for k in keys), wait=wait)
    busy = {event_id for event_id, keys in needs.items() if refused.intersection(keys)}
    events = [e for e in events if e.event_id not in busy]
    bookings, customers, resources = set(), set(), set()
    for event in events:
        kind, aggregate_id = ev.aggregate_of(event)
        if kind == "booking":
            bookings.add((event.tenant_id, aggregate_id))
        if isinstance(event, ev.BookingCreatedEvent):
            customers.add((event.tenant_id, event.data.customer.id))
            resources.add((event.tenant_id, event.data.resource.id))
        elif isinstance(event, ev.CustomerUpdatedEvent):
            customers.add((event.tenant_id, event.data.customer.id))
    session.preload({e.tenant_id for e in events}, bookings, customers, resources)
    updated = {(e.tenant_id, e.data.customer.id) for e in events
               if isinstance(e, ev.CustomerUpdatedEvent) or _changes_reach(session, e)}
    siblings = session.active_of_customers(updated) if updated else {}
    if refused := session.take((f"b:{t}:{b}" for (t, _), bs in siblings.items() for b in bs), wait=wait):
        # a customer one of whose bookings another batch holds: their events wait for the next batch
        blocked = {f"c:{t}:{c}" for (t, c), bs in siblings.items() if any(f"b:{t}:{b}" in refused for b in bs)}
        busy |= {event_id for event_id, keys in needs.items() if blocked.intersection(keys)}
        events = [e for e in events if e.event_id not in busy]
        siblings = {k: v for k, v in siblings.items() if f"c:{k[0]}:{k[1]}" not in blocked}
    session.prefetch_active_of_customers(set(siblings), siblings)
    # the customers and resources of the bookings the batch touches, for planning
    known = [b for b in (session.bookings.get(k) for k in bookings) if b is not None]
    if refused := session.take({f"c:{b.tenant_id}:{b.customer_id}" for b in known}, wait=wait):
        held_by_others = {(b.tenant_id, b.id) for b in known if f"c:{b.tenant_id}:{b.customer_id}" in refused}
        busy |= {e.event_id for e in events if ev.aggregate_of(e)[0] == "booking"
                 and (e.tenant_id, ev.aggregate_of(e)[1]) in held_by_others}
        known = [b for b in known if (b.tenant_id, b.id) not in held_by_others]
    session.preload((), (), {(b.tenant_id, b.customer_id) for b in known},
                    {(b.tenant_id, b.resource_id) for b in known})
    if not wait:  # what only the deferred events took goes back now; the rest ends with the transaction
        needed = {k for e in events if e.event_id not in busy for k in needs[e.event_id]}
        needed |= {f"c:{b.tenant_id}:{b.customer_id}" for b in known}
        needed |= {f"b:{t}:{b}" for (t, _), bs in siblings.items() for b in bs}
        session.settle_locks(needed)
    return busy


def _changes_reach(session: BatchSession, event: ev.Event) -> bool:
    """A new booking whose customer data changes what the customer's other bookings send: they
    are replanned (`_apply_one`), so they are locked and loaded with the batch."""
    if not isinstance(event, ev.BookingCreatedEvent):
        return False
    tenant = session.tenant(event.tenant_id)
    known = session.customer(event.tenant_id, event.data.customer.id) if tenant is not None else None
    if known is None:
        return False
    customer, _ = _snapshot(session, tenant, event)
    return customer.newer_than(known) and _reach(known) != _reach(customer)


def _snapshot(s: BatchSession, tenant: Tenant, event: ev.BookingCreatedEvent) -> tuple[Customer, str | None]:
    """The customer as a new booking tells it, built once per event (preload asks too)."""
    key = ("snapshot", event.event_id)
    if key not in s.memo:
        s.memo[key] = _customer(tenant, event.data.customer, 0, event.occurred_at)
    return s.memo[key]


def _claim(session: BatchSession, events: list[ev.Event], now: datetime) -> set[str]:
    """Record the events as processed in one statement; returns those no one had (dedup, N2)."""
    rows = {}
    for event in events:
        if event.event_id not in rows:
            kind, aggregate_id = ev.aggregate_of(event)
            rows[event.event_id] = (event.event_id, event.tenant_id, event.type, f"{kind}:{aggregate_id}",
                                    event.revision, "applied", now)
    # duplicates are the exception: the rows are COPYed as they are unless one was seen before
    return set(insert_rows(session.conn, t.processed_events, _PROCESSED_COLUMNS, list(rows.values()),
                           keys=["event_id"], returning="event_id", expect_new=True))


_PROCESSED_COLUMNS = ["event_id", "tenant_id", "type", "aggregate", "revision", "outcome", "processed_at"]


def _dead(session: BatchSession, report: IngestReport, source: str, reason: str, body: bytes | str,
          now: datetime) -> None:
    session.add_dead_letter(source, reason, body, now)
    report.dead += 1
    report.dead_reasons.append(reason)


def _apply_one(s: BatchSession, event: ev.Event, body: str, now: datetime) -> str:
    tenant = s.tenant(event.tenant_id)
    assert tenant is not None
    kind, aggregate_id = ev.aggregate_of(event)
    aggregate = f"{kind}:{aggregate_id}"

    if isinstance(event, ev.CustomerUpdatedEvent):
        customer, phone_error = _customer(tenant, event.data.customer, event.revision, event.occurred_at)
        if not customer.newer_than(s.customer(tenant.id, customer.id)):
            return _stale(s, event)
        s.put_customer(customer, phone_error)
        detail = {"consents": sorted(c.value for c in customer.consents), "language": customer.language,
                  "phone_valid": phone_error is None}
        _replan_many(s, tenant, s.active_bookings(tenant.id, customer_id=customer.id), now,
                     tr.Note("customer.updated", detail))
        return "applied"

    if isinstance(event, ev.ResourceUpdatedEvent):
        existing = s.resource(tenant.id, event.data.resource.id)
        if existing is not None and existing.revision >= event.revision:
            return _stale(s, event)
        resource = tr.resource_updated(event)
        s.put_resource(resource)
        _replan_many(s, tenant, s.active_bookings(tenant.id, resource_id=resource.id), now,
                     tr.Note("resource.updated", {"resource_id": resource.id}))
        return "applied"

    if isinstance(event, ev.TenantSettingsUpdatedEvent):
        if tenant.revision >= event.revision:
            return _stale(s, event)
        before, tenant = tenant, tr.tenant_updated(tenant, event)
        gone = sorted(name for name in _company_needs(s, tenant.id)
                      if before.company.get(name, "").strip() and not tenant.company.get(name, "").strip())
        if gone:
            raise Refused(f"company detail(s) {', '.join(gone)} are used by the tenant's active templates and may "
                          "not be removed (R42); load a bundle without them first")
        s.put_tenant(tenant)
        _replan_many(s, tenant, s.active_bookings(tenant.id), now, tr.Note("tenant.settings_updated", {}))
        return "applied"

    booking = s.booking(tenant.id, aggregate_id)
    if isinstance(event, ev.BookingCreatedEvent):
        if booking is not None:
            return _stale(s, event)
        data = event.data
        customer, phone_error = _snapshot(s, tenant, event)
        known = s.customer(tenant.id, customer.id)
        if customer.newer_than(known):
            s.put_customer(customer, phone_error)
            if known is not None and _reach(known) != _reach(customer):
                # what a booking tells about its customer holds for the customer's other bookings too
                _replan_many(s, tenant, s.active_bookings(tenant.id, customer_id=customer.id), now,
                             tr.Note("customer.updated", {"consents": sorted(c.value for c in customer.consents),
                                                          "language": customer.language,
                                                          "phone_valid": phone_error is None}))
        if s.resource(tenant.id, data.resource.id) is None:
            s.put_resource(tr.resource_from(data.resource, tenant.id))
        booking, notes = tr.booking_created(event, received_at=now)
        if phone_error:
            notes.append(tr.Note("customer.phone_invalid", {"reason": phone_error}))  # R5
        booking = _save(s, tenant, booking, notes, now)
    else:
        if booking is None:
            return _hold(s, event, aggregate, body, "waiting for booking.created", now)
        if event.revision <= booking.revision:
            return _stale(s, event)
        if event.revision > booking.revision + 1:
            return _hold(s, event, aggregate, body, f"waiting for revision {booking.revision + 1}", now)
        booking = _apply_to_booking(s, tenant, booking, event, now)
    _release_held(s, tenant, booking, aggregate, now)
    return "applied"


class Refused(Exception):
    """An event that is valid but may not be applied: a dead letter with this reason."""


_COMPANY_NEEDS: dict[tuple[str, str | None], frozenset[str]] = {}


def _company_needs(s: BatchSession, tenant_id: str) -> frozenset[str]:
    """The company details the tenant's active bundle (else the shipped templates) reads (R42),
    once per bundle version; a bundle's with the shipped templates of the kinds it has none of."""
    from notifier.rendering.bundles import company_fields_used, with_shipped_defaults
    from notifier.settings import shipped_path

    version = s.tx.active_bundle_version(tenant_id)
    key = (tenant_id if version else "", version)
    if key not in _COMPANY_NEEDS:
        root = shipped_path("templates")
        if version:
            files = with_shipped_defaults((s.tx.bundle(tenant_id, version) or {}).get("files") or {}, root)
        else:
            files = {str(p.relative_to(root)): p.read_text(encoding="utf-8") for p in root.rglob("*.j2")}
        _COMPANY_NEEDS[key] = company_fields_used(files)
    return _COMPANY_NEEDS[key]


def _reach(customer: Customer) -> tuple:
    """What of a customer decides their messages (planning and rendering)."""
    return (customer.consents, customer.email, customer.phone, customer.phone_type, customer.language,
            customer.privacy_accepted, customer.created_via_online_booking)


def _apply_to_booking(s: BatchSession, tenant: Tenant, booking: Booking, event: ev.Event, now: datetime) -> Booking:
    if isinstance(event, ev.BookingRescheduledEvent) and event.data.resource is not None:
        if s.resource(tenant.id, event.data.resource.id) is None:
            s.put_resource(tr.resource_from(event.data.resource, tenant.id))
    booking, notes = tr.apply_to_booking(booking, event)
    return _save(s, tenant, booking, notes, now)


def _stale(s: BatchSession, event: ev.Event) -> str:
    s.set_outcome(event.event_id, "stale")
    return "stale"


def _hold(s: BatchSession, event: ev.Event, aggregate: str, body: str, reason: str, now: datetime) -> str:
    """Keep an event that arrived before what it follows; it is applied when the gap closes. The
    booking's timeline shows it held, with what it waits for (`hold_s` later it is applied anyway)."""
    s.set_outcome(event.event_id, "held")
    s.hold(event.event_id, event.tenant_id, aggregate, event.revision, body, reason, now)
    kind, _, booking_id = aggregate.partition(":")
    if kind == "booking":
        s.add_timeline(event.tenant_id, booking_id, now, "event.held",
                       {"event_id": event.event_id, "type": event.type, "revision": event.revision,
                        "waiting_for": reason.removeprefix("waiting for ")})
    return "held"


def _release_held(s: BatchSession, tenant: Tenant, booking: Booking, aggregate: str, now: datetime) -> None:
    """Apply held events that now follow the booking's revision, in order."""
    while True:
        waiting = s.next_held(tenant.id, aggregate, booking.revision + 1)
        if not waiting:
            return
        event_id, body = waiting[0]
        for other_id, _ in waiting[1:]:  # two different events claiming the same revision: keep the first
            s.release_held(tenant.id, aggregate, other_id)
            s.set_outcome(other_id, "stale")
        s.release_held(tenant.id, aggregate, event_id)
        s.set_outcome(event_id, "applied")
        booking = _apply_to_booking(s, tenant, booking, ev.parse_event(body), now)


def replay_dead_letter(store: Store, dead_letter_id: int, *, now: datetime) -> IngestReport:
    """Apply a dead letter's original body again (after its cause was fixed: a tenant was
    created, a publisher corrected). The dead letter is kept and marked replayed."""
    with store.transaction() as tx:
        row = tx.conn.execute(select(t.dead_letters).where(t.dead_letters.c.id == dead_letter_id)).first()
    if row is None:
        raise LookupError(f"no dead letter {dead_letter_id}")
    if row.body_bytes is not None and row.body_bytes > len(row.body.encode("utf-8")):
        raise ValueError(f"dead letter {dead_letter_id} keeps only the first {len(row.body.encode('utf-8')):,} of "
                         f"its {row.body_bytes:,} bytes: it cannot be replayed")
    report = apply_events(store, [row.body], now=now, source=f"replay:{dead_letter_id}")
    if report.dead == 0:
        with store.transaction() as tx:
            tx.conn.execute(update(t.dead_letters).where(t.dead_letters.c.id == dead_letter_id)
                            .values(replayed_at=now))
    return report


def replan_booking(store: Store, tenant_id: str, booking_id: str, *, now: datetime,
                   regions: Mapping[str, Iterable[str]] | None = None) -> None:
    """Plan one booking again outside an event (after a failure that has a fallback)."""
    with store.transaction() as tx:
        replan_in(tx.conn, tenant_id, booking_id, now=now, regions=regions)


def replan_in(conn: Any, tenant_id: str, booking_id: str, *, now: datetime,
              regions: Mapping[str, Iterable[str]] | None = None) -> None:
    """`replan_booking` inside the caller's transaction (dispatch records a failure and plans
    its fallback in one commit, so a crash between the two cannot lose the fallback)."""
    s = BatchSession(conn)
    s.regions = dict(regions or {})
    s.lock([f"b:{tenant_id}:{booking_id}"])
    tenant, booking = s.tenant(tenant_id), s.booking(tenant_id, booking_id)
    if tenant is not None and booking is not None:
        _replan(s, tenant, booking, now)
        s.flush(now)
        _count_not_planned(s.not_planned_written)  # the caller commits at once


def release_expired_holds(store: Store, *, now: datetime, hold_s: float, source: str = "hold",
                          regions: Mapping[str, Iterable[str]] | None = None) -> IngestReport:
    """Held too long: a gap in revisions is skipped (recorded), a booking that never came is a
    dead letter. Run by the ingester every few seconds and by beat's housekeeping: the bookings'
    locks (those the ingester takes) let one caller at a time decide, on what is committed.
    Held events that cannot be applied become dead letters with the reason; the others go on (N3)."""
    report = IngestReport()
    with store.transaction() as tx:
        expired = tx.held_since(now - timedelta(seconds=hold_s))
        if not expired:
            return report
        aggregates = sorted({(row[1], row[3]) for row in expired})
        done: list[IngestReport] = []

        def release(part: list[tuple[str, str]]) -> None:
            s = BatchSession(tx.conn)
            s.regions = dict(regions or {})
            s.lock(f"b:{tenant_id}:{aggregate.split(':', 1)[1]}" for tenant_id, aggregate in part)
            local = IngestReport()
            for tenant_id, aggregate in part:
                _release_expired(s, local, tenant_id, aggregate, now=now, hold_s=hold_s, source=source)
            s.flush(now)
            local.not_planned = dict(s.not_planned_written)
            done.append(local)

        def give_up(key: tuple[str, str], exc: BaseException) -> None:
            done.append(_dead_holds(tx.conn, key, f"held event could not be applied: {_refusal(exc)}",
                                    now=now, source=source))

        contain(tx.conn, aggregates, release, give_up)
    for part in done:
        report.merge(part)
    _count_not_planned(report.not_planned)
    return report


def _release_expired(s: BatchSession, report: IngestReport, tenant_id: str, aggregate: str, *, now: datetime,
                     hold_s: float, source: str) -> None:
    tenant = s.tenant(tenant_id)
    booking = s.booking(tenant_id, aggregate.split(":", 1)[1]) if tenant else None
    waiting = sorted(s.held.get((tenant_id, aggregate), {}).items(), key=lambda item: item[1])
    if tenant is None or booking is None:
        for event_id, (_revision, body) in waiting:
            s.release_held(tenant_id, aggregate, event_id)
            s.set_outcome(event_id, "dead")
            _dead(s, report, source, f"{aggregate} never arrived (held {hold_s:.0f} s)", body, now)
        return
    if not waiting:
        return
    event_id, (held_revision, body) = waiting[0]
    s.release_held(tenant_id, aggregate, event_id)
    if held_revision <= booking.revision:
        s.set_outcome(event_id, "stale")
        report.stale += 1
        return
    s.set_outcome(event_id, "applied")
    s.add_timeline(tenant_id, booking.id, now, "event.gap_skipped",
                   {"missing_revisions": f"{booking.revision + 1}-{held_revision - 1}"})
    booking = _apply_to_booking(s, tenant, booking, ev.parse_event(body), now)
    _release_held(s, tenant, booking, aggregate, now)
    report.applied += 1


def _dead_holds(conn: Any, key: tuple[str, str], reason: str, *, now: datetime, source: str) -> IngestReport:
    """Every event held for an aggregate that cannot be applied: dead letters with the reason."""
    from notifier.observability.metrics import metrics

    tenant_id, aggregate = key
    h, pe = t.held_events.c, t.processed_events.c
    rows = conn.execute(select(h.event_id, h.body).where(h.tenant_id == tenant_id, h.aggregate == aggregate)).all()
    report = IngestReport()
    for _event_id, body in rows:
        conn.execute(t.dead_letters.insert().values(**dead_letter_row(source, reason, body, now)))
        report.dead += 1
        report.dead_reasons.append(reason)
    ids = [r.event_id for r in rows]
    if ids:
        conn.execute(delete(t.held_events).where(h.event_id.in_(ids)))
        conn.execute(delete(t.processed_events).where(pe.event_id.in_(ids)))  # a replay finds them unclaimed
    metrics().parked.labels("held events").inc(len(ids))
    return report


def _save(s: BatchSession, tenant: Tenant, booking: Booking, notes: list[tr.Note], now: datetime) -> Booking:
    resource = s.resource(tenant.id, booking.resource_id)
    if resource is not None:  # the board's markers (R12, R16, R18), as they are at `now`
        settings = _settings_in(s, tenant, resource)
        before = booking
        booking, changes = apply_flags(booking, settings, now)
        for kind, detail in changes:
            notes = [*notes, tr.Note(kind, detail)]
        if changes:
            payload = {"booking_id": booking.id, "resource_id": booking.resource_id,
                       "starts_at": booking.starts_at.isoformat(), "red": booking.red_since is not None,
                       "late": booking.late_since is not None,
                       "late_counter": booking.late_counter_since is not None}
            s.add_outbox(tenant.id, "counters.changed", payload, now)
            if booking.released_at is not None and before.released_at is None:  # R18: the slot is free
                s.add_outbox(tenant.id, "slot.released", dict(payload, reason="not_marked_arrived"), now)
        active = booking.status is BookingStatus.ACTIVE
        s.set_next_check(tenant.id, booking.id, next_flag_change(booking, settings, now) if active else None)
    s.put_booking(booking)
    for note in notes:
        s.add_timeline(tenant.id, booking.id, now, note.kind, note.detail)
    return _replan(s, tenant, booking, now)


def _replan_many(s: BatchSession, tenant: Tenant, booking_ids: list[str], now: datetime, note: tr.Note) -> None:
    for booking_id in booking_ids:
        booking = s.booking(tenant.id, booking_id)
        if booking is not None:
            s.add_timeline(tenant.id, booking_id, now, note.kind, note.detail)
            _replan(s, tenant, booking, now)


def _customer(tenant: Tenant, data: ev.CustomerData, revision: int,
              snapshot_at: datetime) -> tuple[Customer, str | None]:
    phone, error, phone_type = read_phone(data.phone, tenant.home_region)
    return tr.customer_from(data, tenant.id, revision, phone, ev.utc(snapshot_at), phone_type=phone_type), error


# the entry of the platform's channel mapping (`regions` below, `Context.unavailable`) that lists the
# customer channels this installation has no provider for: unavailable to every tenant
WITHOUT_PROVIDER = "without_provider"


def unavailable_channels(tenant: Tenant, regions: Mapping[str, Iterable[str]]) -> frozenset[Channel]:
    """R6: channels the platform does not offer in the tenant's region (config `[notifier.unavailable]`)."""
    return frozenset(Channel(channel) for channel, where in regions.items()
                     if channel != WITHOUT_PROVIDER and tenant.home_region.upper() in {r.upper() for r in where})


def settings_for(tenant: Tenant, resource: Resource,
                 regions: Mapping[str, Iterable[str]] | None = None) -> NotificationSettings:
    """The resource's settings over the tenant's. `regions`: the platform's channels, each with the
    regions it is not offered in (R6), and under `WITHOUT_PROVIDER` those it has no provider for."""
    regions = regions or {}
    return _settings(json.dumps(tenant.settings, sort_keys=True), json.dumps(resource.settings, sort_keys=True),
                     unavailable_channels(tenant, regions),
                     frozenset(Channel(c) for c in regions.get(WITHOUT_PROVIDER, ())))


def _settings_in(s: BatchSession, tenant: Tenant, resource: Resource) -> NotificationSettings:
    """`settings_for`, once per tenant and resource object a batch holds (a changed tenant or
    resource is a new object)."""
    key = (id(tenant), id(resource))
    held = s.memo.get(key)
    if held is None or held[0] is not tenant or held[1] is not resource:
        held = s.memo[key] = (tenant, resource, settings_for(tenant, resource, s.regions))
    return held[2]


@lru_cache(maxsize=4096)
def _settings(tenant_settings: str, resource_settings: str, unavailable: frozenset[Channel],
              without_provider: frozenset[Channel] = frozenset()) -> NotificationSettings:
    """Merged settings, computed once per distinct (tenant, resource) settings pair."""
    return NotificationSettings.from_layers(json.loads(tenant_settings), json.loads(resource_settings),
                                            unavailable=unavailable, without_provider=without_provider)


def tenants_without_provider(store: Store, channels: Iterable[Channel]) -> dict[Channel, list[str]]:
    """Each channel without a provider that tenants switched on, and those tenants (for the warning
    every process gives at start: their customers will not get messages on it)."""
    missing = [c for c in channels if c.to_customer]
    if not missing:
        return {}
    with store.transaction() as tx:
        switched_on = tx.conn.execute(select(t.tenants.c.id, t.tenants.c.channels)).all()
    return {c: ids for c in missing if (ids := sorted(tid for tid, on in switched_on if c.value in (on or ())))}


def _replan(s: BatchSession, tenant: Tenant, booking: Booking, now: datetime) -> Booking:
    """Plan the booking again and bring the store to the plan; returns the booking as saved
    (with what planning left out, each reason recorded on the timeline once)."""
    customer = s.customer(tenant.id, booking.customer_id)
    resource = s.resource(tenant.id, booking.resource_id)
    if customer is None or resource is None:  # pragma: no cover - created with the booking
        return booking
    existing = s.existing_messages(tenant.id, booking.id)
    plan = plan_booking(booking, customer, resource, tenant, _settings_in(s, tenant, resource), now=now,
                        sent=sent_keys(existing), failed=failed_keys(existing), card_sent=card_sent_in(existing))
    diff = diff_plan(existing, plan.messages)
    left_out: tuple[NotPlanned, ...] = ()
    if plan.not_planned != booking.not_planned:  # most bookings: both empty
        recorded = set(booking.not_planned)
        left_out = tuple(n for n in plan.not_planned if n not in recorded)
        booking = replace(booking, not_planned=plan.not_planned)
        s.put_booking(booking)
    changed = not diff.empty
    if not changed and not left_out:
        return booking
    if changed:
        s.apply_diff(tenant.id, booking.id, diff)
    # the timeline shows one `message.planned` per added or changed message, one `message.withdrawn`
    # per withdrawn one and one `message.not_planned` per new reason; stored as one row per replan
    s.add_plan_changes(tenant.id, booking.id, now, diff, left_out)
    return booking


# --- sweep -------------------------------------------------------------------------------

def sweep_due(store: Store, *, now: datetime, lease_s: int, limit: int, batch: int,
              max_claims: int | None = None) -> list[tuple[Channel, list[int]]]:
    """Claim what is due and cut it into per-channel batches for dispatch tasks. A message the
    sweep cannot hand out (an unknown channel; with `max_claims`, claimed that often without an
    outcome) fails with the reason, and the rest is handed out (`Store.claim_due`, N3)."""
    by_channel: dict[Channel, list[int]] = defaultdict(list)
    for message_id, channel in store.claim_due(now, lease_s=lease_s, limit=limit, max_claims=max_claims):
        by_channel[channel].append(message_id)
    return [(channel, ids[i:i + batch]) for channel, ids in sorted(by_channel.items())
            for i in range(0, len(ids), batch)]


def max_claims(settings: Any) -> int:
    """How often a message may be claimed for sending before the due sweep sets it aside: twice
    `max_attempts`. Retries stop at `max_attempts` once an outcome is recorded, so only claims
    that never came back (a dispatch that dies on the message every time) reach this."""
    return 2 * settings.max_attempts


def apply_delivery_status(store: Store, provider: str, provider_message_id: str, status: str, *, now: datetime,
                          error: str | None = None, message_id: int | None = None) -> str:
    """A provider's status report: applied forward-only (N5), once (N2), and only to a message
    that `provider` sent: ids are namespaced by provider, so a callback signed by one provider
    cannot move another's message. Returns "applied", "ignored" (a duplicate or late news),
    "pending" (no message of ours has that id yet: the report is kept, with the `message_id` it
    names if it names one, and applied when the send is recorded; dispatch finds a copy whose
    answer was lost by it), "foreign" (the id is another provider's message: refused, nothing
    kept) or "unknown" (a status we do not know)."""
    reported = PROVIDER_STATUS.get(status.lower())
    if reported is None:
        return "unknown"
    c = t.messages.c
    with store.transaction() as tx:
        lock_provider_ids(tx.conn, [provider_message_id])  # against a send being recorded this moment
        query = select(t.messages).where(c.provider_message_id == provider_message_id)
        if store.dialect == "postgresql":
            query = query.with_for_update()
        rows = tx.conn.execute(query).all()
        row = next((r for r in rows if r.provider == provider), None)
        if row is None and rows:
            return "foreign"
        if row is None:
            tx.conn.execute(t.pending_statuses.insert().values(provider=provider, provider_message_id=provider_message_id,
                                                               status=status, error=error, received_at=now,
                                                               message_id=message_id))
            return "pending"
        return "applied" if _advance_status(tx, row, status, error, now) else "ignored"


def lock_provider_ids(conn: Any, provider_message_ids: list[str]) -> None:
    """PostgreSQL: a status report and the recording of its send take the same lock, so a report
    is either found by the record or finds the recorded message (SQLite serialises writers)."""
    if provider_message_ids and conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "SELECT pg_advisory_xact_lock(h) FROM (SELECT hashtextextended('p:' || k, 0) AS h "
            "FROM unnest(%(ids)s::text[]) AS k ORDER BY k) AS ordered", {"ids": sorted(set(provider_message_ids))})


def apply_pending_statuses(conn: Any, sent: list[tuple[str | None, str]], now: datetime) -> int:
    """The reports that came before these sends ((provider, provider message id) pairs) were
    recorded, applied forward only to the message of their own provider, and removed."""
    if not sent:
        return 0
    p, c = t.pending_statuses.c, t.messages.c
    ids = sorted({pid for _, pid in sent})
    lock_provider_ids(conn, ids)
    pending = conn.execute(select(t.pending_statuses).where(p.provider_message_id.in_(ids)).order_by(p.id)).all()
    if not pending:
        return 0
    tx = Tx(conn)
    for report in pending:
        query = select(t.messages).where(c.provider_message_id == report.provider_message_id)
        if report.provider is not None:  # NULL: kept before migration 0011
            query = query.where(c.provider == report.provider)
        row = conn.execute(query).first()
        if row is not None:
            _advance_status(tx, row, report.status, report.error, now)
    conn.execute(delete(t.pending_statuses).where(p.id.in_([r.id for r in pending])))
    return len(pending)


def _advance_status(tx: Tx, row: Any, status: str, error: str | None, now: datetime) -> bool:
    c = t.messages.c
    new = advance(MessageState(row.state), PROVIDER_STATUS[status.lower()])
    if new is None:
        return False
    values: dict[str, Any] = {"state": new.value, "updated_at": now}
    if new is MessageState.FAILED:
        values["error"] = error or f"provider reported {status}"
    tx.conn.execute(update(t.messages).where(c.id == row.id).values(**values))
    detail: dict[str, Any] = {"kind": row.kind, "channel": row.channel, "provider_status": status}
    if error:
        detail["reason"] = error
    tx.add_timeline(row.tenant_id, row.booking_id, now, f"message.{new.value}", detail, message_id=row.id,
                    dedup_key=f"message:{row.id}:{new.value}")
    failed = new is MessageState.FAILED
    if failed and row.recipient == "customer" and opted_out_by_error(values["error"]):
        from notifier.inbound import opted_out_at_provider  # (it builds on this module)

        # the provider reports the customer opted out with it (R3): as their STOP, the channel goes
        opted_out_at_provider(tx.conn, row.tenant_id, row.booking_id, Channel(row.channel), now=now)
    if failed:
        log.warning("message %s (%s, %s) failed for good: the provider reported %s%s", row.id, row.channel, row.kind,
                    status, f" ({error})" if error else "", extra={"message_id": row.id, "channel": row.channel})
    tx.add_message_events([(row.tenant_id, *message_event(
        new, message_id=row.id, booking_id=row.booking_id, kind=row.kind, channel=row.channel,
        recipient=row.recipient, at=now, reason=values.get("error") if failed else None,
        resend_of=row.resend_of))], now)  # once: only a report that moved it
    return True


# --- the customer's page (R11, R14, R23, N4) ----------------------------------------------------

ACTIONS = ("confirm", "cancel")
CANCEL_REASON_MAX = 500


@dataclass(frozen=True)
class LinkOutcome:
    """What a link leads to. `status`: ok (the page), invalid, expired; after an action also
    confirmed, cancelled, already (done before: nothing more), changed (the visit is not the
    one the customer saw), outside_window, not_allowed, not_now (not offered at this moment)."""

    status: str
    booking: Booking | None = None
    customer: Customer | None = None
    resource: Resource | None = None
    tenant: Tenant | None = None
    appointment: Appointment | None = None
    moved_from: datetime | None = None  # the visit's time before its last move


def look_up_link(store: Store, token: str, *, now: datetime, valid_after_visit_s: int,
                 regions: Mapping[str, Iterable[str]] | None = None) -> LinkOutcome:
    """What the page behind a link shows (a GET changes nothing: mail scanners fetch links)."""
    if not well_formed(token):
        return LinkOutcome("invalid")
    with store.transaction() as tx:
        return _link_state(BatchSession(tx.conn), tx.link_target(token), now, valid_after_visit_s, regions)


def use_link(store: Store, token: str, action: str, *, shown_starts_at: str, now: datetime,
             valid_after_visit_s: int, regions: Mapping[str, Iterable[str]] | None = None,
             reason: str = "") -> LinkOutcome:
    """The customer pressed a button of the page: confirm, or cancel within the window (R11, R14,
    R23). `shown_starts_at` is the visit the page showed: a visit moved since is not acted on."""
    if action not in ACTIONS or not well_formed(token):
        return LinkOutcome("invalid")
    with store.transaction() as tx:
        s = BatchSession(tx.conn)
        s.regions = dict(regions or {})
        outcome = customer_acts(s, tx.link_target(token), action, shown_starts_at=shown_starts_at, reason=reason,
                                now=now, valid_after_visit_s=valid_after_visit_s, via="link")
        s.flush(now)
    _count_not_planned(s.not_planned_written)
    return outcome


def customer_acts(s: BatchSession, target: tuple[str, str] | None, action: str, *, shown_starts_at: str, reason: str,
                  now: datetime, valid_after_visit_s: int, via: str) -> LinkOutcome:
    """The customer confirms or cancels a booking ((tenant id, booking id)), in the caller's
    transaction: the page's buttons (`via` "link") and answers by message ("sms", "whatsapp",
    R11, R14) alike, so both have the same window, the same idempotency, the same staff notices,
    freed slot and events for the booking system. The caller flushes the session and commits."""
    if target is not None:
        s.lock([f"b:{target[0]}:{target[1]}"])
    seen = _link_state(s, target, now, valid_after_visit_s, s.regions)
    if seen.status != "ok":
        return seen
    tenant, booking, view = seen.tenant, seen.booking, seen.appointment
    assert tenant is not None and booking is not None and view is not None
    if action == "confirm" and booking.confirmed_at is not None and booking.status is BookingStatus.ACTIVE \
            or action == "cancel" and booking.status is BookingStatus.CANCELLED:
        return replace_outcome(seen, "already")  # a second press, a replayed POST: nothing more (N2)
    if shown_starts_at != booking.starts_at.isoformat():
        return replace_outcome(seen, "changed")
    if action == "confirm":
        if not view.may_confirm:
            return replace_outcome(seen, "not_now")
        new, notes = tr.confirmed_by_customer(booking, now, via=via)
        event_type, status = "booking.confirmed_by_customer", "confirmed"
    else:
        if view.cancel_until is None:
            return replace_outcome(seen, "not_allowed")
        if not view.may_cancel:
            return replace_outcome(seen, "outside_window" if booking.status is BookingStatus.ACTIVE
                                   and now < booking.starts_at else "not_now")
        reason = " ".join(reason.split())[:CANCEL_REASON_MAX]
        new, notes = tr.cancelled_by_customer(booking, now, reason=reason or None, via=via)
        event_type, status = "booking.cancelled_by_customer", "cancelled"
    _save(s, tenant, new, notes, now)
    payload = {"booking_id": booking.id, "starts_at": booking.starts_at.isoformat(),
               "resource_id": booking.resource_id, "at": now.isoformat()}
    if via != "link":
        payload["via"] = via
    if status == "cancelled" and reason:
        payload["reason"] = reason
    s.add_outbox(tenant.id, event_type, payload, now)
    if status == "cancelled":  # R14: the slot goes back to the booking system's planner
        s.add_outbox(tenant.id, "slot.released", dict(payload, reason="cancelled_by_customer"), now)
    return _link_state(s, target, now, valid_after_visit_s, s.regions, status=status)


def replace_outcome(outcome: LinkOutcome, status: str, **changes: Any) -> LinkOutcome:
    from dataclasses import replace as dc_replace

    return dc_replace(outcome, status=status, **changes)


def _link_state(s: BatchSession, target: tuple[str, str] | None, now: datetime, valid_after_visit_s: int,
                regions: Mapping[str, Iterable[str]] | None, status: str = "ok") -> LinkOutcome:
    tenant = s.tenant(target[0]) if target else None
    booking = s.booking(*target) if target and tenant else None
    resource = s.resource(tenant.id, booking.resource_id) if tenant and booking else None
    if tenant is None or booking is None or resource is None:
        return LinkOutcome("invalid")
    view = appointment(booking, settings_for(tenant, resource, regions), now, valid_after_visit_s=valid_after_visit_s)
    if now >= view.expires_at:  # long after the visit: the company's name and phone, nothing of the booking
        return LinkOutcome("expired", tenant=tenant, customer=s.customer(tenant.id, booking.customer_id))
    moved_from = None
    if booking.scheduled_at > booking.created_at:
        c = t.timeline.c
        last_move = s.conn.execute(select(c.detail).where(
            c.tenant_id == tenant.id, c.booking_id == booking.id, c.kind == "booking.rescheduled")
            .order_by(c.at.desc(), c.id.desc()).limit(1)).scalar()
        if last_move and last_move.get("from") and last_move["from"] != booking.starts_at.isoformat():
            moved_from = datetime.fromisoformat(last_move["from"])
    return LinkOutcome(status, booking, s.customer(tenant.id, booking.customer_id), resource, tenant, view,
                       moved_from)


def sweep_states(store: Store, *, now: datetime, limit: int = 500,
                 regions: Mapping[str, Iterable[str]] | None = None) -> int:
    """The state sweep: bookings whose markers change at this time (red, late, late counter, release).
    A booking whose turn fails (settings the planner cannot use, a value the store refuses) is
    parked with the reason on its timeline, and every other booking goes on (N3)."""
    with store.transaction() as tx:
        due = [tuple(row) for row in tx.conn.execute(state_checks_statement(now=now, limit=limit,
                                                                            dialect=store.dialect))]
        if not due:
            return 0
        written = IngestReport()

        def sweep(part: list[tuple[str, str]]) -> None:
            s = BatchSession(tx.conn)
            s.regions = dict(regions or {})
            for tenant_id, booking_id in part:
                tenant, booking = s.tenant(tenant_id), s.booking(tenant_id, booking_id)
                if tenant is not None and booking is not None:
                    _save(s, tenant, booking, [], now)
            s.flush(now)
            written.merge(IngestReport(not_planned=s.not_planned_written))

        contain(tx.conn, due, sweep, lambda key, exc: park_booking(tx.conn, key, exc, now=now, loop="state sweep"))
    _count_not_planned(written.not_planned)
    return len(due)


def contain(conn: Any, items: list[Any], run: Callable[[list[Any]], None],
            park: Callable[[Any, BaseException], None]) -> None:
    """`run(items)` in a savepoint; if it fails for anything but an outage, the halves are run
    each in a savepoint of their own, down to the one item at fault, which `park` sets aside:
    one item's failure costs the others a few retries, never their turn (N3)."""
    try:
        with conn.begin_nested():
            run(items)
    except Exception as exc:  # noqa: BLE001 - an outage propagates; anything else is some item's fault
        if is_outage(exc):
            raise
        if len(items) == 1:
            log.warning("set aside after %s: %s", exc.__class__.__name__, items[0], exc_info=exc)
            with conn.begin_nested():
                park(items[0], exc)
            return
        half = len(items) // 2
        contain(conn, items[:half], run, park)
        contain(conn, items[half:], run, park)


def park_booking(conn: Any, key: tuple[str, str], exc: BaseException, *, now: datetime, loop: str) -> None:
    """A booking a sweep cannot handle: off the state sweep's list (until an event changes it),
    with the reason on its timeline and in the `notifier_parked` metric."""
    from notifier.observability.metrics import metrics

    tenant_id, booking_id = key
    b = t.bookings.c
    conn.execute(update(t.bookings).where(b.tenant_id == tenant_id, b.id == booking_id).values(next_check_at=None))
    Tx(conn).add_timeline(tenant_id, booking_id, now, "booking.parked",
                          {"by": loop, "reason": _refusal(exc).removeprefix("internal error: ")})
    metrics().parked.labels(loop).inc()


def counters(store: Store, tenant_id: str, day: date, *, now: datetime,
             regions: Mapping[str, Iterable[str]] | None = None) -> dict[str, dict[str, int]]:
    """R12, R16: unconfirmed, red counter, late marker and late counter per resource for a local day, exact at `now`
    (computed from the bookings, not from what the last sweep saw). A resource whose stored rows
    cannot be judged (settings stored before they were checked) is left out, logged with the
    reason; the other resources are counted (N3)."""
    b = t.bookings.c
    with store.transaction() as tx:
        tenant = tx.tenant(tenant_id)
        if tenant is None:
            raise LookupError(tenant_id)
        zone = ZoneInfo(tenant.timezone)
        start = datetime.combine(day, datetime.min.time(), tzinfo=zone)
        rows = tx.conn.execute(select(t.bookings).where(
            b.tenant_id == tenant_id, b.status == BookingStatus.ACTIVE.value,
            b.starts_at >= start, b.starts_at < start + timedelta(days=1))).all()
        resources = {r: tx.resource(tenant_id, r) for r in {row.resource_id for row in rows}}
    out: dict[str, dict[str, int]] = {}
    unreadable: set[str] = set()
    for row in rows:
        if row.resource_id in unreadable:
            continue
        try:
            booking = booking_from(row)
            flags = booking_flags(booking, settings_for(tenant, resources[booking.resource_id], regions), now)
        except Exception as exc:  # noqa: BLE001 - one resource's rows, not the tenant's board
            log.warning("counters of %s/%s left out: %s", tenant_id, row.resource_id,
                        _refusal(exc).removeprefix("internal error: "))
            unreadable.add(row.resource_id)
            out.pop(row.resource_id, None)
            continue
        counts = out.setdefault(booking.resource_id, {"unconfirmed": 0, "red": 0, "late": 0, "late_counter": 0})
        if flags.release_due:
            continue  # released (or about to be, at the next sweep): off the board
        for name in counts:
            counts[name] += int(getattr(flags, name))
    return out


def publish_outbox(store: Store, publish: Any, *, now: datetime, limit: int = 500) -> int:
    """Hand unpublished outbox events to the publisher; mark them published. Rows are claimed
    with SKIP LOCKED, so two publishers never send the same one. A publisher with
    `publish_many` (OutboundPublisher) gets the page at once, each event with an `event_id`
    made from its outbox row, the same on every publication (at least once: a consumer dedupes
    on it); a plain callable gets `publish(type, tenant_id, payload)` per event."""
    o = t.outbox.c
    with store.transaction() as tx:
        query = select(t.outbox).where(o.published_at.is_(None)).order_by(o.id).limit(limit)
        if store.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        rows = tx.conn.execute(query).all()
        many = getattr(publish, "publish_many", None)
        if many is not None:
            many([(outbox_event_id(row.id, row.created_at), row.type, row.tenant_id, row.payload) for row in rows])
        else:
            for row in rows:
                publish(row.type, row.tenant_id, row.payload)
        if rows:
            tx.conn.execute(update(t.outbox).where(o.id.in_([r.id for r in rows])).values(published_at=now))
    return len(rows)


def publish_all_outbox(store: Store, publish: Any, *, now: datetime, limit: int = 500, pages: int = 20) -> int:
    """`publish_outbox` page after page until it is empty (at most `pages`): a burst of sends
    announced to the booking system (`message.sent` each) is not published a page per sweep."""
    total = 0
    for _ in range(pages):
        done = publish_outbox(store, publish, now=now, limit=limit)
        total += done
        if done < limit:
            break
    return total


_OUTBOX_IDS = uuid.UUID("5d1f9a3e-2b7c-4c1e-9a8e-6f0b3c2d1e4a")


def outbox_event_id(row_id: int, created_at: datetime) -> str:
    """The `event_id` of an outbox row's event: the same whenever it is published again, and
    not one an earlier database's row of the same id had (its creation time is in it)."""
    return uuid.uuid5(_OUTBOX_IDS, f"{row_id}/{created_at.isoformat()}").hex


def timeline_of(store: Store, tenant_id: str, booking_id: str) -> list[dict[str, Any]]:
    with store.transaction() as tx:
        return tx.timeline(tenant_id, booking_id)

