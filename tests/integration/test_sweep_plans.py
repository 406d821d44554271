"""P2 (issue 7): a sweep costs what is due, not what is stored. On PostgreSQL, with tables full of
rows that are not due (future messages, sent ones, live claims, bookings checked later, recent
event ids) and a handful that are, every question the sweeps and housekeeping ask reads an index
and touches about as many rows as it returns: no sequential scan, under a custom plan and under
the generic plan PostgreSQL may cache for a prepared statement (psycopg prepares a statement it
has run five times).

The statements are not copied here: they are built by the same functions the store runs, and the
last test checks that the store sends exactly these texts.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.dialects import postgresql

from notifier.housekeeping import expired_rows_statement
from notifier.services import sweep_states
from notifier.store.sql import DUE_QUESTIONS, Store, claim_due_statement, make_engine, state_checks_statement
from tests.conftest import START

NOW = START
DUE = {"due": 7, "lease": 3, "states": 5, "processed_events": 4, "outbox": 4, "attempts": 4}
MANY = 40_000  # rows that are not due, per kind of filler


def statements(now=NOW) -> dict[str, tuple[Any, str, str]]:
    """name -> (statement, table read, index expected)."""
    found: dict[str, tuple[Any, str, str]] = {
        question: (claim_due_statement(question, now=now, lease_s=120, limit=1000, dialect="postgresql"),
                   "messages", {"due": "ix_messages_due", "lease": "ix_messages_lease"}[question])
        for question in DUE_QUESTIONS}
    found["states"] = (state_checks_statement(now=now, limit=1000, dialect="postgresql"), "bookings",
                       "ix_bookings_next_check")
    long_ago = now - timedelta(days=30)
    for what, index in (("processed_events", "ix_processed_events_processed_at"),
                        ("outbox", "ix_outbox_published"), ("attempts", "ix_send_attempts_started_at")):
        table = "send_attempts" if what == "attempts" else what
        found[what] = (expired_rows_statement(what, before=long_ago, limit=5000, dialect="postgresql"), table, index)
    return found


@pytest.fixture(scope="module")
def filled(pg_admin: str) -> Iterator[Engine]:
    """A migrated database with MANY rows that are not due and DUE rows that are, analysed."""
    import psycopg

    name = f"notifier_plans_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(f"{pg_admin.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+psycopg://')}/{name}")
    Store(engine).migrate()
    p = {"now": NOW, "many": MANY, **{f"n_{k}": v for k, v in DUE.items()}}
    with engine.begin() as conn:
        sql = conn.exec_driver_sql
        sql("INSERT INTO tenants VALUES ('t', 'T', 'Europe/Berlin', 'DE', 'de', '[]', '{}', '{}', 0, %(now)s)", p)
        sql("INSERT INTO resources VALUES ('t', 'r', 'R', 'specialist', NULL, '{}', 0)", p)
        sql("INSERT INTO customers VALUES ('t', 'c', 'C', NULL, NULL, NULL, 'de', '[]', true, false, 0, %(now)s)", p)
        # bookings: most checked later or never again, a few due for the state sweep
        sql("""INSERT INTO bookings (tenant_id, id, customer_id, resource_id, starts_at, ends_at, created_at,
                                     scheduled_at, source, status, revision, next_check_at)
               SELECT 't', 'b' || g, 'c', 'r', %(now)s, %(now)s, %(now)s, %(now)s, 'api', 'active', 1,
                      CASE WHEN g <= %(n_states)s THEN %(now)s - g * interval '1 minute'
                           WHEN mod(g, 3) = 0 THEN NULL
                           ELSE %(now)s + g * interval '1 second' END
               FROM generate_series(1, %(many)s) g""", p)
        # messages: planned for later, sent long ago, claimed under a live lease; and a few due
        sql("""INSERT INTO messages (tenant_id, booking_id, key, kind, channel, recipient, state, due_at,
                                     lease_until, attempts, created_at, updated_at)
               SELECT 't', 'b' || (1 + mod(g, %(many)s)), 'k' || g, 'info', 'email', 'customer', s.state,
                      CASE s.state WHEN 'planned' THEN %(now)s + g * interval '1 second'
                                   ELSE %(now)s - g * interval '1 second' END,
                      CASE WHEN s.state IN ('queued', 'sending') THEN %(now)s + g * interval '1 second' END,
                      1, %(now)s, %(now)s
               FROM generate_series(1, 2 * %(many)s) g,
                    LATERAL (SELECT (ARRAY['planned', 'sent', 'sent', 'delivered', 'withdrawn', 'failed',
                                           'queued', 'sending'])[1 + mod(g, 8)] AS state) s""", p)
        sql("""INSERT INTO messages (tenant_id, booking_id, key, kind, channel, recipient, state, due_at,
                                     lease_until, attempts, created_at, updated_at)
               SELECT 't', 'b1', 'due' || g, 'info', 'email', 'customer', 'planned',
                      %(now)s - g * interval '1 minute', NULL, 0, %(now)s, %(now)s
               FROM generate_series(1, %(n_due)s) g
               UNION ALL
               SELECT 't', 'b1', 'lapsed' || g, 'info', 'email', 'customer', 'sending',
                      %(now)s - interval '1 hour', %(now)s - g * interval '1 minute', 1, %(now)s, %(now)s
               FROM generate_series(1, %(n_lease)s) g""", p)
        # housekeeping: recent rows everywhere, a few past retention
        sql("""INSERT INTO processed_events
               SELECT 'e' || g, 't', 'booking.created', 'booking:b' || g, 1, 'applied',
                      CASE WHEN g <= %(n_processed_events)s THEN %(now)s - interval '90 days'
                           ELSE %(now)s - g * interval '1 second' END
               FROM generate_series(1, %(many)s) g""", p)
        sql("""INSERT INTO outbox (tenant_id, type, payload, created_at, published_at)
               SELECT 't', 'counters.changed', '{}', %(now)s,
                      CASE WHEN g <= %(n_outbox)s THEN %(now)s - interval '90 days'
                           WHEN mod(g, 2) = 0 THEN NULL
                           ELSE %(now)s - g * interval '1 second' END
               FROM generate_series(1, %(many)s) g""", p)
        sql("""INSERT INTO send_attempts (message_id, started_at, duration_ms, outcome)
               SELECT 1 + mod(g, %(many)s),
                      CASE WHEN g <= %(n_attempts)s THEN %(now)s - interval '200 days'
                           ELSE %(now)s - g * interval '1 second' END, 5, 'sent'
               FROM generate_series(1, %(many)s) g""", p)
    with engine.connect() as conn:
        conn.exec_driver_sql("COMMIT")
        conn.exec_driver_sql("ANALYZE")
    yield engine
    engine.dispose()
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def scans(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan that reads a table or an index."""
    if plan["Node Type"].endswith("Scan") and ("Relation Name" in plan or "Index Name" in plan):
        yield plan
    for child in plan.get("Plans", []):
        yield from scans(child)


def brief(nodes: list[dict[str, Any]]) -> list[tuple]:
    return [(n["Node Type"], n.get("Relation Name"), n.get("Index Name"), n.get("Actual Rows")) for n in nodes]


def explain(engine: Engine, stmt: Any, *, generic: bool = False, analyze: bool = False) -> dict[str, Any]:
    """The plan PostgreSQL makes for the statement as the store would send it. `generic`: the plan
    it may cache for a prepared statement, made without parameter values. `analyze`: run it, in a
    transaction that is rolled back, and report the rows each node touched."""
    options = "ANALYZE, FORMAT JSON" if analyze else "FORMAT JSON"
    with engine.connect() as conn:
        with conn.begin() as tx:
            if not generic:
                compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
                [[result]] = conn.exec_driver_sql(f"EXPLAIN ({options}) {compiled.string}", compiled.params).all()
            else:
                from psycopg import sql

                numbered = postgresql.psycopg.dialect(paramstyle="numeric_dollar")
                compiled = stmt.compile(dialect=numbered, compile_kwargs={"render_postcompile": True})
                raw = conn.connection.driver_connection
                args = ", ".join(sql.Literal(compiled.params[n]).as_string(raw) for n in compiled.positiontup)
                conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
                conn.exec_driver_sql(f"PREPARE sweep_question AS {compiled.string}")
                [[result]] = conn.exec_driver_sql(f"EXPLAIN ({options}) EXECUTE sweep_question({args})").all()
                conn.exec_driver_sql("DEALLOCATE sweep_question")
            tx.rollback()
    return result[0]["Plan"]


@pytest.mark.parametrize("name", list(DUE))
@pytest.mark.parametrize("generic", [False, True], ids=["custom-plan", "generic-plan"])
def test_P2_each_sweep_question_reads_its_index_not_the_table(filled, name, generic):
    stmt, table, index = statements()[name]
    nodes = list(scans(explain(filled, stmt, generic=generic)))
    assert [n for n in nodes if n["Node Type"] == "Seq Scan"] == []
    assert index in {n.get("Index Name") for n in nodes}, brief(nodes)
    assert {n["Relation Name"] for n in nodes if "Relation Name" in n} == {table}


@pytest.mark.parametrize("name", list(DUE))
def test_P2_a_sweep_touches_about_as_many_rows_as_are_due(filled, name):
    """Run for real (rolled back): the rows the scans read grow with what is due (a few), not with
    the MANY rows around them."""
    stmt, table, index = statements()[name]
    nodes = list(scans(explain(filled, stmt, analyze=True)))
    read = [n for n in nodes if "Relation Name" in n]  # table rows fetched, kept or thrown away
    touched = sum((n["Actual Rows"] + n.get("Rows Removed by Filter", 0) + n.get("Rows Removed by Index Recheck", 0))
                  * n["Actual Loops"] for n in read)
    assert 0 < touched <= 2 * DUE[name], brief(nodes)  # found by the question, fetched again to change
    [question] = [n for n in nodes if n.get("Index Name") == index]
    assert question["Actual Rows"] == DUE[name]


def test_P2_the_store_sends_exactly_these_statements(filled):
    """The texts compiled above are the ones the due sweep and the state sweep execute."""
    sent: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        sent.append(statement)

    expected = {name: stmt.compile(dialect=filled.dialect, compile_kwargs={"render_postcompile": True}).string
                for name, (stmt, _, _) in statements().items() if name in ("due", "lease", "states")}
    event.listen(filled, "before_cursor_execute", record)
    try:
        store = Store(filled)
        claimed = store.claim_due(NOW, lease_s=120, limit=1000)
        sweep_states(store, now=NOW, limit=1000)
    finally:
        event.remove(filled, "before_cursor_execute", record)
    assert len(claimed) == DUE["due"] + DUE["lease"]
    for name, text in expected.items():
        assert text in sent, name
