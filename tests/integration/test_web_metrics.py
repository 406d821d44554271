"""Issue 7 (P5, P4, N1): `/metrics` and `/health` of the web app against PostgreSQL and Redis.

- A scrape reads what the store and the broker say: queue lag of due messages, due-to-sent
  lateness and sends by channel and status of what a worker sent, and the Celery queues' lengths
  on Redis under the deployment's key prefix.
- A scrape costs what is late or recent, not what is stored: with tables full of old and future
  rows, every statement it sends reads an index (no sequential scan) and touches about as many
  rows as it counts. Its values are written into the text (no parameters), so PostgreSQL plans it
  with them each time; there is no cached generic plan that could choose otherwise.
- `/health` says 503, and which one, when the database or the broker is cut off.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from types import SimpleNamespace
from urllib.parse import urlsplit, urlunsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event

from notifier.channels.fake import FakeChannel
from notifier.devtools import TcpProxy
from notifier.domain.model import Channel
from notifier.services import apply_events
from notifier.store.sql import Store, make_engine
from notifier.views import metric_statements
from notifier.web.app import create_app
from notifier.web.metrics import WINDOW_S, StoreCollector
from tests.conftest import METRICS_HEADERS, START, api_client, created, customer, make_context, make_settings
from tests.integration.test_sweep_plans import brief, explain, scans
from tests.unit.test_services import run_due
from tests.unit.test_web_api import metrics

NOW = START
MANY = 30_000  # old and future rows around the few a scrape is about
RECENT, DUE, IN_FLIGHT = 6, 4, 3


@pytest.fixture
def pg_ctx(tmp_path, pg_url, redis_url, key_prefix, clock):
    settings = make_settings(tmp_path, database_url=pg_url, broker_url=redis_url, broker_key_prefix=key_prefix)
    ctx = make_context(settings, channels={Channel.EMAIL: FakeChannel("email")})
    yield ctx
    ctx.close()


def test_P5_a_scrape_shows_lag_lateness_sends_and_the_celery_queues_on_redis(pg_ctx, redis_url, key_prefix):
    """What an operator's dashboard shows, read from PostgreSQL and from the broker's Redis."""
    from kombu import Connection, Exchange, Queue

    ctx = pg_ctx
    body = created("b1", starts_at=START + timedelta(days=2), cust=customer("c1"))
    apply_events(ctx.store, [json.dumps(body)], now=START, source="test")
    ctx.clock.set(START + timedelta(seconds=75))  # the new-booking info, due at START, waits
    client = api_client(ctx)
    waiting = metrics(client)
    assert waiting["notifier_queue_lag_seconds"][()] == 75.0
    assert waiting["notifier_due_unsent_messages"][(("state", "planned"),)] == 1

    assert run_due(ctx)["sent"] == 1
    # tasks waiting in the Celery queues, laid out as Celery's Redis transport lays them out, under
    # the deployment's key prefix (another deployment's keys on the same Redis are not counted)
    with Connection(redis_url, transport_options={"global_keyprefix": key_prefix}) as conn:
        producer = conn.Producer()
        for name, priority, n in (("email", None, 3), ("sms", 6, 2)):
            queue = Queue(name, Exchange(name), routing_key=name)
            for _ in range(n):
                producer.publish({"ids": [1]}, exchange=queue.exchange, routing_key=name, declare=[queue],
                                 priority=priority)
    with Connection(redis_url, transport_options={"global_keyprefix": f"other{uuid.uuid4().hex[:6]}"}) as conn:
        queue = Queue("email", Exchange("email"), routing_key="email")
        conn.Producer().publish({"ids": [2]}, exchange=queue.exchange, routing_key="email", declare=[queue])
        conn.default_channel.queue_delete("email")

    sent = metrics(client)
    assert sent["notifier_queue_lag_seconds"][()] == 0.0
    buckets = sent["notifier_send_lateness_seconds_bucket"]
    assert buckets[(("channel", "email"), ("le", "60.0"))] == 0 and buckets[(("channel", "email"), ("le", "120.0"))] == 1
    assert sent["notifier_send_lateness_seconds_gsum"][(("channel", "email"),)] == pytest.approx(75.0)
    assert sent["notifier_recent_sends"][(("channel", "email"), ("status", "sent"))] == 1
    queues = {dict(labels)["queue"]: v for labels, v in sent["notifier_celery_queue_length"].items()}
    assert queues == {"sweep": 0, "email": 3, "sms": 2, "whatsapp": 0, "staff": 0, "activity": 0}
    assert sent["notifier_metrics_source_up"] == {(("source", "store"),): 1.0, (("source", "broker"),): 1.0}


def test_P5_a_scrape_reports_a_lost_broker_instead_of_failing(pg_ctx):
    down = SimpleNamespace(settings=replace(pg_ctx.settings, broker_url="redis://127.0.0.1:1/0"),
                           store=pg_ctx.store, clock=pg_ctx.clock, links=pg_ctx.links)
    seen = metrics(TestClient(create_app(down)))
    assert seen["notifier_metrics_source_up"] == {(("source", "store"),): 1.0, (("source", "broker"),): 0.0}
    assert "notifier_celery_queue_length" not in seen and "notifier_queue_lag_seconds" in seen


# --- health ------------------------------------------------------------------------------------------

def proxied(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    netloc = (parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else "") + f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def test_health_names_the_database_or_the_broker_that_is_cut_off(pg_ctx, pg_url, redis_url):
    """503 with the culprit while PostgreSQL (then Redis) is unreachable, 200 again once it is back."""
    db, broker = urlsplit(pg_url), urlsplit(redis_url)
    db_proxy, broker_proxy = TcpProxy(db.hostname, db.port or 5432), TcpProxy(broker.hostname, broker.port or 6379)
    store = Store(make_engine(proxied(pg_url, db_proxy)))
    web = TestClient(create_app(SimpleNamespace(
        settings=replace(pg_ctx.settings, broker_url=proxied(redis_url, broker_proxy)), store=store,
        clock=pg_ctx.clock, links=pg_ctx.links)), headers=METRICS_HEADERS)
    try:
        assert web.get("/health").status_code == 200
        db_proxy.cut()
        answer = web.get("/health")
        assert answer.status_code == 503 and answer.json()["status"] == "unavailable"
        assert answer.json()["checks"]["database"]["status"] == "down"
        assert answer.json()["checks"]["broker"]["status"] == "ok"
        db_proxy.restore()
        broker_proxy.cut()
        answer = web.get("/health")
        assert answer.status_code == 503 and answer.json()["checks"]["broker"]["status"] == "down"
        assert answer.json()["checks"]["database"]["status"] == "ok"
        broker_proxy.restore()
        back = web.get("/health")
        assert back.status_code == 200 and {c["status"] for c in back.json()["checks"].values()} == {"ok"}
    finally:
        store.engine.dispose()
        db_proxy.close()
        broker_proxy.close()


# --- a scrape's cost -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def filled(pg_admin: str) -> Iterator[Engine]:
    """MANY messages sent long ago (with their attempts) and MANY planned for later, around RECENT
    sends in the window, DUE planned messages whose time has come and IN_FLIGHT claimed ones."""
    import psycopg

    name = f"notifier_scrape_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(f"{pg_admin.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+psycopg://')}/{name}")
    Store(engine).migrate()
    p = {"now": NOW, "many": MANY, "recent": RECENT, "due": DUE, "flying": IN_FLIGHT}
    with engine.begin() as conn:
        sql = conn.exec_driver_sql
        sql("INSERT INTO tenants VALUES ('t', 'T', 'Europe/Berlin', 'DE', 'de', '[]', '{}', '{}', 0, %(now)s)", p)
        sql("INSERT INTO resources VALUES ('t', 'r', 'R', 'specialist', NULL, '{}', 0)", p)
        sql("INSERT INTO customers VALUES ('t', 'c', 'C', NULL, NULL, NULL, 'de', '[]', true, false, 0, %(now)s)", p)
        sql("""INSERT INTO bookings (tenant_id, id, customer_id, resource_id, starts_at, ends_at, created_at,
                                     scheduled_at, source, status, revision)
               VALUES ('t', 'b', 'c', 'r', %(now)s, %(now)s, %(now)s, %(now)s, 'api', 'active', 1)""", p)
        # ids 1..MANY: sent and delivered long ago (the first RECENT of them within the window);
        # then MANY planned for later, DUE planned and due, IN_FLIGHT queued
        sql("""INSERT INTO messages (tenant_id, booking_id, key, kind, channel, recipient, state, due_at,
                                     sent_at, attempts, created_at, updated_at)
               SELECT 't', 'b', 'k' || g, 'info', CASE WHEN mod(g, 2) = 0 THEN 'email' ELSE 'sms' END,
                      'customer', 'delivered', s - interval '30 seconds', s, 1, s, s
               FROM generate_series(1, %(many)s) g,
                    LATERAL (SELECT CASE WHEN g <= %(recent)s THEN %(now)s - g * interval '1 minute'
                                         ELSE %(now)s - interval '2 days' - g * interval '1 minute' END AS s) t""", p)
        sql("""INSERT INTO send_attempts (message_id, started_at, duration_ms, outcome)
               SELECT id, sent_at, 40, 'sent' FROM messages ORDER BY id""")
        sql("""INSERT INTO messages (tenant_id, booking_id, key, kind, channel, recipient, state, due_at,
                                     lease_until, attempts, created_at, updated_at)
               SELECT 't', 'b', 'p' || g, 'reminder', 'email', 'customer',
                      CASE WHEN g <= %(due)s + %(flying)s AND g > %(due)s THEN 'queued' ELSE 'planned' END,
                      CASE WHEN g <= %(due)s + %(flying)s THEN %(now)s - g * interval '1 second'
                           ELSE %(now)s + g * interval '1 minute' END,
                      CASE WHEN g <= %(due)s + %(flying)s AND g > %(due)s THEN %(now)s + interval '2 minutes' END,
                      0, %(now)s, %(now)s
               FROM generate_series(1, %(many)s) g""", p)
    with psycopg.connect(engine.url.render_as_string(hide_password=False).replace("+psycopg", ""),
                         autocommit=True) as conn:
        conn.execute("ANALYZE")  # statistics as autovacuum keeps them (outside a transaction: they stay)
    yield engine
    engine.dispose()
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


INDEXES = {"planned": {"ix_messages_due"}, "in_flight": {"ix_messages_lease"},
           "lateness": {"ix_send_attempts_started_at", "pk_messages"},
           "recent_sends": {"ix_send_attempts_started_at", "pk_messages"}}
COUNTED = {"planned": DUE, "in_flight": IN_FLIGHT, "lateness": RECENT, "recent_sends": RECENT}


def statements() -> dict:
    return metric_statements(now=NOW, window_s=WINDOW_S, dialect="postgresql")


@pytest.mark.parametrize("name", list(INDEXES))
def test_P5_each_scrape_question_reads_an_index_not_the_table(filled, name):
    stmt = statements()[name]
    assert stmt.compile(dialect=filled.dialect, compile_kwargs={"render_postcompile": True}).params == {}
    nodes = list(scans(explain(filled, stmt)))
    assert [n for n in nodes if n["Node Type"] == "Seq Scan"] == [], brief(nodes)
    assert INDEXES[name] <= {n.get("Index Name") for n in nodes}, brief(nodes)


@pytest.mark.parametrize("name", list(INDEXES))
def test_P5_a_scrape_touches_about_as_many_rows_as_it_counts(filled, name):
    """Run for real: the rows read grow with what is late or recent, not with the MANY around them."""
    nodes = list(scans(explain(filled, statements()[name], analyze=True)))
    touched = sum((n["Actual Rows"] + n.get("Rows Removed by Filter", 0) + n.get("Rows Removed by Index Recheck", 0))
                  * n["Actual Loops"] for n in nodes)
    assert 0 < touched <= 3 * COUNTED[name], brief(nodes)


def test_P5_the_collector_sends_exactly_these_statements(filled):
    """The texts explained above are those a scrape executes, and they count what was filled in."""
    sent: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        sent.append(statement)

    expected = {name: stmt.compile(dialect=filled.dialect, compile_kwargs={"render_postcompile": True}).string
                for name, stmt in statements().items()}
    clock = SimpleNamespace(now=lambda: NOW)
    collector = StoreCollector(SimpleNamespace(store=Store(filled), clock=clock,
                                               settings=SimpleNamespace(broker_url="embedded")))
    event.listen(filled, "before_cursor_execute", record)
    try:
        families = {f.name: f for f in collector.collect()}
    finally:
        event.remove(filled, "before_cursor_execute", record)
    for name, text in expected.items():
        assert text in sent, name
    assert families["notifier_queue_lag_seconds"].samples[0].value == DUE + IN_FLIGHT  # the oldest: due NOW - 7 s
    due = {s.labels["state"]: s.value for s in families["notifier_due_unsent_messages"].samples}
    assert due == {"planned": DUE, "queued": IN_FLIGHT, "sending": 0}
    counts = {s.labels["channel"]: s.value for s in families["notifier_send_lateness_seconds"].samples
              if s.name.endswith("_gcount")}
    assert counts == {"email": RECENT // 2, "sms": RECENT - RECENT // 2}
    delivered = {s.labels["channel"]: s.value for s in families["notifier_recent_sends"].samples
                 if s.labels["status"] == "delivered" and s.value}
    assert delivered == counts
