"""A unit of work for a batch of events: load in bulk, change in memory, flush in bulk.

Applying events one query at a time costs a dozen round trips per event. A `BatchSession`
instead loads every tenant, booking, customer, resource, message and held event the batch
names in a handful of queries (locking the bookings on PostgreSQL, in key order), lets the
services change the domain objects in memory, and writes everything back with multi-row
statements. Each event's changes are journaled, so an event that fails midway is undone
without touching the others (`begin_event` / `commit_event` / `rollback_event`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, case, delete, func, or_, select, tuple_, update
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
from notifier.domain.outbound import message_event
from notifier.domain.planning import PlanDiff, StoredMessage
from notifier.store import schema as t
from notifier.store.bulk import driver_errors, insert_rows
from notifier.store.sql import (
    MESSAGE_KEY,
    PLAN_CHANGES,
    Tx,
    _utc,
    booking_from,
    count_not_planned,
    customer_from,
    dead_letter_row,
    not_planned_to_json,
    plan_changes_detail,
    resource_from,
    tenant_from,
)

Key = tuple[str, str]  # (tenant_id, id)


class _Message(NamedTuple):  # a `StoredMessage` to planning: handed to it as it is, not copied
    key: str
    kind: str
    channel: Channel
    recipient: str
    state: MessageState
    due_at: datetime
    id: int | None  # None: not in the database yet
    changed: bool  # by this batch
    manual: bool = False  # an operator's resend or withdrawal: planning leaves it alone


_MISSING = object()
_CHANNELS = {c.value: c for c in Channel}
_STATES = {s.value: s for s in MessageState}
# an enum's `.value` is a descriptor call; this lookup is a tenth of it, on the hottest loops
_VALUE: dict[Any, str] = {m: m.value for enum in (Channel, MessageState, Kind, BookingStatus) for m in enum}
_BOOKING_COLUMNS = [c.name for c in t.bookings.c]
_CUSTOMER_COLUMNS = [c.name for c in t.customers.c]
_RESOURCE_COLUMNS = [c.name for c in t.resources.c]
_MESSAGE_COLUMNS = ["tenant_id", "booking_id", "key", "kind", "channel", "recipient", "state", "due_at", "id", "by"]
_TIMELINE_WRITE = ["tenant_id", "booking_id", "at", "kind", "detail", "plan"]
_MESSAGE_INSERT = ["tenant_id", "booking_id", "key", "kind", "channel", "recipient", "state", "due_at",
                   "attempts", "created_at", "updated_at"]


def key_lookup_sql(table: str, columns: list[str], id_column: str, *, equal: str | None = None,
                   lock: bool = False) -> str:
    """PostgreSQL: the rows of `table` whose (tenant_id, `id_column`) pair is in two parallel text
    arrays (parameters 1 and 2; `equal`: and that column equals parameter 3).

    Each pair is looked up in the index on its own, in the arrays' order (a LATERAL subquery,
    which OFFSET 0 keeps the planner from flattening into a join): as a join, once a batch named
    a thousand keys the planner chose a merge or hash join over the whole table, and a batch's
    cost grew with the table. The arrays' elements compare as the identifier columns do
    (COLLATE "C", `schema.Ident`), or no index would apply."""
    names = ", ".join(f'y."{c}"' for c in columns)
    where = f'y.tenant_id = k.t COLLATE "C" AND y."{id_column}" = k.i COLLATE "C"'
    if equal is not None:
        where += f' AND y."{equal}" = %s'
    return (f'SELECT x.* FROM unnest(%b::text[], %b::text[]) AS k(t, i) CROSS JOIN LATERAL '
            f'(SELECT {names} FROM {table} AS y WHERE {where} OFFSET 0{" FOR UPDATE" if lock else ""}) AS x')


class BatchSession:
    def __init__(self, conn: Connection, *, lock_bookings: bool = True) -> None:
        self.conn = conn
        self.lock_bookings = lock_bookings  # writers lock what they load; a reader (dispatch) does not
        self.tx = Tx(conn)
        self.dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        self.tenants: dict[str, Tenant | None] = {}
        self.bookings: dict[Key, Booking | None] = {}
        self.customers: dict[Key, Customer | None] = {}
        self.phone_errors: dict[Key, str | None] = {}
        self.resources: dict[Key, Resource | None] = {}
        self.messages: dict[Key, dict[str, _Message]] = {}
        self.held: dict[tuple[str, str], dict[str, tuple[int, str]]] = {}  # (tenant, aggregate) -> id -> (rev, body)
        self.dirty: dict[str, set] = defaultdict(set)
        self.stored: dict[str, set[Key]] = defaultdict(set)  # keys found in the database, by table
        self.timeline: list[tuple[Any, ...]] = []  # rows in `_TIMELINE_WRITE` order
        self.dead: list[dict[str, Any]] = []
        self.outbox: list[dict[str, Any]] = []
        self.next_check: dict[Key, datetime | None] = {}
        self.outcomes: dict[str, str] = {}
        self.unclaim: set[str] = set()
        self.new_holds: dict[str, dict[str, Any]] = {}
        self.released: set[str] = set()
        self._active_of_customer: dict[Key, list[str]] = {}  # as loaded, before this batch's changes
        # (tenant, customer) -> every booking of theirs this session has held (never shrinks, so an
        # event rolled back cannot hide one; `active_bookings` checks each against `bookings`)
        self._of_customer: dict[Key, set[Key]] = defaultdict(set)
        self._locked: set[str] = set()
        self._tried: set[str] = set()  # session locks from try_lock, until settle_locks
        self.regions: dict[str, Any] = {}  # channel -> regions where it is not offered (R6)
        self.memo: dict[Any, Any] = {}  # the services' per-batch caches
        self._journal: list[tuple[Any, Any, Any]] | None = None
        self._marks: tuple[int, int] = (0, 0)
        # (reason, kind) -> `message.not_planned` kinds the flush wrote (for the metric, after the commit)
        self.not_planned_written: dict[tuple[str, str], int] = {}

    # --- per-event atomicity ---------------------------------------------------------------
    def begin_event(self) -> None:
        self._journal = []
        self._marks = (len(self.timeline), len(self.dead))

    def commit_event(self) -> None:
        self._journal = None

    def rollback_event(self) -> None:
        for container, key, old in reversed(self._journal or []):
            if old is _MISSING:
                if isinstance(container, set):
                    container.discard(key)
                else:
                    container.pop(key, None)
            elif isinstance(container, set):
                container.add(key)
            else:
                container[key] = old
        del self.timeline[self._marks[0]:]
        del self.dead[self._marks[1]:]
        self._journal = None

    def _set(self, container: dict, key: Any, value: Any) -> None:
        if self._journal is not None:
            self._journal.append((container, key, container.get(key, _MISSING)))
        container[key] = value

    def _pop(self, container: dict, key: Any) -> None:
        if key not in container:
            return
        if self._journal is not None:
            self._journal.append((container, key, container[key]))
        del container[key]

    def _add(self, container: set, key: Any) -> None:
        if key in container:
            return
        if self._journal is not None:
            self._journal.append((container, key, _MISSING))
        container.add(key)

    def _discard(self, container: set, key: Any) -> None:
        if key not in container:
            return
        if self._journal is not None:
            self._journal.append((container, key, True))
        container.discard(key)

    # --- locks (PostgreSQL): several ingesters, one writer per booking and customer at a time ------
    def lock(self, keys: Iterable[str]) -> None:
        """Transaction-scoped advisory locks, taken in sorted order. A second ingester touching
        the same booking or customer waits for this batch to commit (a rare lock-order cycle
        is a deadlock error: the batch is retried, which is safe)."""
        wanted = sorted(set(keys) - self._locked)
        if not wanted or self.conn.dialect.name != "postgresql":
            return
        self.conn.exec_driver_sql(
            "SELECT pg_advisory_xact_lock(h) FROM (SELECT hashtextextended(k, 0) AS h "
            "FROM unnest(%(keys)b::text[]) AS k ORDER BY k) AS ordered", {"keys": wanted})
        self._locked.update(wanted)

    def take(self, keys: Iterable[str], *, wait: bool) -> set[str]:
        """`lock` (waiting, nothing refused) or `try_lock`: the keys another transaction holds."""
        if wait:
            self.lock(keys)
            return set()
        return self.try_lock(keys)

    def try_lock(self, keys: Iterable[str]) -> set[str]:
        """`lock` without waiting: takes what is free and returns the keys another transaction
        holds. An ingester defers the events behind those to its next batch instead of waiting
        for the other batch to commit, which with big batches would serialise the ingesters.

        These are session locks, so that what only deferred events took can be given back at
        once (two ingesters each holding half of what the other's deferred event needs would
        otherwise defer it again and again); `settle_locks` turns the rest into transaction locks
        before anything is written."""
        wanted = sorted(set(keys) - self._locked)
        if not wanted or self.conn.dialect.name != "postgresql":
            return set()
        rows = self.conn.exec_driver_sql(
            "SELECT k, pg_try_advisory_lock(hashtextextended(k, 0)) FROM unnest(%(keys)b::text[]) AS k",
            {"keys": wanted}).all()
        taken = {k for k, got in rows if got}
        self._locked |= taken
        self._tried |= taken
        return {k for k, got in rows if not got}

    def settle_locks(self, needed: set[str]) -> None:
        """Keep what `try_lock` took and `needed` names as transaction locks (taken at once: this
        session holds them) and drop every session lock, all in this transaction: nothing outlives
        it, so a pooler that hands the server connection on after it (PgBouncer in transaction
        mode) is safe."""
        if not self._tried:
            return
        keep = sorted(self._tried & needed)
        if keep:
            self.conn.exec_driver_sql(
                "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest(%(keys)b::text[]) AS k",
                {"keys": keep})
        self.conn.exec_driver_sql("SELECT pg_advisory_unlock_all()")
        self._locked = (self._locked - self._tried) | set(keep)
        self._tried = set()

    def drop_session_locks(self) -> None:
        """After a failure while locking: no session lock may outlive the transaction."""
        if self._tried:
            self.conn.exec_driver_sql("SELECT pg_advisory_unlock_all()")
            self._locked -= self._tried
            self._tried = set()

    # --- bulk loading -----------------------------------------------------------------------
    def preload(self, tenant_ids: Iterable[str], bookings: Iterable[Key], customers: Iterable[Key],
                resources: Iterable[Key]) -> None:
        self._load_tenants(set(tenant_ids) - set(self.tenants))
        self._load_bookings(set(bookings) - set(self.bookings))
        self._load_customers(set(customers) - set(self.customers))
        self._load_resources(set(resources) - set(self.resources))

    def _select(self, table: Any, columns: list[str], id_column: str, keys: Iterable[Key], *,
                lock: bool = False, equal: tuple[str, str] | None = None) -> list[Any]:
        """Rows (`columns` of `table`) whose (tenant_id, `id_column`) is one of `keys`, in one
        statement whatever the number of tenants (`equal`: and this column has this value).
        PostgreSQL: `key_lookup_sql` on the driver's cursor (rows as named tuples, no per-row
        processing); `lock` takes the rows FOR UPDATE, in key order."""
        keys = sorted(keys)
        if not keys:
            return []
        if self.conn.dialect.name == "postgresql":
            sql = key_lookup_sql(table.name, columns, id_column, equal=equal[0] if equal else None, lock=lock)
            # %b: the key arrays go binary, without the quoting scan psycopg runs on each text element
            params: list[Any] = [[k[0] for k in keys], [k[1] for k in keys], *([equal[1]] if equal else [])]
            from psycopg.rows import namedtuple_row

            with driver_errors(sql), self.conn.connection.driver_connection.cursor(row_factory=namedtuple_row) as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        c = table.c
        query = select(*(c[n] for n in columns)).where(tuple_(c.tenant_id, c[id_column]).in_(keys))
        if equal is not None:
            query = query.where(c[equal[0]] == equal[1])
        return list(self.conn.execute(query))

    def _load_tenants(self, ids: set[str]) -> None:
        if not ids:
            return
        for tenant_id in ids:
            self.tenants[tenant_id] = None
        for row in self.conn.execute(select(t.tenants).where(t.tenants.c.id.in_(sorted(ids)))):
            self.tenants[row.id] = tenant_from(row)

    def _load_bookings(self, keys: set[Key]) -> None:
        if not keys:
            return
        for key in keys:
            self.bookings[key] = None
        stored = self.stored["bookings"]
        for row in self._select(t.bookings, _BOOKING_COLUMNS, "id", keys, lock=self.lock_bookings):
            self.bookings[(row.tenant_id, row.id)] = booking_from(row)
            # kept as it is by a flush of the booking that does not set it (a replan outside `_save`)
            self.next_check[(row.tenant_id, row.id)] = _utc(row.next_check_at)
            stored.add((row.tenant_id, row.id))
            self._of_customer[(row.tenant_id, row.customer_id)].add((row.tenant_id, row.id))
        # a booking not in the database has no messages (they reference it); it may have held events
        self._load_messages({key for key in keys if self.bookings[key] is not None})
        self._load_held(keys)

    def _load_messages(self, keys: set[Key]) -> None:
        for key in keys:
            self.messages.setdefault(key, {})
        channels, states = _CHANNELS, _STATES
        for r in self._select(t.messages, _MESSAGE_COLUMNS, "booking_id", keys):
            self.messages[(r.tenant_id, r.booking_id)][r.key] = _Message(
                r.key, r.kind, channels[r.channel], r.recipient, states[r.state], r.due_at, r.id, False,
                r.by is not None)

    def _load_held(self, keys: set[Key]) -> None:
        wanted = {(tenant, f"booking:{bid}") for tenant, bid in keys}
        for pair in wanted:
            self.held.setdefault(pair, {})
        for r in self._select(t.held_events, ["event_id", "tenant_id", "aggregate", "revision", "body"],
                              "aggregate", wanted):
            self.held[(r.tenant_id, r.aggregate)][r.event_id] = (r.revision, r.body)

    def _load_customers(self, keys: set[Key]) -> None:
        if not keys:
            return
        for key in keys:
            self.customers[key] = None
        stored = self.stored["customers"]
        for row in self._select(t.customers, _CUSTOMER_COLUMNS, "id", keys):
            self.customers[(row.tenant_id, row.id)] = customer_from(row)
            stored.add((row.tenant_id, row.id))
            self.phone_errors[(row.tenant_id, row.id)] = row.phone_error

    def _load_resources(self, keys: set[Key]) -> None:
        if not keys:
            return
        for key in keys:
            self.resources[key] = None
        stored = self.stored["resources"]
        for row in self._select(t.resources, _RESOURCE_COLUMNS, "id", keys):
            self.resources[(row.tenant_id, row.id)] = resource_from(row)
            stored.add((row.tenant_id, row.id))

    # --- reads (loading what was not preloaded) ------------------------------------------------
    def tenant(self, tenant_id: str) -> Tenant | None:
        if tenant_id not in self.tenants:
            self._load_tenants({tenant_id})
        return self.tenants[tenant_id]

    def booking(self, tenant_id: str, booking_id: str) -> Booking | None:
        if (tenant_id, booking_id) not in self.bookings:
            self._load_bookings({(tenant_id, booking_id)})
        return self.bookings[(tenant_id, booking_id)]

    def customer(self, tenant_id: str, customer_id: str) -> Customer | None:
        if (tenant_id, customer_id) not in self.customers:
            self._load_customers({(tenant_id, customer_id)})
        return self.customers[(tenant_id, customer_id)]

    def resource(self, tenant_id: str, resource_id: str) -> Resource | None:
        if (tenant_id, resource_id) not in self.resources:
            self._load_resources({(tenant_id, resource_id)})
        return self.resources[(tenant_id, resource_id)]

    def active_of_customers(self, keys: set[Key]) -> dict[Key, list[str]]:
        """The ids of these customers' active bookings, in one query, locking nothing."""
        found: dict[Key, list[str]] = {key: [] for key in keys}
        for row in self._select(t.bookings, ["tenant_id", "customer_id", "id"], "customer_id", keys,
                                equal=("status", BookingStatus.ACTIVE.value)):
            found[(row.tenant_id, row.customer_id)].append(row.id)
        return found

    def prefetch_active_of_customers(self, keys: set[Key], found: dict[Key, list[str]] | None = None) -> None:
        """Lock and load the active bookings of customers the batch updates (`found`: their ids,
        when the caller has already asked). Each booking's lock is taken before its row's, as
        everywhere: row locks taken under a customer's lock alone let two ingesters deadlock."""
        if not keys:
            return
        found = self.active_of_customers(keys) if found is None else found
        self.lock(f"b:{tid}:{b}" for (tid, _), bs in found.items() for b in bs)
        for key in keys:
            self._active_of_customer[key] = found.get(key, [])
        self._load_bookings({(tid, b) for (tid, _), bs in found.items() for b in bs} - set(self.bookings))

    def active_bookings(self, tenant_id: str, *, customer_id: str | None = None,
                        resource_id: str | None = None) -> list[str]:
        """Active bookings matching the filter, as the batch has left them so far."""
        known = self._active_of_customer.get((tenant_id, customer_id)) if resource_id is None else None
        if known is not None:
            ids = set(known)
        else:
            ids = set(self.tx.active_bookings(tenant_id, customer_id=customer_id, resource_id=resource_id))
        unloaded = {(tenant_id, i) for i in ids} - set(self.bookings)
        if self.lock_bookings:
            self.lock(f"b:{tid}:{bid}" for tid, bid in sorted(unloaded))
        self._load_bookings(unloaded)
        if customer_id is not None and resource_id is None:  # the bookings this customer ever had here
            candidates = ((k, self.bookings[k]) for k in self._of_customer.get((tenant_id, customer_id), ()))
        else:
            candidates = self.bookings.items()
        for (tid, bid), booking in candidates:
            if tid != tenant_id or booking is None:
                continue
            matches = (booking.status is BookingStatus.ACTIVE
                       and (customer_id is None or booking.customer_id == customer_id)
                       and (resource_id is None or booking.resource_id == resource_id))
            (ids.add if matches else ids.discard)(bid)
        return sorted(ids)

    def existing_messages(self, tenant_id: str, booking_id: str) -> list[StoredMessage]:
        return list(self.messages.get((tenant_id, booking_id), {}).values())

    # --- writes (buffered) ---------------------------------------------------------------------
    def put_tenant(self, tenant: Tenant) -> None:
        self._set(self.tenants, tenant.id, tenant)
        self._add(self.dirty["tenants"], tenant.id)

    def put_booking(self, booking: Booking) -> None:
        key = (booking.tenant_id, booking.id)
        self._set(self.bookings, key, booking)
        self._add(self.dirty["bookings"], key)
        self._of_customer[(booking.tenant_id, booking.customer_id)].add(key)  # a superset: read back with care
        if key not in self.messages:
            self._set(self.messages, key, {})
        self.held.setdefault((booking.tenant_id, f"booking:{booking.id}"), {})

    def set_next_check(self, tenant_id: str, booking_id: str, at: datetime | None) -> None:
        self._set(self.next_check, (tenant_id, booking_id), at)

    def put_customer(self, customer: Customer, phone_error: str | None, *, opted_out_given: bool = False) -> None:
        """`customer` as it is now. The channels they opted out of (R3) are theirs, not the booking
        system's: kept from the customer held unless `opted_out_given`, while the number stays."""
        key = (customer.tenant_id, customer.id)
        held = self.customers.get(key)
        if not opted_out_given and held is not None and held.opted_out and held.phone == customer.phone:
            customer = replace(customer, opted_out=held.opted_out)
        self._set(self.customers, key, customer)
        self._set(self.phone_errors, key, phone_error)
        self._add(self.dirty["customers"], key)

    def put_resource(self, resource: Resource) -> None:
        key = (resource.tenant_id, resource.id)
        self._set(self.resources, key, resource)
        self._add(self.dirty["resources"], key)

    def apply_diff(self, tenant_id: str, booking_id: str, diff: PlanDiff) -> None:
        """Change the booking's messages as the diff says. The booking's messages are copied
        once per event and the copy changed (one journal entry, however many messages)."""
        key = (tenant_id, booking_id)
        box = dict(self.messages.get(key, ()))
        self._set(self.messages, key, box)
        self._add(self.dirty["messages"], key)
        planned, withdrawn = MessageState.PLANNED, MessageState.WITHDRAWN
        for m in diff.add:
            box[m.key] = _Message(m.key, _VALUE[m.kind], m.channel, m.recipient, planned, m.due_at, None, True)
        for m in diff.update:
            old = box[m.key]
            box[m.key] = _Message(m.key, old.kind, m.channel, old.recipient, planned, m.due_at, old.id, True)
        for k in diff.withdraw:
            old = box[k]
            if old.id is None:  # planned by this batch: it never reaches the database
                del box[k]
            else:
                box[k] = _Message(k, old.kind, old.channel, old.recipient, withdrawn, old.due_at, old.id, True)

    def add_timeline(self, tenant_id: str, booking_id: str, at: datetime, kind: str, detail: dict[str, Any]) -> None:
        self.timeline.append((tenant_id, booking_id, at, kind, detail, None))

    def add_plan_changes(self, tenant_id: str, booking_id: str, at: datetime, diff: PlanDiff,
                         left_out: tuple[NotPlanned, ...] = ()) -> None:
        """The timeline entries of a replan (`message.planned` per added or changed message,
        `message.withdrawn` per withdrawn one, `message.not_planned` per reason newly left out),
        stored together (`Tx.timeline` expands them): on the row this event just wrote for the
        booking, or, where it wrote none, a row of their own."""
        plan = plan_changes_detail(diff, left_out)
        last = self.timeline[-1] if len(self.timeline) > self._marks[0] else None
        if last is not None and last[0] == tenant_id and last[1] == booking_id and last[2] == at and last[5] is None:
            self.timeline[-1] = (*last[:5], plan)
        else:
            self.timeline.append((tenant_id, booking_id, at, PLAN_CHANGES, plan, None))

    def add_outbox(self, tenant_id: str, type_: str, payload: dict[str, Any], now: datetime) -> None:
        self.outbox.append({"tenant_id": tenant_id, "type": type_, "payload": payload, "created_at": now})

    def add_dead_letter(self, source: str, reason: str, body: bytes | str, now: datetime) -> None:
        self.dead.append(dead_letter_row(source, reason, body, now))

    def set_outcome(self, event_id: str, outcome: str) -> None:
        self._set(self.outcomes, event_id, outcome)

    def forget_claim(self, event_id: str) -> None:
        """A dead-lettered event was never processed: a replay must find it unclaimed."""
        self._add(self.unclaim, event_id)

    # --- held events ---------------------------------------------------------------------------
    def hold(self, event_id: str, tenant_id: str, aggregate: str, revision: int, body: str, reason: str,
             now: datetime) -> None:
        box = self.held.setdefault((tenant_id, aggregate), {})
        self._set(box, event_id, (revision, body))
        self._set(self.new_holds, event_id, {"event_id": event_id, "tenant_id": tenant_id, "aggregate": aggregate,
                                             "revision": revision, "body": body, "held_at": now, "reason": reason})

    def next_held(self, tenant_id: str, aggregate: str, revision: int) -> list[tuple[str, str]]:
        box = self.held.get((tenant_id, aggregate), {})
        return sorted((event_id, body) for event_id, (rev, body) in box.items() if rev == revision)

    def release_held(self, tenant_id: str, aggregate: str, event_id: str) -> None:
        self._pop(self.held.get((tenant_id, aggregate), {}), event_id)
        if event_id in self.new_holds:
            self._pop(self.new_holds, event_id)  # held and released within this batch: never written
        else:
            self._add(self.released, event_id)

    # --- flush ---------------------------------------------------------------------------------
    def flush(self, now: datetime) -> None:
        conn, d = self.conn, self.dialect
        if self.dirty["tenants"]:
            for tenant_id in sorted(self.dirty["tenants"]):
                self.tx.save_tenant(self.tenants[tenant_id], now)  # type: ignore[arg-type]
        # rows as tuples in the tables' column order (the `_*_COLUMNS` the loads read): no dict per row
        self._upsert(t.resources, _RESOURCE_COLUMNS, [
            (r.tenant_id, r.id, r.name, r.type, r.timezone, dict(r.settings), r.revision)
            for r in (self.resources[k] for k in sorted(self.dirty["resources"])) if r is not None])
        self._upsert(t.customers, _CUSTOMER_COLUMNS, [
            (c.tenant_id, c.id, c.name, c.phone, self.phone_errors.get((c.tenant_id, c.id)), c.email, c.language,
             sorted(x.value for x in c.consents), c.privacy_accepted, c.created_via_online_booking, c.revision,
             c.snapshot_at, c.phone_type, sorted(x.value for x in c.opted_out) or None)
            for c in (self.customers[k] for k in sorted(self.dirty["customers"])) if c is not None])
        self._upsert(t.bookings, _BOOKING_COLUMNS, [
            (b.tenant_id, b.id, b.customer_id, b.resource_id, b.starts_at, b.ends_at, b.created_at, b.scheduled_at,
             b.source, b.service, _VALUE[b.status], b.cancelled_by, b.cancelled_at, b.cancel_reason,
             b.needs_approval, b.approved_at, dict(b.workflow_status) if b.workflow_status else None,
             b.confirmed_at, b.visit_outcome, b.revision, b.red_since, b.late_since, b.late_counter_since,
             b.released_at, self.next_check.get((b.tenant_id, b.id)), b.received_at, b.send_card, b.reminders,
             not_planned_to_json(b.not_planned) if b.not_planned else None)
            for b in (self.bookings[k] for k in sorted(self.dirty["bookings"])) if b is not None])
        self._flush_messages(now)
        insert_rows(conn, t.timeline, _TIMELINE_WRITE, self.timeline)
        self.not_planned_written = count_not_planned(self.timeline)
        if self.dead:
            conn.execute(t.dead_letters.insert(), self.dead)
        if self.outbox:
            conn.execute(t.outbox.insert(), self.outbox)
        if self.new_holds:
            conn.execute(d.insert(t.held_events).on_conflict_do_nothing(index_elements=["event_id"]),
                         list(self.new_holds.values()))
        if self.released:
            conn.execute(delete(t.held_events).where(t.held_events.c.event_id.in_(sorted(self.released))))
        if self.unclaim:
            conn.execute(delete(t.processed_events).where(t.processed_events.c.event_id.in_(sorted(self.unclaim))))
        outcomes = [{"eid": e, "outcome": o} for e, o in self.outcomes.items() if e not in self.unclaim]
        if outcomes:
            pe = t.processed_events.c
            conn.execute(update(t.processed_events).where(pe.event_id == bindparam("eid"))
                         .values(outcome=bindparam("outcome")), outcomes)

    def _upsert(self, table: Any, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
        """Rows the batch found in the database are upserted; the rest (most bookings: new ones)
        are expected new, so on PostgreSQL they are COPYed straight in, not through the upsert."""
        stored = self.stored[table.name]
        new = [row for row in rows if (row[0], row[1]) not in stored]  # (tenant_id, id) lead every row
        old = [row for row in rows if (row[0], row[1]) in stored] if len(new) < len(rows) else []
        insert_rows(self.conn, table, columns, new, keys=["tenant_id", "id"], update=True, expect_new=True)
        insert_rows(self.conn, table, columns, old, keys=["tenant_id", "id"], update=True)

    def _flush_messages(self, now: datetime) -> None:
        """Planned messages are inserted; stored ones changed by this batch are planned again
        (new time or channel, or revived) or withdrawn. A withdrawn message that was never
        attempted is deleted: nothing refers to it, and the timeline keeps the withdrawal (a
        third of the rows an ingester touched were such, and an update costs a new row version
        in every index). One attempted (retrying) or already claimed for dispatch stays, as
        `withdrawn`, so the attempts keep their message and dispatch sees it is off."""
        inserts, replans, withdrawals = [], [], []
        announced: dict[int, tuple[str, str, _Message]] = {}  # withdrawals the tenant wants to hear of
        planned, withdrawn = MessageState.PLANNED, MessageState.WITHDRAWN
        for tenant_id, booking_id in sorted(self.dirty["messages"]):
            box = self.messages[(tenant_id, booking_id)]
            tenant = self.tenants.get(tenant_id)
            for key in sorted(k for k, m in box.items() if m.changed):
                m = box[key]
                if m.id is None:
                    inserts.append((tenant_id, booking_id, key, m.kind, _VALUE[m.channel], m.recipient,
                                    _VALUE[m.state], m.due_at, 0, now, now))
                elif m.state is planned:
                    replans.append((m.id, m.due_at, _VALUE[m.channel]))
                elif m.state is withdrawn:
                    withdrawals.append(m.id)
                    if tenant is not None and tenant.message_events:
                        announced[m.id] = (tenant_id, booking_id, m)
        # planned from what was loaded under the booking's lock: a conflict would be a bug, and is skipped
        insert_rows(self.conn, t.messages, _MESSAGE_INSERT, inserts, keys=MESSAGE_KEY, expect_new=True)
        # replans and withdrawals touch only rows nobody has claimed meanwhile: a sent message is never touched;
        # a message waiting out a retry's backoff keeps its later time (a replan must not undo the backoff)
        if replans:
            self._replan_stored(replans, now)
        if withdrawals:
            done = self._withdraw_stored(withdrawals, now)
            self._announce_withdrawals([announced[i] for i in sorted(done & set(announced))], now)

    def _announce_withdrawals(self, withdrawn: list[tuple[str, str, _Message]], now: datetime) -> None:
        """`message.withdrawn` for each stored message this batch withdrew (those a worker had taken
        meanwhile were not withdrawn, and are not announced), for tenants that opted in."""
        rows = []
        for tenant_id, booking_id, m in withdrawn:
            type_, data = message_event(MessageState.WITHDRAWN, message_id=m.id or 0, booking_id=booking_id,
                                        kind=m.kind, channel=_VALUE[m.channel], recipient=m.recipient, at=now,
                                        reason="no longer applies")
            rows.append({"tenant_id": tenant_id, "type": type_, "payload": data, "created_at": now})
        if rows:
            self.conn.execute(t.outbox.insert(), rows)

    def _replan_stored(self, replans: list[tuple[int, datetime, str]], now: datetime) -> None:
        if self.conn.dialect.name == "postgresql":  # one statement, whatever the number of rows
            ids, dues, channels = map(list, zip(*replans, strict=True))
            self.conn.exec_driver_sql(
                "UPDATE messages SET state = 'planned', channel = v.ch, lease_until = NULL, "
                "due_at = CASE WHEN messages.attempts > 0 THEN GREATEST(messages.due_at, v.due) ELSE v.due END, "
                "updated_at = %(now)s FROM unnest(%(id)b::int8[], %(due)b::timestamptz[], %(ch)b::text[]) "
                "AS v(id, due, ch) WHERE messages.id = v.id AND messages.state IN ('planned', 'withdrawn')",
                {"now": now, "id": ids, "due": dues, "ch": channels})
            return
        c = t.messages.c
        due = bindparam("due", type_=c.due_at.type)
        self.conn.execute(update(t.messages).where(
            c.id == bindparam("mid"),  # no IN (...): executemany cannot expand a list
            or_(c.state == MessageState.PLANNED.value, c.state == MessageState.WITHDRAWN.value),
        ).values(state=MessageState.PLANNED.value, channel=bindparam("ch"), lease_until=None, updated_at=now,
                 due_at=case((c.attempts > 0, func.max(c.due_at, due)), else_=due)),
            [{"mid": i, "due": d, "ch": ch} for i, d, ch in replans])

    def _withdraw_stored(self, ids: list[int], now: datetime) -> set[int]:
        """Returns the ids withdrawn (deleted or kept as `withdrawn`): not those a worker took meanwhile."""
        if self.conn.dialect.name == "postgresql":
            deleted = set(self.conn.exec_driver_sql(
                "DELETE FROM messages WHERE id = ANY(%(ids)b::int8[]) AND state = 'planned' AND attempts = 0 "
                "RETURNING id", {"ids": ids}).scalars().all())  # one fetch, not one per deleted row
            kept = set(ids) - deleted
            if kept:  # attempted, or claimed by a sweep meanwhile: they stay, withdrawn
                deleted |= set(self.conn.exec_driver_sql(
                    "UPDATE messages SET state = 'withdrawn', lease_until = NULL, updated_at = %(now)s "
                    "WHERE id = ANY(%(ids)b::int8[]) AND state IN ('planned', 'queued') RETURNING id",
                    {"now": now, "ids": sorted(kept)}).scalars().all())
            return deleted
        c = t.messages.c
        done: set[int] = set()
        for chunk in (ids[i:i + 10_000] for i in range(0, len(ids), 10_000)):  # SQLite binds each id
            done |= set(self.conn.execute(delete(t.messages).where(
                c.id.in_(chunk), c.state == MessageState.PLANNED.value, c.attempts == 0).returning(c.id)).scalars())
            done |= set(self.conn.execute(update(t.messages).where(
                c.id.in_(chunk), or_(c.state == MessageState.PLANNED.value, c.state == MessageState.QUEUED.value),
            ).values(state=MessageState.WITHDRAWN.value, lease_until=None, updated_at=now).returning(c.id)).scalars())
        return done
