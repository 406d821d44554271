"""Issue 3, acceptance 3 (N1, N2): a database outage mid-stream, and several ingesters at once,
lose nothing and apply nothing twice."""

from __future__ import annotations

import json
from datetime import timedelta
from urllib.parse import urlsplit

import redis
from sqlalchemy import func, select

from notifier.devtools import TcpProxy, wait_for
from notifier.store import schema as t
from tests.conftest import START, created, customer, event, make_context, make_settings, settings_env


def stream(n_bookings: int) -> list[str]:
    """Bookings created, half of them moved and a quarter cancelled, in publication order."""
    out = []
    for i in range(n_bookings):
        out.append(json.dumps(created(f"b{i}", cust=customer(f"c{i % 50}"),
                                      starts_at=START + timedelta(days=1 + i % 9, hours=6))))
    for i in range(0, n_bookings, 2):
        starts = START + timedelta(days=2 + i % 7, hours=8)
        out.append(json.dumps(event("booking.rescheduled", {"booking_id": f"b{i}", "starts_at": starts.isoformat(),
                                                            "ends_at": (starts + timedelta(hours=1)).isoformat()},
                                    revision=2)))
    for i in range(0, n_bookings, 4):
        out.append(json.dumps(event("booking.cancelled", {"booking_id": f"b{i}", "by": "staff"}, revision=3)))
    return out


def count(ctx, table, *where) -> int:
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def assert_applied_exactly_once(ctx, n_bookings: int, n_events: int) -> None:
    assert count(ctx, t.processed_events) == n_events
    assert count(ctx, t.processed_events, t.processed_events.c.outcome != "applied") == 0
    assert count(ctx, t.bookings) == n_bookings
    assert count(ctx, t.bookings, t.bookings.c.status == "cancelled") == len(range(0, n_bookings, 4))
    tl = t.timeline.c
    assert count(ctx, t.timeline, tl.kind == "booking.created") == n_bookings  # never applied twice
    assert count(ctx, t.timeline, tl.kind == "booking.rescheduled") == len(range(0, n_bookings, 2))
    assert count(ctx, t.dead_letters) == 0 and count(ctx, t.held_events) == 0


def test_N1_database_connection_cut_mid_stream_loses_nothing(tmp_path, pg_url, redis_url, key_prefix, clock,
                                                            procs):
    target = urlsplit(pg_url.replace("postgresql+psycopg", "postgresql"))
    proxy = TcpProxy(target.hostname, target.port or 5432)
    proxied = pg_url.replace(f"{target.hostname}:{target.port or 5432}", f"127.0.0.1:{proxy.port}")
    settings = make_settings(tmp_path, database_url=proxied, events_url=redis_url,
                             events_queue=f"{key_prefix}.events", ingest_batch_max=50)
    ctx = make_context(make_settings(tmp_path, database_url=pg_url))
    group = procs(settings_env(settings))
    group.start("ingester", "ingest")
    events = stream(600)
    client = redis.Redis.from_url(redis_url)
    client.rpush(f"{key_prefix}.events", *events[:300])
    try:
        wait_for(lambda: count(ctx, t.processed_events) >= 200, "the first batches", group, timeout_s=60)
        proxy.cut()  # the database is gone for the ingester: open connections dropped, new ones refused
        # the rest arrives during the outage (a fast ingester could otherwise finish before the cut)
        client.rpush(f"{key_prefix}.events", *events[300:])
        log = tmp_path / "ingester.log"
        # the outage lasts until the ingester has failed, backed off and failed again
        wait_for(lambda: log.read_text().count("database unavailable") >= 2, "the ingester to meet the outage",
                 group, timeout_s=60)
        assert count(ctx, t.processed_events) < len(events)
        proxy.restore()
        wait_for(lambda: count(ctx, t.processed_events) == len(events), "every event after the outage", group,
                 timeout_s=120)
        assert_applied_exactly_once(ctx, 600, len(events))
        assert client.llen(f"{key_prefix}.events") == 0
    finally:
        proxy.close()
        ctx.close()


def test_N2_several_ingesters_at_once_apply_each_event_once(tmp_path, pg_url, redis_url, key_prefix, clock, procs):
    settings = make_settings(tmp_path, database_url=pg_url, events_url=redis_url,
                             events_queue=f"{key_prefix}.events", ingest_batch_max=40)
    ctx = make_context(settings)
    group = procs(settings_env(settings))
    for name in ("ingester-1", "ingester-2", "ingester-3"):
        group.start(name, "ingest")
    events = stream(800)
    client = redis.Redis.from_url(redis_url)
    client.rpush(f"{key_prefix}.events", *(events + events[:300]))  # and some published twice
    wait_for(lambda: count(ctx, t.processed_events) == len(events) and client.llen(f"{key_prefix}.events") == 0,
             "all events", group, timeout_s=120)
    wait_for(lambda: not list(client.scan_iter(match=f"{key_prefix}.events:processing:*")) or
             all(client.llen(k) == 0 for k in client.scan_iter(match=f"{key_prefix}.events:processing:*")),
             "the processing lists to drain", group, timeout_s=30)
    assert_applied_exactly_once(ctx, 800, len(events))
    ctx.close()
