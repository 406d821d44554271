"""The ingester on real brokers: raw JSON on RabbitMQ and on a Redis list, acked only after commit."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import redis
from kombu import Connection, Exchange, Queue
from sqlalchemy import func, select

from notifier import ingest
from notifier.store import schema as t
from tests.conftest import ROOT, START, created, event, make_context, make_settings, settings_env


def count(ctx, table):
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_P1_raw_json_on_rabbitmq_is_applied_and_bad_bodies_are_dead_lettered(tmp_path, pg_url, amqp_url, clock):
    name = f"nt-{uuid.uuid4().hex[:8]}"
    settings = make_settings(tmp_path, database_url=pg_url, events_url=amqp_url, events_queue=name,
                             events_exchange=name)
    ctx = make_context(settings)
    exchange = Exchange(name, type="topic", durable=True)
    queue = Queue(name, exchange=exchange, routing_key="#", durable=True)
    with Connection(amqp_url) as conn:
        producer = conn.Producer()
        bodies = [json.dumps(created("b1")), b"\xff not json", json.dumps(created("b2")),
                  json.dumps(event("booking.cancelled", {"booking_id": "b1", "by": "customer"}, revision=2))]
        for body in bodies:
            # a plain AMQP message as any language's client sends it: bytes, a content type, no Celery envelope
            producer.publish(body if isinstance(body, bytes) else body.encode(), exchange=exchange,
                             routing_key="booking.created", content_type="application/json", declare=[queue])
    try:
        done = subprocess.run([sys.executable, "-m", "notifier.cli", "ingest", "--idle-exit", "1.5"],
                              env=settings_env(settings), cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert (summary["applied"], summary["dead"]) == (3, 1)
        assert count(ctx, t.bookings) == 2 and count(ctx, t.dead_letters) == 1
        with Connection(amqp_url) as conn:  # everything was acked: the queue is empty
            _, waiting, _ = queue(conn.default_channel).queue_declare(passive=True)
        assert waiting == 0
    finally:
        with Connection(amqp_url) as conn:
            queue(conn.default_channel).delete()
            exchange(conn.default_channel).delete()
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
