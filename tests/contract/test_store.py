"""One suite over both stores: SQLite (embedded) and PostgreSQL (production).

The PostgreSQL half needs the server; it carries the `integration` marker."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from sqlalchemy import inspect, select, text

from notifier.services import apply_events, timeline_of
from notifier.store import schema as t
from notifier.store.migrate import downgrade, upgrade
from notifier.store.sql import Store, make_engine
from tests.conftest import START, created, event, make_context, make_settings


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store_ctx(tmp_path, database_url, clock):
    ctx = make_context(make_settings(tmp_path, database_url=database_url), channels={})
    yield ctx
    ctx.close()


def test_migrations_run_up_down_and_up_again(database_url):
    engine = make_engine(database_url)
    upgrade(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"tenants", "resources", "customers", "bookings", "messages", "send_attempts", "timeline",
            "processed_events", "dead_letters"} <= tables
    downgrade(engine, "base")
    assert "messages" not in inspect(engine).get_table_names()
    upgrade(engine)
    assert "messages" in inspect(engine).get_table_names()
    engine.dispose()


def test_schema_matches_the_models_after_migration(database_url):
    """Alembic's autogenerate finds nothing to do: the migration creates what schema.py says."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(database_url)
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), t.metadata)
        # autogenerate does not compare collations: the identifier columns' byte order is checked here
        collated = {(c.table_name, c.column_name): c.collation_name for c in conn.execute(text(
            "SELECT table_name, column_name, collation_name FROM information_schema.columns "
            "WHERE table_schema = current_schema()"))} if engine.dialect.name == "postgresql" else {}
    engine.dispose()
    assert diff == []
    for table in t.metadata.tables.values():
        for column in table.c if collated else ():
            wanted = getattr(column.type.dialect_impl(engine.dialect), "collation", None)
            assert collated[(table.name, column.name)] == wanted, (table.name, column.name)


def test_concurrent_claims_take_each_due_row_once(store_ctx):
    bodies = [json.dumps(created(f"b{i}", starts_at=START + timedelta(days=1))) for i in range(300)]
    apply_events(store_ctx.store, bodies, now=START, source="test")
    store: Store = store_ctx.store
    claimed: list[list[int]] = []
    lock = threading.Lock()

    def claimer():
        while True:
            got = store.claim_due(START, lease_s=60, limit=25)
            if not got:
                return
            with lock:
                claimed.append([mid for mid, _ in got])

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [mid for batch in claimed for mid in batch]
    assert len(ids) == len(set(ids)) == 300  # every info message, none twice


def test_claim_batch_for_send_is_won_by_exactly_one_worker(store_ctx):
    apply_events(store_ctx.store, [json.dumps(created())], now=START, source="test")
    [(message_id, _)] = [m for m in store_ctx.store.claim_due(START, lease_s=60, limit=10)]
    results = []
    barrier = threading.Barrier(4)

    def worker():
        barrier.wait()
        results.extend(store_ctx.store.claim_batch_for_send([message_id], START, lease_s=60))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 1 and results[0].claim_token == 1


def test_stored_times_come_back_aware_and_equal(store_ctx):
    apply_events(store_ctx.store, [json.dumps(created(starts_at=START + timedelta(days=1, hours=3)))], now=START,
                 source="test")
    with store_ctx.store.engine.connect() as conn:
        starts = conn.execute(select(t.bookings.c.starts_at)).scalar_one()
    assert starts == START + timedelta(days=1, hours=3) and starts.utcoffset() == timedelta(0)


def test_the_timeline_lists_each_change_and_message_in_the_order_it_happened(store_ctx):
    """A planned or withdrawn message is an entry of its own, right after the change that caused it,
    also when one batch carries many bookings' histories (P4)."""
    starts, moved = START + timedelta(days=2, hours=6), START + timedelta(days=3, hours=4)
    for batch in range(4):
        bodies = []
        for i in range(batch * 50, batch * 50 + 50):
            bodies.append(json.dumps(created(f"b{i}", starts_at=starts)))
            bodies.append(json.dumps(event("booking.rescheduled", {
                "booking_id": f"b{i}", "starts_at": moved.isoformat(),
                "ends_at": (moved + timedelta(minutes=30)).isoformat()}, revision=2)))
        apply_events(store_ctx.store, bodies, now=START, source="test")
    expected = [
        {"at": START, "kind": "booking.created", "message_id": None,
         "detail": {"starts_at": "2026-12-03T12:00:00+00:00", "resource_id": "anna", "source": "staff"}},
        {"at": START, "kind": "message.planned", "message_id": None,
         "detail": {"key": "info/customer", "kind": "info", "channel": "email", "due_at": "2026-12-01T06:00:00+00:00"}},
        {"at": START, "kind": "message.planned", "message_id": None,
         "detail": {"key": "reminder/customer/20261203T1200Z", "kind": "reminder", "channel": "email",
                    "due_at": "2026-12-03T07:00:00+00:00"}},
        {"at": START, "kind": "booking.rescheduled", "message_id": None,
         "detail": {"from": "2026-12-03T12:00:00+00:00", "to": "2026-12-04T10:00:00+00:00", "resource_id": "anna"}},
        {"at": START, "kind": "message.planned", "message_id": None,
         "detail": {"key": "reminder/customer/20261204T1000Z", "kind": "reminder", "channel": "email",
                    "due_at": "2026-12-04T07:00:00+00:00"}},
        {"at": START, "kind": "message.withdrawn", "message_id": None,
         "detail": {"key": "reminder/customer/20261203T1200Z", "kind": "reminder", "reason": "no longer applies"}},
    ]
    for i in range(200):
        assert timeline_of(store_ctx.store, "salon-berlin", f"b{i}") == expected, f"b{i}"
    # stored as one row per event: what an event planned rides on its own row (migration 0006)
    with store_ctx.store.engine.connect() as conn:
        kinds = conn.execute(select(t.timeline.c.kind).where(t.timeline.c.booking_id == "b7")
                             .order_by(t.timeline.c.id)).scalars().all()
    assert kinds == ["booking.created", "booking.rescheduled"]


def test_plan_changes_stored_as_a_row_of_their_own_are_still_shown(store_ctx):
    """Timelines written before migration 0006 keep a `plan.changed` row after the event's."""
    apply_events(store_ctx.store, [json.dumps(created("b1"))], now=START, source="test")
    with store_ctx.store.engine.begin() as conn:
        conn.execute(t.timeline.insert().values(
            tenant_id="salon-berlin", booking_id="b1", at=START + timedelta(minutes=1), kind="plan.changed",
            detail={"planned": [["late/customer/x", "late", "email", "2026-12-04T10:15:00+00:00"]],
                    "withdrawn": [["info/customer", "info"]]}))
    entries = timeline_of(store_ctx.store, "salon-berlin", "b1")
    assert [e["kind"] for e in entries][-2:] == ["message.planned", "message.withdrawn"]
    assert entries[-2]["detail"] == {"key": "late/customer/x", "kind": "late", "channel": "email",
                                     "due_at": "2026-12-04T10:15:00+00:00"}
    assert entries[-1]["detail"]["reason"] == "no longer applies"


def test_a_replan_does_not_undo_a_retry_backoff(tmp_path, database_url, clock):
    """A provider said "not before ten minutes" (429, Retry-After); an event that replans the
    booking meanwhile keeps the wait instead of putting the message back at its planned time."""
    from notifier.channels.base import TemporaryFailure
    from notifier.channels.fake import FakeChannel
    from notifier.domain.model import Channel
    from tests.conftest import customer
    from tests.unit.test_services import messages, run_due

    def busy(message):
        raise TemporaryFailure("429 from provider", code="429", retry_after_s=600)

    email = FakeChannel("email", behaviour=busy)
    ctx = make_context(make_settings(tmp_path, database_url=database_url), channels={Channel.EMAIL: email})

    def apply(*events):
        apply_events(ctx.store, [json.dumps(e) for e in events], now=ctx.clock.now(), source="test")

    apply(created(starts_at=START + timedelta(days=2, hours=6)))
    assert run_due(ctx)["retried"] == 1
    waiting = START + timedelta(seconds=600)
    assert [r.due_at for r in messages(ctx) if r.kind == "info"] == [waiting]
    apply(event("customer.updated", {"customer": customer(name="Erika Muster")}, revision=2))
    assert [r.due_at for r in messages(ctx) if r.kind == "info"] == [waiting]
    email.behaviour = None
    assert run_due(ctx)["sent"] == 0 and not email.sent
    clock.set(waiting)
    assert run_due(ctx)["sent"] == 1
    ctx.close()


def test_N1_N2_a_withdrawn_message_is_deleted_unless_attempted_or_claimed(tmp_path, database_url, clock):
    """Withdrawing deletes a message nothing refers to. One that was attempted (waiting for its
    retry) keeps its row, as `withdrawn`, and its attempts keep their message; one a sweep has
    claimed for dispatch stays too, so the dispatch finds it withdrawn and does not send it. The
    timeline lists every withdrawal either way."""
    from notifier.channels.base import TemporaryFailure
    from notifier.channels.fake import FakeChannel
    from notifier.domain.model import Channel
    from tests.unit.test_services import messages, run_due

    def busy(message):
        raise TemporaryFailure("503 from provider", code="503")

    email = FakeChannel("email", behaviour=busy)
    ctx = make_context(make_settings(tmp_path, database_url=database_url), channels={Channel.EMAIL: email})
    try:
        booking = created(tenant="clinic-full", starts_at=START + timedelta(days=2, hours=6),
                          resource={"id": "dr-weiss", "name": "Dr. Weiss", "type": "specialist"})
        apply_events(ctx.store, [json.dumps(booking)], now=START, source="test")
        ctx.clock.set(START + timedelta(hours=1))  # the info message waits for the end of the quiet hours
        assert run_due(ctx)["retried"] == 1  # the info message: one attempt, planned again for later
        planned = {r.kind: r for r in messages(ctx)}
        assert planned["info"].attempts == 1 and {"reminder", "confirmation", "feedback"} < set(planned)
        with ctx.store.engine.begin() as conn:  # the reminder as a sweep's claim leaves it
            conn.execute(t.messages.update().where(t.messages.c.id == planned["reminder"].id)
                         .values(state="queued", lease_until=START + timedelta(minutes=5)))
        apply_events(ctx.store, [json.dumps(event("booking.cancelled", {"booking_id": "b1", "by": "staff"},
                                                  tenant="clinic-full", revision=2))], now=START, source="test")
        assert {(r.kind, r.state) for r in messages(ctx)} == {("info", "withdrawn"), ("reminder", "withdrawn")}
        a, m = t.send_attempts.c, t.messages.c
        with ctx.store.engine.connect() as conn:
            attempts = conn.execute(select(a.message_id)).scalars().all()
            kept = conn.execute(select(m.id).where(m.id.in_(attempts))).scalars().all()
        assert attempts == [planned["info"].id] and kept == attempts  # no attempt lost its message
        withdrawn = [e["detail"]["kind"] for e in timeline_of(ctx.store, "clinic-full", "b1")
                     if e["kind"] == "message.withdrawn"]
        assert sorted(withdrawn) == sorted(planned)
        email.behaviour = None
        ctx.clock.set(START + timedelta(days=3))
        assert run_due(ctx)["sent"] == 0 and not email.sent
    finally:
        ctx.close()


def test_every_message_has_its_booking_though_no_foreign_key_says_so(store_ctx):
    """messages -> bookings is not a foreign key (the check cost a fifth of PostgreSQL's ingest
    work): the unit of work writes a booking before its messages, whatever order, duplication
    and batching its events arrive in, and a booking that never comes gets no messages."""
    import random

    from sqlalchemy import func

    from bench.workload import booking_events

    history = booking_events(600, customers=40)
    rng = random.Random(3)
    shuffled = history + rng.sample(history, 60)
    rng.shuffle(shuffled)
    shuffled.append(json.dumps(event("booking.rescheduled", {"booking_id": "never-created",
                                                              "starts_at": START.isoformat(),
                                                              "ends_at": START.isoformat()}, revision=2)))
    for i in range(0, len(shuffled), 97):
        apply_events(store_ctx.store, shuffled[i:i + 97], now=START, source="test")
    m, b = t.messages.c, t.bookings.c
    with store_ctx.store.engine.connect() as conn:
        planned = conn.execute(select(func.count()).select_from(t.messages)).scalar_one()
        orphans = conn.execute(select(func.count()).select_from(t.messages.outerjoin(
            t.bookings, (b.tenant_id == m.tenant_id) & (b.id == m.booking_id))).where(b.id.is_(None))).scalar_one()
    assert planned > 1000 and orphans == 0


@pytest.mark.integration
def test_N3_a_number_too_big_for_its_column_is_refused_not_stored_wrapped(pg_url, clock, tmp_path):
    """psycopg's binary COPY stores 2**40 in a 4-byte column as 0; the bulk writer refuses it."""
    from notifier.store.bulk import insert_rows

    ctx = make_context(make_settings(tmp_path, database_url=pg_url), channels={})
    columns = ["event_id", "tenant_id", "type", "aggregate", "revision", "outcome", "processed_at"]
    try:
        with pytest.raises(ValueError, match=r"processed_events.revision: 1099511627776 does not fit"):
            with ctx.store.transaction() as tx:
                insert_rows(tx.conn, t.processed_events, columns,
                            [("e1", "salon-berlin", "booking.created", "booking:b1", 2**40, "applied", START)])
        with ctx.store.engine.connect() as conn:
            assert conn.execute(select(t.processed_events)).all() == []
    finally:
        ctx.close()


@pytest.mark.integration
def test_P1_a_batch_looks_its_keys_up_in_the_indexes_whatever_its_size(pg_url, clock, tmp_path):
    """An ingester loads a batch's bookings and their messages by key. With two thousand
    keys against a table of tens of thousands of rows, a join let the planner scan the whole
    table (merge or hash join), so a batch cost what the table held: each key is an index probe."""
    from sqlalchemy import text

    from bench.common import fill_future_messages
    from notifier.store.batch import key_lookup_sql

    ctx = make_context(make_settings(tmp_path, database_url=pg_url), channels={})
    try:
        fill_future_messages(ctx.store, 60_000, after=START, per_booking=4)  # 15,000 bookings, ANALYZEd
        with ctx.store.engine.connect() as conn:
            keys = conn.execute(text("SELECT tenant_id, id FROM bookings ORDER BY random() LIMIT 2000")).all()
            cur = conn.connection.driver_connection.cursor()
            for table, id_column, lock in (("bookings", "id", True), ("messages", "booking_id", False)):
                sql = key_lookup_sql(table, ["tenant_id", id_column], id_column, lock=lock)
                cur.execute("EXPLAIN " + sql, [[k[0] for k in keys], [k[1] for k in keys]])
                plan = "\n".join(row[0] for row in cur.fetchall())
                assert "Index" in plan and "Seq Scan" not in plan and " Join" not in plan, plan
                cur.execute(sql, [[k[0] for k in keys], [k[1] for k in keys]])
                found = cur.fetchall()
                assert len(found) == {"bookings": 2000, "messages": 8000}[table]
            conn.rollback()
    finally:
        ctx.close()
