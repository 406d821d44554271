"""Read-only questions the web app and the metrics ask of the store (the read side).

As in cosmicpython's `views.py`: queries that change nothing and return plain data, kept
apart from the use cases in `notifier.services`. Each one is answered from an index, and
the ones that could grow with the table are bounded (a page, a day, a time window), so a
planner's refresh or a Prometheus scrape costs what it shows, not what the store holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, case, func, literal, select
from sqlalchemy.sql.elements import ColumnElement

from notifier.domain.model import BookingStatus, MessageState
from notifier.domain.planning import apply_flags, booking_flags
from notifier.domain.workflow import StatusEntry, status_history
from notifier.services import settings_for
from notifier.store import schema as t
from notifier.store.sql import Store, among, booking_from, group_not_planned

# --- dead letters (N3) -------------------------------------------------------------------------

DEAD_LETTER_PAGE_MAX = 500


def dead_letters_page(store: Store, *, after_id: int = 0, limit: int = 50) -> list[dict[str, Any]]:
    """Dead letters with an id above `after_id`, oldest first, at most `limit` (primary key range).

    The body is left out: it is the booking system's event as sent, with the customer's name,
    phone and email in it (N7). `notifier dlq list` shows it to whoever may see it."""
    d = t.dead_letters.c
    limit = max(1, min(limit, DEAD_LETTER_PAGE_MAX))
    with store.engine.connect() as conn:
        rows = conn.execute(select(d.id, d.received_at, d.source, d.reason, d.replayed_at, d.body_bytes,
                                   d.body_sha256, func.length(d.body).label("body_chars"))
                            .where(d.id > after_id).order_by(d.id).limit(limit)).all()
    return [{"id": r.id, "received_at": r.received_at.isoformat(), "source": r.source, "reason": r.reason,
             "replayed_at": r.replayed_at.isoformat() if r.replayed_at else None, "body_chars": r.body_chars,
             "body_bytes": r.body_bytes, "body_sha256": r.body_sha256}
            for r in rows]


# --- markers behind the counters (R12, R16) ----------------------------------------------------

def lit_markers(store: Store, tenant_id: str, day: date, *, now: datetime,
                regions: Mapping[str, Iterable[str]] | None = None,
                resource_id: str | None = None) -> list[dict[str, Any]]:
    """The bookings of a local day that count in a counter at `now`, with the time each marker
    lit. The time is the one the store recorded when the state sweep has seen it, else the
    moment the rule says (`apply_flags`, the sweep's own rule), so the answer does not wait for
    a sweep. Bookings due for release are off the board, as in `services.counters`."""
    b = t.bookings.c
    with store.transaction() as tx:
        tenant = tx.tenant(tenant_id)
        if tenant is None:
            raise LookupError(tenant_id)
        start = datetime.combine(day, datetime.min.time(), tzinfo=ZoneInfo(tenant.timezone))
        query = select(t.bookings).where(b.tenant_id == tenant_id, b.status == BookingStatus.ACTIVE.value,
                                         b.starts_at >= start, b.starts_at < start + timedelta(days=1))
        if resource_id is not None:
            query = query.where(b.resource_id == resource_id)
        rows = tx.conn.execute(query.order_by(b.starts_at, b.id)).all()
        resources = {r: tx.resource(tenant_id, r) for r in {row.resource_id for row in rows}}
    out: list[dict[str, Any]] = []
    for row in rows:
        booking, resource = booking_from(row), resources[row.resource_id]
        if resource is None:
            continue
        settings = settings_for(tenant, resource, regions)
        flags = booking_flags(booking, settings, now)
        if flags.release_due or not (flags.unconfirmed or flags.red or flags.late or flags.late_counter):
            continue
        lit, _ = apply_flags(booking, settings, now)
        out.append({"booking_id": booking.id, "resource_id": booking.resource_id,
                    "starts_at": booking.starts_at.isoformat(), "unconfirmed": flags.unconfirmed,
                    "red_since": _iso(lit.red_since), "late_since": _iso(lit.late_since),
                    "late_counter_since": _iso(lit.late_counter_since)})
    return out


def _iso(moment: datetime | str | None) -> str | None:
    return moment.isoformat() if isinstance(moment, datetime) else moment


# --- one booking as it stands (R35, issue 19) ----------------------------------------------------

def booking_view(store: Store, tenant_id: str, booking_id: str, *, now: datetime,
                 regions: Mapping[str, Iterable[str]] | None = None) -> dict[str, Any] | None:
    """A booking's current state for its booking system and for people (`notifier booking show`):
    status and workflow status, markers, the status history newest first (R35), its messages
    (planned, in flight, sent, failed and withdrawn, each with its state) and what planning left
    out with the reason. None when there is no such booking. Read from the booking's row, its
    messages and its timeline (one index range each)."""
    with store.transaction() as tx:
        booking = tx.booking(tenant_id, booking_id)
        if booking is None:
            return None
        tenant = tx.tenant(tenant_id)
        resource = tx.resource(tenant_id, booking.resource_id)
        rows = tx.messages_of(tenant_id, booking_id)
        timeline = tx.timeline(tenant_id, booking_id)
    flags = booking_flags(booking, settings_for(tenant, resource, regions), now) \
        if tenant is not None and resource is not None else None
    return {
        "tenant_id": tenant_id, "booking_id": booking.id, "customer_id": booking.customer_id,
        "resource_id": booking.resource_id, "starts_at": _iso(booking.starts_at), "ends_at": _iso(booking.ends_at),
        "timezone": tenant.timezone if tenant else None, "created_at": _iso(booking.created_at),
        "revision": booking.revision, "status": booking.status.value,
        "workflow_status": dict(booking.workflow_status) if booking.workflow_status else None,
        "needs_approval": booking.needs_approval, "approved_at": _iso(booking.approved_at),
        "confirmed_at": _iso(booking.confirmed_at), "visit_outcome": booking.visit_outcome,
        "cancelled_by": booking.cancelled_by, "cancelled_at": _iso(booking.cancelled_at),
        "cancel_reason": booking.cancel_reason,
        "markers": {"unconfirmed": bool(flags and flags.unconfirmed), "red_since": _iso(booking.red_since),
                    "late_since": _iso(booking.late_since), "late_counter_since": _iso(booking.late_counter_since),
                    "released_at": _iso(booking.released_at)},
        "status_history": [{"at": _iso(e.at), "status": e.status, "kind": e.kind, "reason": e.reason,
                            "description": e.description, "position": e.position, "colour": e.colour}
                           for e in status_history(_status_entries(timeline))],
        "messages": _messages(rows, timeline),
        "not_planned": _not_planned(booking.not_planned, timeline),
    }


def _status_entries(timeline: list[dict[str, Any]]) -> list[StatusEntry]:
    """The workflow statuses the booking passed (R35): the one it was created in, then each change."""
    entries = []
    for e in timeline:
        detail = e["detail"] or {}
        shown = {name: detail.get(name) for name in ("description", "position", "colour")}
        if e["kind"] == "booking.created" and detail.get("status"):
            entries.append(StatusEntry(e["at"], detail["status"], detail.get("status_kind", "none"), **shown))
        elif e["kind"] == "booking.status_changed":
            entries.append(StatusEntry(e["at"], detail.get("status", ""), detail.get("kind", "none"),
                                       detail.get("reason"), **shown))
    return entries


def _messages(rows: list[Any], timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The booking's messages in due order. A withdrawn message nobody had tried to send is no
    longer stored (migration 0008): it is listed from the timeline, which keeps the withdrawal."""
    planned: dict[str, dict[str, Any]] = {}  # the last `message.planned` detail of each key
    withdrawn: dict[str, tuple[Any, dict[str, Any]]] = {}  # key -> (at, detail), while not planned again
    for e in timeline:
        key = (e["detail"] or {}).get("key")
        if key is None:
            continue
        if e["kind"] == "message.planned":
            planned[key] = e["detail"]
            withdrawn.pop(key, None)
        elif e["kind"] == "message.withdrawn":
            withdrawn[key] = (e["at"], e["detail"])
    out = []
    for r in rows:
        gone = withdrawn.get(r.key) if r.state is MessageState.WITHDRAWN else None
        out.append({"id": r.id, "key": r.key, "kind": r.kind, "channel": r.channel.value, "recipient": r.recipient,
                    "state": r.state.value, "due_at": _iso(r.due_at), "attempts": r.attempts,
                    "sent_at": _iso(r.sent_at), "error": r.error, "withdrawn_at": _iso(gone[0]) if gone else None,
                    "by": r.by, "resend_of": r.resend_of})
    stored = {r.key for r in rows}
    for key, (at, detail) in withdrawn.items():
        if key in stored:
            continue
        kind = str(detail.get("kind", ""))
        out.append({"id": None, "key": key, "kind": kind, "channel": planned.get(key, {}).get("channel"),
                    "recipient": "staff" if kind.startswith(("staff_", "activity_")) else "customer",
                    "state": MessageState.WITHDRAWN.value, "due_at": _iso(planned.get(key, {}).get("due_at")),
                    "attempts": 0, "sent_at": None, "error": detail.get("reason"), "withdrawn_at": _iso(at),
                    "by": None, "resend_of": None})
    return sorted(out, key=lambda m: (m["due_at"] or "", m["key"]))


def _not_planned(entries: tuple[Any, ...], timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What planning leaves out now, one entry per reason as on the timeline, with the time the
    reason was last written there."""
    written = {e["detail"]["reason"]: e["at"] for e in timeline if e["kind"] == "message.not_planned"}
    return [dict(group, since=_iso(written.get(group["reason"]))) for group in group_not_planned(entries)]


# --- what the metrics read (P5) ----------------------------------------------------------------
# Built as statements (like the sweeps' in store/sql.py) so the query-plan test explains the very
# texts a scrape sends. States and the window's start are written into the SQL text: a partial
# index answers only when its predicate can be proved from the statement, and a window bound
# known to the planner lets it see that the window is small. With no parameters left, a statement
# is planned with its values every time (its text changes every scrape, so psycopg never prepares
# it, and there is no generic plan to go wrong).

IN_FLIGHT = (MessageState.QUEUED.value, MessageState.SENDING.value)
LATENESS_BUCKETS_S = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class Backlog:
    oldest_due_at: datetime | None  # of the messages due and not sent: planned, queued or sending
    counts: dict[str, int]  # planned (due, not yet claimed), queued, sending


@dataclass(frozen=True)
class Lateness:
    channel: str
    buckets: list[int]  # cumulative counts, one per LATENESS_BUCKETS_S and a last one for +Inf
    sum_s: float


def _constant(value: Any, type_: Any = None) -> Any:
    return literal(value, type_, literal_execute=True)


def backlog_statements(*, now: datetime) -> dict[str, Select]:
    """Messages due and not sent. Planned ones are read from ix_messages_due (only planned rows,
    by due time: the range up to `now` is what is late); queued and sending ones from
    ix_messages_lease (only rows in flight)."""
    m = t.messages.c
    return {
        "planned": select(func.count(), func.min(m.due_at)).where(
            m.state == _constant(MessageState.PLANNED.value), m.due_at <= _constant(now, m.due_at.type)),
        "in_flight": select(m.state, func.count(), func.min(m.due_at)).where(
            m.state.in_([_constant(s) for s in IN_FLIGHT])).group_by(m.state),
    }


def backlog(store: Store, *, now: datetime) -> Backlog:
    questions = backlog_statements(now=now)
    with store.engine.connect() as conn:
        planned = conn.execute(questions["planned"]).one()
        flying = conn.execute(questions["in_flight"]).all()
    counts = {MessageState.PLANNED.value: planned[0], **{state: 0 for state in IN_FLIGHT}}
    oldest = [planned[1]] if planned[1] else []
    for state, count, first_due in flying:
        counts[state] = count
        oldest.append(first_due)
    return Backlog(min(oldest) if oldest else None, counts)


def _seconds(later: ColumnElement, earlier: ColumnElement, dialect: str) -> ColumnElement:
    if dialect == "sqlite":  # stored as ISO text in UTC
        return (func.julianday(later) - func.julianday(earlier)) * _constant(86400.0)
    return func.extract("epoch", later - earlier)


def _sent_recently(since: datetime, dialect: str, *, outcome: str | None = None) -> ColumnElement:
    """Messages with a send attempt since then: the attempts are found by
    ix_send_attempts_started_at (the window), each message then fetched by its key, once
    (`among`: = ANY(ARRAY(...)) on PostgreSQL, so no estimate can turn it into a table scan)."""
    a, m = t.send_attempts.c, t.messages.c
    attempts = select(a.message_id).where(a.started_at >= _constant(since, a.started_at.type))
    if outcome is not None:
        attempts = attempts.where(a.outcome == _constant(outcome))
    return among(m.id, attempts, dialect)


def lateness_statement(*, now: datetime, window_s: float, dialect: str) -> Select:
    m = t.messages.c
    late = _seconds(m.sent_at, m.due_at, dialect)
    buckets = [func.sum(case((late <= _constant(bound), _constant(1)), else_=_constant(0)))
               for bound in LATENESS_BUCKETS_S]
    return (select(m.channel, func.count(), func.coalesce(func.sum(late), _constant(0.0)), *buckets)
            .where(_sent_recently(now - timedelta(seconds=window_s), dialect, outcome="sent"), m.sent_at.isnot(None))
            .group_by(m.channel).order_by(m.channel))


def lateness(store: Store, *, now: datetime, window_s: float) -> list[Lateness]:
    """Due-to-sent lateness (sent_at - due_at) of the messages sent in the last `window_s`, per
    channel, as cumulative histogram buckets. A retried message counts from its last due time
    (the retry's), so this shows the pipeline's delay, not the provider's outage."""
    with store.engine.connect() as conn:
        rows = conn.execute(lateness_statement(now=now, window_s=window_s, dialect=store.dialect)).all()
    return [Lateness(row[0], [int(v or 0) for v in row[3:]] + [int(row[1])], float(row[2])) for row in rows]


def recent_sends_statement(*, now: datetime, window_s: float, dialect: str) -> Select:
    m = t.messages.c
    return (select(m.channel, m.state, func.count()).where(_sent_recently(now - timedelta(seconds=window_s), dialect))
            .group_by(m.channel, m.state))


def recent_sends(store: Store, *, now: datetime, window_s: float) -> dict[tuple[str, str], int]:
    """Messages with a send attempt in the last `window_s`, by channel and their delivery
    status now (sent, delivered, read, failed; planned again while a retry waits)."""
    with store.engine.connect() as conn:
        rows = conn.execute(recent_sends_statement(now=now, window_s=window_s, dialect=store.dialect)).all()
    return {(channel, state): count for channel, state, count in rows}


def metric_statements(*, now: datetime, window_s: float, dialect: str) -> dict[str, Select]:
    """Every statement a scrape runs, by name (for the query-plan test)."""
    return {**backlog_statements(now=now), "lateness": lateness_statement(now=now, window_s=window_s, dialect=dialect),
            "recent_sends": recent_sends_statement(now=now, window_s=window_s, dialect=dialect)}


# --- a booking's timeline for people (`notifier timeline`, the demo) -------------------------------

def local_time(moment: datetime, zone: ZoneInfo) -> str:
    """An instant as a person in `zone` reads it: "Tue 2026-12-01 08:00" (stored times are UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return f"{moment.astimezone(zone):%a %Y-%m-%d %H:%M}"


def _local_value(value: Any, zone: ZoneInfo) -> Any:
    if isinstance(value, datetime):
        return local_time(value, zone)
    if isinstance(value, str) and len(value) >= 20 and value[4:5] == "-" and value[10:11] == "T":
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
        return local_time(moment, zone) if moment.tzinfo is not None else value
    return value


def timeline_lines(entries: Iterable[Mapping[str, Any]], zone: ZoneInfo) -> list[str]:
    """One line per entry: when (local time), what, and its details with their times local too."""
    lines = []
    for entry in entries:
        detail = entry.get("detail") or {}
        what = ", ".join(f"{k}={_local_value(v, zone)}" for k, v in detail.items() if v not in (None, "") and k != "key")
        lines.append(f"{local_time(entry['at'], zone)}  {entry['kind']:<22} {what}".rstrip())
    return lines
