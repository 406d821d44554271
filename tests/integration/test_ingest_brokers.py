"""The ingester on real brokers: raw JSON on RabbitMQ and on a Redis list, acked only after commit."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
import redis
from kombu import Connection, Exchange, Queue
from sqlalchemy import func, select

from notifier import ingest
from notifier.store import schema as t
from tests.conftest import ROOT, START, created, customer, event, make_context, make_settings, settings_env


def wait_until(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture
def amqp_events(amqp_url):
    """A fresh events queue and exchange on RabbitMQ: (name, publish(*bodies), ready()), removed afterwards."""
    name = f"nt-{uuid.uuid4().hex[:8]}"
    exchange = Exchange(name, type="topic", durable=True)
    queue = Queue(name, exchange=exchange, routing_key="#", durable=True)

    def publish(*bodies: bytes | str) -> None:
        with Connection(amqp_url) as conn:
            producer = conn.Producer()
            for body in bodies:
                # a plain AMQP message as any language's client sends it: bytes, a content type, no Celery envelope
                producer.publish(body if isinstance(body, bytes) else body.encode(), exchange=exchange,
                                 routing_key="booking.created", content_type="application/json", declare=[queue])

    def ready() -> int:
        with Connection(amqp_url) as conn:
            _, waiting, _ = queue(conn.default_channel).queue_declare(passive=True)
        return waiting

    yield name, publish, ready
    with Connection(amqp_url) as conn:
        queue(conn.default_channel).delete()
        exchange(conn.default_channel).delete()


def bookings(ctx) -> set[str]:
    with ctx.store.engine.connect() as conn:
        return set(conn.execute(select(t.bookings.c.id)).scalars())


def consume_while_another_batch_holds_b1(ctx, source, while_held=lambda: None):
    """Run the ingester on `source` (which holds created b1 and b2) while another ingester's open
    batch holds booking b1: b2 must be applied without waiting; then that batch ends and b1 follows."""
    import threading

    from notifier.store.batch import BatchSession

    other = ctx.store.engine.connect()
    other_batch = other.begin()
    BatchSession(other).lock(["b:salon-berlin:b1"])
    stop = threading.Event()
    total: list = []
    consumer = threading.Thread(target=lambda: total.append(ingest.run(ctx, source, stop=stop.is_set)))
    consumer.start()
    try:
        wait_until(lambda: bookings(ctx) == {"b2"}, timeout_s=20)  # b2 did not wait for b1's holder
        while_held()
        other_batch.commit()  # the other batch ends
        wait_until(lambda: bookings(ctx) == {"b1", "b2"}, timeout_s=20)
    finally:
        stop.set()
        consumer.join(timeout=30)
        other.close()
    return total[0]


def count(ctx, table):
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_P1_raw_json_on_rabbitmq_is_applied_and_bad_bodies_are_dead_lettered(tmp_path, pg_url, amqp_url, clock,
                                                                          amqp_events):
    name, publish, ready = amqp_events
    settings = make_settings(tmp_path, database_url=pg_url, events_url=amqp_url, events_queue=name,
                             events_exchange=name)
    ctx = make_context(settings)
    publish(json.dumps(created("b1")), b"\xff not json", json.dumps(created("b2")),
            json.dumps(event("booking.cancelled", {"booking_id": "b1", "by": "customer"}, revision=2)))
    try:
        done = subprocess.run([sys.executable, "-m", "notifier.cli", "ingest", "--idle-exit", "1.5"],
                              env=settings_env(settings), cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert (summary["applied"], summary["dead"]) == (3, 1)
        assert count(ctx, t.bookings) == 2 and count(ctx, t.dead_letters) == 1
        assert ready() == 0  # everything was acked: the queue is empty
    finally:
        ctx.close()


def test_N1_events_held_by_a_dead_consumer_are_recovered_and_applied_once(tmp_path, pg_url, redis_url,
                                                                         key_prefix, clock):
    settings = make_settings(tmp_path, database_url=pg_url, events_url=redis_url,
                             events_queue=f"{key_prefix}.events")
    ctx = make_context(settings)
    client = redis.Redis.from_url(redis_url)
    bodies = [json.dumps(created(f"b{i}")) for i in range(10)]
    client.rpush(f"{key_prefix}.events", *bodies)

    # consumer "a" takes a batch, applies it, and dies before deleting its processing list
    crashed = ingest.RedisListSource(redis_url, f"{key_prefix}.events", "a")
    batch = crashed.fetch(max_n=4, wait_s=0.01, block_s=1)
    from notifier.services import apply_events
    apply_events(ctx.store, batch.bodies, now=START, source="test")  # committed, never acked
    client.delete(f"{key_prefix}.events:alive:a")  # its heartbeat expires

    survivor = ingest.RedisListSource(redis_url, f"{key_prefix}.events", "b")
    total = ingest.run(ctx, survivor, idle_exit_s=0.5)
    survivor.close()
    assert count(ctx, t.bookings) == 10
    assert total.duplicates == 4 and total.applied == 6  # the four re-delivered events were not applied twice
    assert client.llen(f"{key_prefix}.events") == 0
    assert not list(client.scan_iter(match=f"{key_prefix}.events:processing:*"))
    ctx.close()


def test_N1_N2_an_event_whose_booking_another_batch_holds_opens_the_next_batch_instead_of_waiting(
        tmp_path, pg_url, redis_url, key_prefix, clock):
    """P1: two ingesters do not queue behind each other's transactions. The event of a booking
    another batch holds is left in this consumer's processing list, the rest is applied at once,
    and the left event is applied, once, as soon as the other batch commits."""
    settings = make_settings(tmp_path, database_url=pg_url, events_url=redis_url,
                             events_queue=f"{key_prefix}.events")
    ctx = make_context(settings)
    client = redis.Redis.from_url(redis_url)
    first = json.dumps(created("b1"))
    client.rpush(f"{key_prefix}.events", first, json.dumps(created("b2")))
    source = ingest.RedisListSource(redis_url, f"{key_prefix}.events", "a")

    def kept_not_acked():
        assert client.lrange(f"{key_prefix}.events:processing:a", 0, -1) == [first.encode()]

    total = consume_while_another_batch_holds_b1(ctx, source, kept_not_acked)
    assert total.applied == 2 and total.duplicates == 0
    assert client.llen(f"{key_prefix}.events") == 0 and client.llen(f"{key_prefix}.events:processing:a") == 0
    source.close()
    ctx.close()


def test_N1_N2_on_rabbitmq_an_event_whose_booking_another_batch_holds_stays_unacknowledged_until_applied(
        tmp_path, pg_url, amqp_url, clock, amqp_events):
    """The same on AMQP: the left event is not acknowledged (the broker would redeliver it if this
    consumer died) and opens the next batch; the queue is empty once both are applied."""
    name, publish, ready = amqp_events
    settings = make_settings(tmp_path, database_url=pg_url, events_url=amqp_url, events_queue=name,
                             events_exchange=name)
    ctx = make_context(settings)
    publish(json.dumps(created("b1")), json.dumps(created("b2")))
    source = ingest.open_source(settings)
    try:
        total = consume_while_another_batch_holds_b1(ctx, source)
    finally:
        source.close()
    try:
        assert total.applied == 2 and total.duplicates == 0
        assert ready() == 0  # both acknowledged: nothing ready, nothing to redeliver
    finally:
        ctx.close()


def test_P1_locks_taken_without_waiting_end_with_the_transaction_so_a_transaction_pooler_is_safe(
        tmp_path, pg_url, clock):
    """A batch that does not wait defers the event whose customer another batch holds, gives back
    at once what only that event took (two ingesters cannot defer each other for ever), keeps the
    rest, and holds nothing once its transaction has ended: PgBouncer in transaction mode may hand
    the server connection to anyone after the commit."""
    from sqlalchemy import text

    from notifier.domain import events as ev
    from notifier.services import _preload
    from notifier.store.batch import BatchSession

    ctx = make_context(make_settings(tmp_path, database_url=pg_url))
    holder = ctx.store.engine.connect()
    holder_batch = holder.begin()
    BatchSession(holder).lock(["c:salon-berlin:c1"])  # the other ingester's batch
    deferred = ev.parse_event(json.dumps(created("b1")))  # needs b:b1 and c:c1
    applied = ev.parse_event(json.dumps(created("b2", cust=customer("c2"))))
    def free(key: str) -> bool:  # asked from a third connection; given back at once if taken
        with ctx.store.engine.connect() as other:
            got = other.execute(text("SELECT pg_try_advisory_lock(hashtextextended(:k, 0))"), {"k": key}).scalar()
            if got:
                other.execute(text("SELECT pg_advisory_unlock(hashtextextended(:k, 0))"), {"k": key})
            return got

    try:
        with ctx.store.engine.connect() as conn:
            with conn.begin():
                assert _preload(BatchSession(conn), [deferred, applied], wait=False) == {deferred.event_id}
                assert free("b:salon-berlin:b1")  # what only the deferred event took is back at once
                assert not free("b:salon-berlin:b2") and not free("c:salon-berlin:c2")  # held for the rest
            held = conn.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                     "AND pid = pg_backend_pid()")).scalar()
            conn.rollback()
        assert held == 0  # nothing outlives the transaction
    finally:
        holder_batch.rollback()
        holder.close()
        ctx.close()


def test_N1_a_connection_lost_while_an_ingester_takes_its_locks_is_an_outage_to_retry_not_a_crash(
        tmp_path, pg_url, clock, monkeypatch):
    """The database connection dies in the middle of a batch's lock step: the batch fails with
    the database's error (the ingester backs off and retries it) instead of a cleanup error
    that stopped the ingester; the retry applies it."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from notifier.services import apply_events
    from notifier.store.batch import BatchSession

    ctx = make_context(make_settings(tmp_path, database_url=pg_url))
    settle = BatchSession.settle_locks

    def connection_lost(self, needed):
        with ctx.store.engine.connect() as other:  # the server ends this batch's session
            other.execute(text("SELECT pg_terminate_backend(:pid)"),
                          {"pid": self.conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()})
        return settle(self, needed)

    body = json.dumps(created("b1"))
    try:
        monkeypatch.setattr(BatchSession, "settle_locks", connection_lost)
        with pytest.raises(DBAPIError):
            apply_events(ctx.store, [body], now=START, source="test", wait_for_locks=False)
        monkeypatch.setattr(BatchSession, "settle_locks", settle)
        assert apply_events(ctx.store, [body], now=START, source="test", wait_for_locks=False).applied == 1
    finally:
        ctx.close()
