"""Queries: the store behind the services. SQLite (embedded) and PostgreSQL (production).

A `Store` owns an engine. Work that must be atomic runs in `store.transaction()`,
which yields a `Tx` with the reads and writes the services need. The claims (`claim_due`,
`claim_batch_for_send`) are single statements that are safe with many workers at once:
`FOR UPDATE SKIP LOCKED` on PostgreSQL; on SQLite, writers are serialised anyway.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    Update,
    any_,
    create_engine,
    event,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from notifier.domain.model import (
    Booking,
    BookingStatus,
    Channel,
    Customer,
    Kind,
    MessageState,
    NotPlanned,
    Resource,
    Tenant,
)
from notifier.domain.planning import PlanDiff
from notifier.phones import phone_type_of
from notifier.store import schema as t


def _json_bytes(value: Any) -> bytes:
    """orjson: a tenth of the json module's time on the timeline's details (a few a booking),
    and it writes times (ISO 8601) and enums (their values) itself; anything it will not write
    (a dict with non-string keys) goes through json, which is taught the times."""
    import orjson

    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, default=_json_default).encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json_text(value: Any) -> str:
    return _json_bytes(value).decode()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with what each backend needs. SQLite: WAL, a busy timeout, and BEGIN IMMEDIATE
    so concurrent writers queue at the start of a transaction instead of failing half-way."""
    if not url.startswith("sqlite"):
        kwargs.setdefault("pool_pre_ping", True)
        engine = create_engine(url, json_serializer=_json_text, **kwargs)

        @event.listens_for(engine, "connect")
        def _json(dbapi_conn, _record):  # what COPY writes into JSON columns, through psycopg's own dumper
            from psycopg.types.json import set_json_dumps

            set_json_dumps(_json_bytes, dbapi_conn)
            # times come back in UTC, whatever the server's TimeZone (often 'Etc/UTC', which psycopg
            # loads as a ZoneInfo: converted on every timestamptz read, and again by us to UTC).
            # A SET, not a startup option: PgBouncer keeps a client's TimeZone across server connections
            cur = dbapi_conn.cursor()
            cur.execute("SET TIME ZONE 'UTC'")
            cur.close()
            dbapi_conn.commit()

        return engine
    path = url.split("///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30}, json_serializer=_json_text, **kwargs)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # SQLAlchemy's documented pysqlite recipe
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@dataclass(frozen=True)
class MessageRow:
    id: int
    tenant_id: str
    booking_id: str
    key: str
    kind: str
    channel: Channel
    recipient: str
    state: MessageState
    due_at: datetime
    attempts: int
    provider_message_id: str | None
    sent_at: datetime | None
    error: str | None
    stamped_at: datetime | None = None  # due_at when first claimed for sending (links, card)
    claim_token: int = 0  # the fencing token of the claim this row was read under (notifier/leases.py)
    by: str | None = None  # the operator who made it (a resend); None: the planner's
    resend_of: int | None = None  # the failed message an operator's resend repeats

    @property
    def manual(self) -> bool:
        """Made or withdrawn by an operator: planning leaves it alone."""
        return self.by is not None


def _message(row: Any) -> MessageRow:
    return MessageRow(
        id=row.id, tenant_id=row.tenant_id, booking_id=row.booking_id, key=row.key, kind=row.kind,
        channel=Channel(row.channel), recipient=row.recipient, state=MessageState(row.state),
        due_at=row.due_at, attempts=row.attempts, provider_message_id=row.provider_message_id,
        sent_at=row.sent_at, error=row.error, stamped_at=row.stamped_at, claim_token=row.claim_token,
        by=row.by, resend_of=row.resend_of,
    )


# --- rows to domain objects (shared by Tx and BatchSession) -----------------------------------

def tenant_from(row: Any) -> Tenant:
    return Tenant(id=row.id, name=row.name, timezone=row.timezone, home_region=row.home_region,
                  language=row.language, channels=frozenset(Channel(c) for c in row.channels),
                  company=row.company, settings=row.settings, revision=row.revision, webhook_url=row.webhook_url,
                  message_events=bool(row.message_events), sender=row.sender or {})


def resource_from(row: Any) -> Resource:
    return Resource(id=row.id, tenant_id=row.tenant_id, name=row.name, type=row.type, timezone=row.timezone,
                    settings=row.settings, revision=row.revision)


def customer_from(row: Any) -> Customer:
    phone_type = row.phone_type
    if phone_type is None and row.phone:  # stored before migration 0013 kept the type
        phone_type = phone_type_of(row.phone)
    return Customer(id=row.id, tenant_id=row.tenant_id, name=row.name, phone=row.phone, email=row.email,
                    language=row.language, consents=frozenset(Channel(x) for x in row.consents),
                    privacy_accepted=row.privacy_accepted, created_via_online_booking=row.created_via_online_booking,
                    revision=row.revision, snapshot_at=_utc(row.snapshot_at), phone_type=phone_type,
                    opted_out=frozenset(Channel(x) for x in row.opted_out) if row.opted_out else frozenset())


def booking_from(row: Any) -> Booking:
    return Booking(id=row.id, tenant_id=row.tenant_id, customer_id=row.customer_id, resource_id=row.resource_id,
                   starts_at=_utc(row.starts_at), ends_at=_utc(row.ends_at), created_at=_utc(row.created_at),
                   scheduled_at=_utc(row.scheduled_at), source=row.source, service=row.service,
                   status=BookingStatus(row.status), workflow_status=row.workflow_status,
                   cancelled_by=row.cancelled_by, cancelled_at=_utc(row.cancelled_at), cancel_reason=row.cancel_reason,
                   needs_approval=row.needs_approval, approved_at=_utc(row.approved_at),
                   confirmed_at=_utc(row.confirmed_at), visit_outcome=row.visit_outcome, revision=row.revision,
                   red_since=_utc(row.red_since), late_since=_utc(row.late_since),
                   late_counter_since=_utc(row.late_counter_since), released_at=_utc(row.released_at),
                   received_at=_utc(row.received_at), send_card=row.send_card, reminders=row.reminders,
                   not_planned=not_planned_from(row.not_planned) if row.not_planned else ())


def not_planned_to_json(entries: tuple[NotPlanned, ...]) -> list[list[Any]] | None:
    """A booking's `not_planned` as stored: [kind, reason, [channels], [[channel, reason]...]] each."""
    return [[n.kind, n.reason, list(n.channels), [list(w) for w in n.why]] for n in entries] if entries else None


def not_planned_from(stored: list[list[Any]]) -> tuple[NotPlanned, ...]:
    return tuple(NotPlanned(Kind(kind), reason, tuple(Channel(c) for c in channels),
                            tuple((Channel(c), why) for c, why in whys))
                 for kind, reason, channels, whys in stored)


def _utc(moment: datetime | None) -> datetime | None:
    """UTC, whatever zone the connection returned it in (rows read on the driver's cursor)."""
    if moment is None or moment.tzinfo is UTC:
        return moment
    return moment.astimezone(UTC)


# --- the timeline of a replan, stored compactly ---------------------------------------------
# A replan adds, changes and withdraws several messages at once; the timeline shows one
# `message.planned` entry per added or changed message, then one `message.withdrawn` per
# withdrawn one. They are stored as one row of this kind (a third of all rows an ingester
# wrote were these entries) and expanded, in the same order, when the timeline is read.

PLAN_CHANGES = "plan.changed"
MESSAGE_KEY = ["tenant_id", "booking_id", "key"]  # a message's unique key (uq_messages_booking_key)
_WITHDRAWN_REASON = "no longer applies"


def plan_changes_detail(diff: PlanDiff, left_out: tuple[NotPlanned, ...] = ()) -> dict[str, Any]:
    # Kind and Channel are str enums: JSON writes their values
    # due times are UTC (`PlannedMessage`): the JSON writer formats them as `isoformat` would
    detail: dict[str, Any] = {"planned": [[m.key, m.kind, m.channel, m.due_at] for m in diff.add + diff.update],
                              "withdrawn": [[key, key.split("/", 1)[0]] for key in diff.withdraw]}
    if left_out:
        detail["not_planned"] = group_not_planned(left_out)
    return detail


def group_not_planned(entries: Iterable[NotPlanned]) -> list[dict[str, Any]]:
    """One `message.not_planned` detail per reason: the kinds it concerned, their channels, and
    for `no_reachable_channel` each channel's own reason. In the planner's order."""
    by_reason: dict[str, dict[str, Any]] = {}
    for n in entries:
        group = by_reason.setdefault(n.reason, {"reason": n.reason, "kinds": [], "channels": []})
        if n.kind not in group["kinds"]:
            group["kinds"].append(n.kind.value)
        group["channels"].extend(c.value for c in n.channels if c.value not in group["channels"])
        if n.why:
            group.setdefault("channel_reasons", {}).update((c.value, why) for c, why in n.why)
    return list(by_reason.values())


def count_not_planned(rows: Iterable[tuple[Any, ...]]) -> dict[tuple[str, str], int]:
    """(reason, kind) -> how many the timeline rows (`_TIMELINE_WRITE` order: ..., kind, detail,
    plan) record as not planned."""
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        plan = row[4] if row[3] == PLAN_CHANGES else row[5]
        if plan and "not_planned" in plan:
            for group in plan["not_planned"]:
                for kind in group["kinds"]:
                    key = (group["reason"], kind)
                    counts[key] = counts.get(key, 0) + 1
    return counts


def expand_plan_changes(detail: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The (kind, detail) timeline entries a `plan.changed` row stands for."""
    for key, kind, channel, due_at in detail.get("planned", ()):
        yield "message.planned", {"key": key, "kind": kind, "channel": channel, "due_at": due_at}
    for key, kind in detail.get("withdrawn", ()):
        yield "message.withdrawn", {"key": key, "kind": kind, "reason": _WITHDRAWN_REASON}
    for group in detail.get("not_planned", ()):
        yield "message.not_planned", group


def _upsert(conn: Connection, table: Any, values: dict[str, Any], keys: list[str]) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table).values(**values)
    stmt = stmt.on_conflict_do_update(index_elements=keys, set_={k: v for k, v in values.items() if k not in keys})
    conn.execute(stmt)


def _insert_ignore(conn: Connection, table: Any, values: dict[str, Any] | list[dict[str, Any]], keys: list[str]):
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return conn.execute(dialect.insert(table).values(values).on_conflict_do_nothing(index_elements=keys))


_SAVE_LINKS_PG = (
    "INSERT INTO links (token, tenant_id, booking_id, created_at) "
    "SELECT v.token, v.tenant_id, v.booking_id, %(now)s::timestamptz "
    "FROM unnest(%(tokens)s::text[], %(tenants)s::text[], %(bookings)s::text[]) WITH ORDINALITY "
    "AS v(token, tenant_id, booking_id, n) ORDER BY v.n ON CONFLICT (token) DO NOTHING")


class Tx:
    """Reads and writes inside one transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name

    # --- events -------------------------------------------------------------------------
    def claim_event(self, event_id: str, tenant_id: str, type_: str, aggregate: str, revision: int,
                    outcome: str, now: datetime) -> bool:
        """Record an event as processed; False if it had been (dedup by event_id, N2)."""
        dialect = postgresql if self.dialect == "postgresql" else sqlite
        inserted = self.conn.execute(dialect.insert(t.processed_events).values(
            event_id=event_id, tenant_id=tenant_id, type=type_, aggregate=aggregate, revision=revision,
            outcome=outcome, processed_at=now,
        ).on_conflict_do_nothing(index_elements=["event_id"]).returning(t.processed_events.c.event_id)).first()
        return inserted is not None

    def set_event_outcome(self, event_id: str, outcome: str) -> None:
        self.conn.execute(update(t.processed_events).where(t.processed_events.c.event_id == event_id)
                          .values(outcome=outcome))

    def add_dead_letter(self, source: str, reason: str, body: bytes | str, now: datetime) -> int:
        result = self.conn.execute(t.dead_letters.insert().values(**dead_letter_row(source, reason, body, now))
                                   .returning(t.dead_letters.c.id))
        return int(result.scalar_one())

    # --- tenants, resources, customers, bookings ----------------------------------------
    def tenant(self, tenant_id: str) -> Tenant | None:
        row = self.conn.execute(select(t.tenants).where(t.tenants.c.id == tenant_id)).first()
        if row is None:
            return None
        return tenant_from(row)

    def save_tenant(self, tenant: Tenant, now: datetime) -> None:
        _upsert(self.conn, t.tenants, {
            "id": tenant.id, "name": tenant.name, "timezone": tenant.timezone, "home_region": tenant.home_region,
            "language": tenant.language, "channels": sorted(c.value for c in tenant.channels),
            "company": dict(tenant.company), "settings": dict(tenant.settings), "revision": tenant.revision,
            "updated_at": now, "webhook_url": tenant.webhook_url, "message_events": tenant.message_events,
            "sender": dict(tenant.sender) or None,
        }, ["id"])

    def resource(self, tenant_id: str, resource_id: str) -> Resource | None:
        c = t.resources.c
        row = self.conn.execute(select(t.resources).where(c.tenant_id == tenant_id, c.id == resource_id)).first()
        if row is None:
            return None
        return resource_from(row)

    def save_resource(self, resource: Resource) -> None:
        _upsert(self.conn, t.resources, {
            "tenant_id": resource.tenant_id, "id": resource.id, "name": resource.name, "type": resource.type,
            "timezone": resource.timezone, "settings": dict(resource.settings), "revision": resource.revision,
        }, ["tenant_id", "id"])

    def customer(self, tenant_id: str, customer_id: str) -> Customer | None:
        c = t.customers.c
        row = self.conn.execute(select(t.customers).where(c.tenant_id == tenant_id, c.id == customer_id)).first()
        if row is None:
            return None
        return customer_from(row)

    def save_customer(self, customer: Customer, phone_error: str | None = None) -> None:
        _upsert(self.conn, t.customers, {
            "tenant_id": customer.tenant_id, "id": customer.id, "name": customer.name, "phone": customer.phone,
            "phone_error": phone_error, "email": customer.email, "language": customer.language,
            "consents": sorted(x.value for x in customer.consents), "privacy_accepted": customer.privacy_accepted,
            "created_via_online_booking": customer.created_via_online_booking, "revision": customer.revision,
            "snapshot_at": customer.snapshot_at, "phone_type": customer.phone_type,
            "opted_out": sorted(x.value for x in customer.opted_out) or None,
        }, ["tenant_id", "id"])

    def booking(self, tenant_id: str, booking_id: str, *, lock: bool = False) -> Booking | None:
        c = t.bookings.c
        query = select(t.bookings).where(c.tenant_id == tenant_id, c.id == booking_id)
        if lock and self.dialect == "postgresql":
            query = query.with_for_update()
        row = self.conn.execute(query).first()
        if row is None:
            return None
        return booking_from(row)

    def save_booking(self, booking: Booking) -> None:
        _upsert(self.conn, t.bookings, {
            "tenant_id": booking.tenant_id, "id": booking.id, "customer_id": booking.customer_id,
            "resource_id": booking.resource_id, "starts_at": booking.starts_at, "ends_at": booking.ends_at,
            "created_at": booking.created_at, "scheduled_at": booking.scheduled_at, "source": booking.source,
            "service": booking.service, "status": booking.status.value,
            "workflow_status": dict(booking.workflow_status) if booking.workflow_status else None,
            "confirmed_at": booking.confirmed_at, "visit_outcome": booking.visit_outcome, "revision": booking.revision,
            "cancelled_by": booking.cancelled_by, "cancelled_at": booking.cancelled_at,
            "cancel_reason": booking.cancel_reason, "needs_approval": booking.needs_approval,
            "approved_at": booking.approved_at, "red_since": booking.red_since, "late_since": booking.late_since,
            "late_counter_since": booking.late_counter_since, "released_at": booking.released_at,
            "received_at": booking.received_at, "send_card": booking.send_card, "reminders": booking.reminders,
            "not_planned": not_planned_to_json(booking.not_planned),
        }, ["tenant_id", "id"])

    def active_bookings(self, tenant_id: str, *, customer_id: str | None = None,
                        resource_id: str | None = None) -> list[str]:
        c = t.bookings.c
        query = select(c.id).where(c.tenant_id == tenant_id, c.status == BookingStatus.ACTIVE.value)
        if customer_id is not None:
            query = query.where(c.customer_id == customer_id)
        if resource_id is not None:
            query = query.where(c.resource_id == resource_id)
        return [r.id for r in self.conn.execute(query.order_by(c.id))]

    # --- held events (arrived before what they follow) ------------------------------------
    def hold_event(self, event_id: str, tenant_id: str, aggregate: str, revision: int, body: str, reason: str,
                   now: datetime) -> None:
        _insert_ignore(self.conn, t.held_events, {
            "event_id": event_id, "tenant_id": tenant_id, "aggregate": aggregate, "revision": revision,
            "body": body, "held_at": now, "reason": reason}, ["event_id"])

    def next_held(self, tenant_id: str, aggregate: str, revision: int) -> list[tuple[str, str]]:
        """Held events of the aggregate at exactly `revision`: (event_id, body)."""
        c = t.held_events.c
        rows = self.conn.execute(select(c.event_id, c.body).where(
            c.tenant_id == tenant_id, c.aggregate == aggregate, c.revision == revision).order_by(c.event_id))
        return [(r.event_id, r.body) for r in rows]

    def held_since(self, before: datetime, limit: int = 100) -> list[tuple[str, str, int, str, str]]:
        """Oldest held events held before `before`: (event_id, tenant, revision, aggregate, body)."""
        c = t.held_events.c
        rows = self.conn.execute(select(c.event_id, c.tenant_id, c.revision, c.aggregate, c.body)
                                 .where(c.held_at < before).order_by(c.held_at, c.revision).limit(limit))
        return [(r.event_id, r.tenant_id, r.revision, r.aggregate, r.body) for r in rows]

    def lowest_held(self, tenant_id: str, aggregate: str) -> tuple[str, str, int] | None:
        c = t.held_events.c
        row = self.conn.execute(select(c.event_id, c.body, c.revision).where(
            c.tenant_id == tenant_id, c.aggregate == aggregate).order_by(c.revision, c.event_id).limit(1)).first()
        return (row.event_id, row.body, row.revision) if row else None

    def release_held(self, event_id: str) -> None:
        self.conn.execute(t.held_events.delete().where(t.held_events.c.event_id == event_id))

    # --- messages ------------------------------------------------------------------------
    def message(self, message_id: int) -> MessageRow | None:
        row = self.conn.execute(select(t.messages).where(t.messages.c.id == message_id)).first()
        return _message(row) if row else None

    def messages_of(self, tenant_id: str, booking_id: str) -> list[MessageRow]:
        c = t.messages.c
        rows = self.conn.execute(select(t.messages).where(c.tenant_id == tenant_id, c.booking_id == booking_id)
                                 .order_by(c.due_at, c.id))
        return [_message(r) for r in rows]

    # --- timeline ------------------------------------------------------------------------
    def add_timeline(self, tenant_id: str, booking_id: str, at: datetime, kind: str, detail: dict[str, Any],
                     message_id: int | None = None, dedup_key: str | None = None) -> None:
        values = {"tenant_id": tenant_id, "booking_id": booking_id, "at": at, "kind": kind, "detail": detail,
                  "message_id": message_id, "dedup_key": dedup_key}
        if dedup_key is None:
            self.conn.execute(t.timeline.insert().values(**values))
        else:
            _insert_ignore(self.conn, t.timeline, values, ["dedup_key"])

    def timeline(self, tenant_id: str, booking_id: str) -> list[dict[str, Any]]:
        c = t.timeline.c
        rows = self.conn.execute(select(t.timeline).where(c.tenant_id == tenant_id, c.booking_id == booking_id)
                                 .order_by(c.at, c.id))
        entries: list[dict[str, Any]] = []
        for r in rows:
            if r.kind == PLAN_CHANGES:
                entries.extend({"at": r.at, "kind": kind, "detail": detail, "message_id": None}
                               for kind, detail in expand_plan_changes(r.detail))
            else:
                entries.append({"at": r.at, "kind": r.kind, "detail": r.detail, "message_id": r.message_id})
            if r.plan:  # what the entry's event planned and withdrew (migration 0006)
                entries.extend({"at": r.at, "kind": kind, "detail": detail, "message_id": None}
                               for kind, detail in expand_plan_changes(r.plan))
        return entries

    # --- template bundles (R40) -------------------------------------------------------------
    def save_bundle(self, tenant_id: str, bundle, now: datetime) -> None:
        """Store a validated bundle and make it the tenant's active one (a reload is harmless)."""
        c = t.template_bundles.c
        self.conn.execute(update(t.template_bundles).where(c.tenant_id == tenant_id).values(active=False))
        _upsert(self.conn, t.template_bundles, {
            "tenant_id": tenant_id, "version": bundle.version, "name": bundle.name, "manifest": bundle.manifest,
            "files": bundle.files, "loaded_at": now, "active": True}, ["tenant_id", "version"])

    def active_bundle_version(self, tenant_id: str) -> str | None:
        c = t.template_bundles.c
        return self.conn.execute(select(c.version).where(c.tenant_id == tenant_id, c.active.is_(True))).scalar()

    def bundle(self, tenant_id: str, version: str) -> dict[str, Any] | None:
        c = t.template_bundles.c
        row = self.conn.execute(select(t.template_bundles).where(c.tenant_id == tenant_id, c.version == version)
                                ).first()
        return dict(row._mapping) if row else None

    # --- API keys (notifier/access.py) ------------------------------------------------------
    def add_api_key(self, key_id: str, key_hash: str, tenant_id: str | None, name: str, now: datetime) -> None:
        self.conn.execute(t.api_keys.insert().values(id=key_id, key_hash=key_hash, tenant_id=tenant_id, name=name,
                                                     created_at=now))

    def api_key(self, key_hash: str) -> Any:
        """The unrevoked key with this hash, or None."""
        c = t.api_keys.c
        return self.conn.execute(select(c.id, c.tenant_id, c.name).where(c.key_hash == key_hash,
                                                                          c.revoked_at.is_(None))).first()

    def api_keys(self) -> list[dict[str, Any]]:
        c = t.api_keys.c
        rows = self.conn.execute(select(c.id, c.tenant_id, c.name, c.created_at, c.revoked_at)
                                 .order_by(c.created_at, c.id))
        return [dict(row._mapping) for row in rows]

    def revoke_api_key(self, key_id: str, now: datetime) -> bool:
        c = t.api_keys.c
        done = self.conn.execute(update(t.api_keys).where(c.id == key_id, c.revoked_at.is_(None))
                                 .values(revoked_at=now))
        return done.rowcount == 1

    # --- the customer's links (notifier/links.py) -------------------------------------------
    def save_links(self, links: Iterable[tuple[str, str, str]], now: datetime) -> None:
        """Record (token, tenant id, booking id) rows; those already there stay as they are."""
        triples = sorted(set(links))  # one order: no deadlock between workers
        if not triples:
            return
        if self.dialect == "postgresql":  # a dispatch batch's every booking: arrays, nothing compiled per batch
            tokens, tenants, bookings = (list(x) for x in zip(*triples, strict=True))
            self.conn.exec_driver_sql(_SAVE_LINKS_PG, {"tokens": tokens, "tenants": tenants, "bookings": bookings,
                                                       "now": now})
            return
        _insert_ignore(self.conn, t.links, [{"token": token, "tenant_id": tenant_id, "booking_id": booking_id,
                                             "created_at": now} for token, tenant_id, booking_id in triples],
                       ["token"])

    def link_target(self, token: str) -> tuple[str, str] | None:
        """(tenant id, booking id) of a token, or None."""
        c = t.links.c
        row = self.conn.execute(select(c.tenant_id, c.booking_id).where(c.token == token)).first()
        return (row.tenant_id, row.booking_id) if row else None

    # --- message events for the booking system (notifier/domain/outbound.py) ----------------
    def add_message_events(self, events: Iterable[tuple[str, str, dict[str, Any]]], now: datetime) -> int:
        """Write (tenant id, type, data) message events to the outbox, for the tenants that opted
        in (`tenants.message_events`); the others' are dropped. Returns how many were written."""
        events = list(events)
        if not events:
            return 0
        c = t.tenants.c
        opted = set(self.conn.execute(select(c.id).where(c.id.in_(sorted({e[0] for e in events})),
                                                         c.message_events.is_(True))).scalars())
        rows = [{"tenant_id": tenant_id, "type": type_, "payload": data, "created_at": now}
                for tenant_id, type_, data in events if tenant_id in opted]
        if rows:
            self.conn.execute(t.outbox.insert(), rows)
        return len(rows)

    # --- attempts ------------------------------------------------------------------------
    def add_attempt(self, message_id: int, started_at: datetime, duration_ms: int, outcome: str,
                    provider_code: str | None, error: str | None) -> None:
        self.conn.execute(t.send_attempts.insert().values(
            message_id=message_id, started_at=started_at, duration_ms=duration_ms, outcome=outcome,
            provider_code=provider_code, error=error))


# --- the sweeps' statements (built here, run by Store.claim_due and services.sweep_states; the
# query-plan test compiles these same functions) -------------------------------------------------

def _constant(value: str) -> Any:
    """A value written into the SQL text instead of bound. A partial index answers a query only
    when its predicate (state = 'planned') can be proved from the statement; a plan PostgreSQL
    caches for a prepared statement (psycopg prepares after five runs) knows no bound values."""
    return literal(value, literal_execute=True)


def among(key: Any, ids: Select, dialect: str) -> Any:
    """`key IN (ids)`; on PostgreSQL `key = ANY(ARRAY(ids))`, which runs `ids` once, first, and then
    fetches each row by its key. (The planner sizes `IN (... LIMIT n)` by n, not by what is due,
    and for a large n would rather scan the whole table and hash-join it.)"""
    if dialect == "postgresql":
        return key == any_(func.array(ids.scalar_subquery()))
    return key.in_(ids.scalar_subquery())


DUE_QUESTIONS = ("due", "lease")  # planned rows whose time has come; claims whose lease ran out


def claim_due_statement(question: str, *, now: datetime, lease_s: int, limit: int, dialect: str) -> Update:
    """One question of the due sweep as a single UPDATE ... RETURNING: at most `limit` rows
    become `queued` under a new lease. Each question reads its own partial index
    (ix_messages_due, ix_messages_lease), so it costs what is due, not what is stored."""
    c = t.messages.c
    if question == "due":
        ids = select(c.id).where(c.state == _constant(MessageState.PLANNED.value), c.due_at <= now) \
            .order_by(c.due_at)
    elif question == "lease":
        in_flight = [_constant(MessageState.QUEUED.value), _constant(MessageState.SENDING.value)]
        ids = select(c.id).where(c.state.in_(in_flight), c.lease_until < now).order_by(c.lease_until)
    else:
        raise ValueError(f"unknown due question {question!r}")
    ids = ids.limit(limit)
    if dialect == "postgresql":
        ids = ids.with_for_update(skip_locked=True)  # two beats, two sweeps: each row claimed once
    return (update(t.messages).where(among(c.id, ids, dialect))
            .values(state=MessageState.QUEUED.value, lease_until=now + timedelta(seconds=lease_s), updated_at=now)
            .returning(c.id, c.channel))


def exhausted_claims_statement(*, now: datetime, max_claims: int, limit: int, dialect: str) -> Update:
    """The due sweep's containment: lapsed claims of messages claimed `max_claims` times already
    become `failed` instead of being handed out once more. Each claim for sending counts an
    attempt; a message whose dispatch never gets as far as recording an outcome (a worker that
    dies on it, a record the store refuses every time) would otherwise go round for ever, and take
    its batch-mates with it every time (ix_messages_lease, as the `lease` question)."""
    c = t.messages.c
    in_flight = [_constant(MessageState.QUEUED.value), _constant(MessageState.SENDING.value)]
    ids = select(c.id).where(c.state.in_(in_flight), c.lease_until < now, c.attempts >= max_claims) \
        .order_by(c.lease_until).limit(limit)
    if dialect == "postgresql":
        ids = ids.with_for_update(skip_locked=True)
    reason = f"set aside by the due sweep: claimed {max_claims} times or more without an outcome recorded"
    return (update(t.messages).where(among(c.id, ids, dialect))
            .values(state=MessageState.FAILED.value, lease_until=None, updated_at=now, error=reason)
            .returning(c.id, c.tenant_id, c.booking_id, c.kind, c.channel, c.recipient, c.attempts, c.resend_of,
                       c.error))


def state_checks_statement(*, now: datetime, limit: int, dialect: str) -> Select:
    """The state sweep's question: bookings whose markers may change by `now` (ix_bookings_next_check)."""
    b = t.bookings.c
    query = select(b.tenant_id, b.id).where(b.next_check_at <= now).order_by(b.next_check_at).limit(limit)
    if dialect == "postgresql":
        query = query.with_for_update(skip_locked=True)  # two beats, two sweeps: each booking once
    return query


def work_waiting_statements(*, now: datetime) -> dict[str, list[Select]]:
    """Beat's questions before it sends a sweep (tasks/celery_app.py): is there anything for it
    to do? One indexed probe each, a row at most: `due` (a due planned message, ix_messages_due;
    a lapsed claim, ix_messages_lease; an unpublished outbox event, ix_outbox_unpublished) and
    `states` (a booking whose markers change by now, ix_bookings_next_check)."""
    c, o, b = t.messages.c, t.outbox.c, t.bookings.c
    in_flight = [_constant(MessageState.QUEUED.value), _constant(MessageState.SENDING.value)]
    return {
        "due": [select(c.id).where(c.state == _constant(MessageState.PLANNED.value), c.due_at <= now).limit(1),
                select(c.id).where(c.state.in_(in_flight), c.lease_until < now).limit(1),
                select(o.id).where(o.published_at.is_(None)).limit(1)],
        "states": [select(b.id).where(b.next_check_at <= now).limit(1)],
    }


def is_outage(exc: BaseException) -> bool:
    """Whether an error is the database's (a lost connection; or it cannot serve now: shut down,
    out of connections or disk, a deadlock or serialization conflict, a timeout): wait and try
    again. Anything else (a value it refuses, a constraint, a statement it cannot run) is the
    input's fault: retrying the same input fails the same way (docs/reliability.md)."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError))
    return isinstance(exc, (ConnectionError, TimeoutError))


DEAD_LETTER_BODY_BYTES = 65_536  # kept of a dead letter's body; its size and SHA-256 are of all of it
DEAD_LETTER_REASON_CHARS = 2_000


def dead_letter_row(source: str, reason: str, body: bytes | str, now: datetime) -> dict[str, Any]:
    """A dead letter as stored, whatever the body held: at most DEAD_LETTER_BODY_BYTES of it (a
    megabyte of someone's data is evidence of nothing more than its first 64 KB), as text with
    what a text column cannot hold (NUL, bytes that are not UTF-8, lone surrogates) replaced by
    U+FFFD, with the whole body's size and SHA-256 so that a publisher can find its message."""
    raw = body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")
    kept = raw[:DEAD_LETTER_BODY_BYTES].decode("utf-8", "replace")
    if len(raw) > DEAD_LETTER_BODY_BYTES and kept.endswith("\ufffd"):
        kept = kept.rstrip("\ufffd")  # a character cut in two at the limit
    return {"received_at": now, "source": _safe_text(source)[:200], "reason": _safe_text(reason)[:DEAD_LETTER_REASON_CHARS],
            "body": kept.replace("\x00", "\ufffd"), "body_bytes": len(raw),
            "body_sha256": hashlib.sha256(raw).hexdigest()}


def _safe_text(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


_CHANNELS = frozenset(channel.value for channel in Channel)


def _fail_unknown_channels(conn: Connection, ids: list[int], now: datetime) -> list[tuple[Any, str]]:
    c = t.messages.c
    rows = conn.execute(select(c.id, c.tenant_id, c.booking_id, c.kind, c.channel, c.recipient, c.attempts,
                               c.resend_of).where(c.id.in_(ids))).all()
    out = []
    for row in rows:
        reason = f"unknown channel {_safe_text(str(row.channel))[:40]!r}: not one this version sends on"
        conn.execute(update(t.messages).where(c.id == row.id).values(
            state=MessageState.FAILED.value, lease_until=None, updated_at=now, error=reason))
        out.append((row, reason))
    return out


def _park_messages(conn: Connection, parked: list[tuple[Any, str]], now: datetime, *, loop: str) -> None:
    """Messages a loop failed for their own trouble: `message.failed` with the reason and the
    loop on their booking's timeline, and (a known channel) `message.failed` to the booking system."""
    from notifier.domain.outbound import message_event

    tx = Tx(conn)
    events = []
    for row, reason in parked:
        tx.add_timeline(row.tenant_id, row.booking_id, now, "message.failed",
                        {"kind": row.kind, "channel": _safe_text(str(row.channel))[:40], "reason": reason,
                         "by": loop}, message_id=row.id, dedup_key=f"message:{row.id}:failed")
        if row.channel in _CHANNELS:
            events.append((row.tenant_id, *message_event(
                MessageState.FAILED, message_id=row.id, booking_id=row.booking_id, kind=row.kind, channel=row.channel,
                recipient=row.recipient, at=now, reason=reason, resend_of=row.resend_of)))
    tx.add_message_events(events, now)


IN_FLIGHT = (MessageState.QUEUED.value, MessageState.SENDING.value)  # a claim's states before its outcome
_RENEW_PG = (  # one statement for every claim a worker holds
    "UPDATE messages SET lease_until = %(until)s FROM unnest(%(ids)s::int8[], %(tokens)s::int4[]) AS v(mid, token) "
    "WHERE messages.id = v.mid AND messages.claim_token = v.token AND messages.state = 'sending' "
    "RETURNING messages.id")


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self.engine.begin() as conn:
            yield Tx(conn)

    def migrate(self) -> None:
        from notifier.store.migrate import upgrade

        upgrade(self.engine)

    # --- claims (single statements, safe under concurrency) ------------------------------
    def claim_due(self, now: datetime, *, lease_s: int, limit: int,
                  max_claims: int | None = None) -> list[tuple[int, Channel]]:
        """Claim due messages for dispatch: planned rows whose time has come, and claims whose
        lease ran out (a lost task, a crashed worker). They become `queued` under a new lease.

        One message's trouble stays its own (N3): a row whose channel this version does not know
        (written by another version, or by hand) fails with that reason rather than failing
        the claim of everything due; with `max_claims`, a lapsed claim of a message claimed that
        often already fails rather than going round again (`exhausted_claims_statement`). Each
        is parked: the reason on its timeline and in `notifier_parked{loop="due sweep"}`."""
        claimed: list[tuple[int, Channel]] = []
        parked: list[tuple[Any, str]] = []
        with self.engine.begin() as conn:
            if max_claims is not None:
                parked += [(r, r.error) for r in conn.execute(exhausted_claims_statement(
                    now=now, max_claims=max_claims, limit=limit, dialect=conn.dialect.name))]
            for question in DUE_QUESTIONS:
                room = limit - len(claimed)
                if room <= 0:
                    break
                result = conn.execute(claim_due_statement(question, now=now, lease_s=lease_s, limit=room,
                                                          dialect=conn.dialect.name))
                unknown = []
                for r in result:
                    if r.channel in _CHANNELS:
                        claimed.append((r.id, Channel(r.channel)))
                    else:
                        unknown.append(r.id)
                if unknown:
                    parked += _fail_unknown_channels(conn, unknown, now)
            _park_messages(conn, parked, now, loop="due sweep")
        if parked:
            from notifier.observability.metrics import metrics

            metrics().parked.labels("due sweep").inc(len(parked))
        return sorted(claimed)

    def claim_batch_for_send(self, message_ids: Iterable[int], now: datetime, *, lease_s: int) -> list[MessageRow]:
        """Take a dispatch batch for the provider calls, in one statement: the queued messages
        among `message_ids` become `sending` under a new lease and a new claim token; the others
        (sent, withdrawn, taken by another worker) are left out. This single UPDATE is what
        makes a redelivered task harmless (N2): a second taker finds nothing queued."""
        c = t.messages.c
        ids = sorted(set(message_ids))
        if not ids:
            return []
        with self.engine.begin() as conn:
            rows = conn.execute(
                update(t.messages)
                .where(c.id.in_(ids), c.state == MessageState.QUEUED.value)
                .values(state=MessageState.SENDING.value, lease_until=now + timedelta(seconds=lease_s),
                        attempts=c.attempts + 1, claim_token=c.claim_token + 1, updated_at=now,
                        stamped_at=func.coalesce(c.stamped_at, c.due_at))
                .returning(*t.messages.c)
            ).all()
        return sorted((_message(r) for r in rows), key=lambda m: m.id)

    def renew_claims(self, claims: Iterable[tuple[int, int]], until: datetime) -> tuple[set[int], set[int]]:
        """Extend the lease of each (message id, claim token) to `until` where the message is
        still `sending` under that token. Returns the ids whose claim still holds, and those
        whose outcome has been recorded under it meanwhile (done, not lost). Any other claim
        lapsed and was handed out again (back to `queued`, or claimed anew under a new token):
        its old holder has lost it."""
        pairs = sorted(set(claims))
        if not pairs:
            return set(), set()
        c = t.messages.c
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                ids, tokens = (list(x) for x in zip(*pairs, strict=True))
                held = set(conn.exec_driver_sql(_RENEW_PG, {"ids": ids, "tokens": tokens, "until": until}).scalars())
            else:
                held = set()
                for message_id, token in pairs:  # SQLite: writers are serialised anyway
                    if conn.execute(update(t.messages).where(c.id == message_id, c.claim_token == token,
                                                             c.state == MessageState.SENDING.value)
                                    .values(lease_until=until)).rowcount:
                        held.add(message_id)
            rest = {message_id: token for message_id, token in pairs if message_id not in held}
            done = set()
            if rest:  # rare: recorded an instant ago, or really lost
                for message_id, token, state in conn.execute(select(c.id, c.claim_token, c.state)
                                                             .where(c.id.in_(list(rest)))):
                    if token == rest[message_id] and state not in IN_FLIGHT:
                        done.add(message_id)
            return held, done
    def release_claims(self, message_ids: Iterable[int], now: datetime) -> int:
        """Claims the due sweep made but could not hand out (the broker refused the dispatch
        task) go back to the plan at once rather than waiting for their lease. A task that did
        reach the broker then finds nothing queued to take, so nothing is sent twice."""
        c = t.messages.c
        ids = sorted(set(message_ids))
        if not ids:
            return 0
        with self.engine.begin() as conn:
            return conn.execute(update(t.messages).where(c.id.in_(ids), c.state == MessageState.QUEUED.value)
                                .values(state=MessageState.PLANNED.value, lease_until=None, updated_at=now)).rowcount

    def work_waiting(self, question: str, now: datetime) -> bool:
        """Whether the `due` or the `states` sweep has anything to do at `now` (`work_waiting_statements`)."""
        with self.engine.connect() as conn:
            return any(conn.execute(statement).first() is not None
                       for statement in work_waiting_statements(now=now)[question])

    def count_by_state(self) -> dict[str, int]:
        c = t.messages.c
        with self.engine.connect() as conn:
            return {r.state: r.n for r in conn.execute(select(c.state, func.count().label("n")).group_by(c.state))}

    def next_due_at(self) -> datetime | None:
        c = t.messages.c
        with self.engine.connect() as conn:
            return conn.execute(select(func.min(c.due_at)).where(c.state == MessageState.PLANNED.value)).scalar()

    def next_check_at(self) -> datetime | None:
        """The next moment a booking's markers change without an event (the state sweep's next work)."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.min(t.bookings.c.next_check_at))).scalar()
