"""python -m bench limits: the ceilings on this machine, measured in the same run, and how close
our ingest and dispatch rates come to them.

- Redis: single-item RPUSH, then LPOP, of event-sized payloads (~600 bytes), pipelined (1,000
  commands a round trip) from one Python client (redis-py): the most a Python consumer of a
  Redis list can move.
- PostgreSQL: COPY into the real `messages` table (its indexes and unique key included),
  10,000 rows a transaction: the most rows a second a writer of planned messages can get in.
- Celery: no-op tasks a second through a plain Celery worker on Redis with 2 prefork processes
  (published beforehand, timed from the first task taken until the queue is empty): the most
  tasks any design built on one Celery task per event or message can run here.

Our rates are not re-run: they are read from the last `bench ingest` and `bench dispatch`
(docs/bench/*.json, dates shown; `make bench` runs them just before this one).

The plain Celery app below (`celery -A bench.limits worker`) is also `bench memory`'s ETA
alternative; it is configured from BENCH_BROKER_URL and BENCH_KEY_PREFIX.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import timedelta

from celery import Celery

from bench.common import (
    REDIS_URL,
    RESULTS,
    ROOT,
    fill_future_messages,
    prepared_store,
    record,
    redis_prefix,
    scratch_database,
    stop_processes,
    wait_until,
)

PLAIN_QUEUE = "plain"
app = Celery("bench-plain")
app.conf.update(
    broker_url=os.environ.get("BENCH_BROKER_URL", REDIS_URL),
    broker_transport_options={"global_keyprefix": os.environ.get("BENCH_KEY_PREFIX", "bench")},
    task_ignore_result=True, task_serializer="json", accept_content=["json"], task_default_queue=PLAIN_QUEUE,
    worker_hijack_root_logger=False, broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")
def noop(message_id: int) -> None:
    """Nothing: the cost of a task itself."""


def plain_worker(prefix: str, processes: int) -> subprocess.Popen:
    """`celery -A bench.limits worker`, prefork, on this run's key prefix."""
    env = dict(os.environ, BENCH_BROKER_URL=REDIS_URL, BENCH_KEY_PREFIX=prefix, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "bench.limits", "worker", "-c", str(processes),
                             "-Q", PLAIN_QUEUE, "--without-gossip", "--without-mingle", "--without-heartbeat",
                             "--loglevel", "WARNING"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def publisher(prefix: str) -> Celery:
    """An app that publishes to this run's key prefix. (A Celery app keeps the connection pool of
    its first use: changing `broker_transport_options` later does not move it.)"""
    out = Celery("bench-plain-publisher")
    out.conf.update(app.conf.table(censored=False), broker_transport_options={"global_keyprefix": prefix})
    return out


# --- ceilings ----------------------------------------------------------------------------------

def redis_rates(n: int, prefix: str) -> tuple[float, float]:
    import redis

    from bench.workload import booking_events

    client = redis.Redis.from_url(REDIS_URL)
    key = f"{prefix}.limits"
    body = booking_events(1)[0].encode()
    pipe = client.pipeline(transaction=False)
    started = time.perf_counter()
    for i in range(n):
        pipe.rpush(key, body)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    push_s = time.perf_counter() - started
    started = time.perf_counter()
    popped = 0
    for i in range(n):
        pipe.lpop(key)
        if i % 1000 == 999:
            popped += sum(1 for x in pipe.execute() if x)
    popped += sum(1 for x in pipe.execute() if x)
    pop_s = time.perf_counter() - started
    client.close()
    if popped != n:
        raise SystemExit(f"popped {popped} of {n}")
    return n / push_s, n / pop_s


def pg_copy_rate(url: str, n: int, per_transaction: int = 10_000) -> float:
    """Rows a second COPYed into `messages` (its indexes included)."""
    from datetime import UTC, datetime

    from bench.workload import START

    store = prepared_store(url, [])
    bookings = n // 5
    fill_future_messages(store, bookings, after=START, per_booking=1, tag="x")  # the bookings they belong to
    raw = store.engine.raw_connection()
    now = datetime.now(UTC)
    columns = ("tenant_id", "booking_id", "key", "kind", "channel", "recipient", "state", "due_at",
               "attempts", "created_at", "updated_at")
    try:
        cur = raw.cursor()
        started = time.perf_counter()
        for first in range(0, n, per_transaction):
            with cur.copy(f"COPY messages ({', '.join(columns)}) FROM STDIN") as copy:
                for i in range(first, min(n, first + per_transaction)):
                    booking = f"xb{i % bookings + 1}"
                    key = f"reminder/customer/{i}"
                    copy.write_row(("salon-berlin", booking, key, "reminder", "sms",
                                    "customer", "planned", START + timedelta(days=1, seconds=i), 0, now, now))
            raw.commit()
        seconds = time.perf_counter() - started
    finally:
        raw.close()
        store.engine.dispose()
    return n / seconds


def _queue_len(client, prefix: str) -> int:
    return client.llen(f"{prefix}{PLAIN_QUEUE}")


def celery_noop_rate(n: int, processes: int) -> tuple[float, float]:
    """(tasks run a second, tasks published a second)."""
    import redis

    with redis_prefix() as prefix:
        sender = publisher(prefix)
        client = redis.Redis.from_url(REDIS_URL)
        started = time.perf_counter()
        with sender.producer_or_acquire() as producer:
            for i in range(n):
                noop.apply_async(args=(i,), producer=producer)
        publish_rate = n / (time.perf_counter() - started)
        worker = plain_worker(prefix, processes)
        try:
            wait_until(lambda: _queue_len(client, prefix) < n, timeout_s=120, poll_s=0.005)
            first = time.perf_counter()

            def empty() -> bool:
                return _queue_len(client, prefix) == 0 and client.hlen(f"{prefix}unacked") == 0

            seconds = wait_until(empty, timeout_s=600, poll_s=0.02)
        finally:
            stop_processes([worker])
            client.close()
        del first
    return n / seconds, publish_rate


def last(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench limits")
    parser.add_argument("--redis-ops", type=int, default=200_000)
    parser.add_argument("--pg-rows", type=int, default=200_000)
    parser.add_argument("--celery-tasks", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2, help="Celery worker processes")
    args = parser.parse_args(argv)

    with redis_prefix() as prefix:
        push, pop = redis_rates(args.redis_ops, prefix)
    print(f"redis: push {push:.0f}/s, pop {pop:.0f}/s", file=sys.stderr)
    with scratch_database() as url:
        copy = pg_copy_rate(url, args.pg_rows)
    print(f"postgres COPY: {copy:.0f} rows/s", file=sys.stderr)
    tasks, published = celery_noop_rate(args.celery_tasks, args.processes)
    print(f"celery no-op: {tasks:.0f} tasks/s ({published:.0f}/s published)", file=sys.stderr)

    figures: dict[str, object] = {
        "redis_push_per_s": round(push), "redis_pop_per_s": round(pop), "pg_copy_rows_per_s": round(copy),
        "celery_noop_tasks_per_s": round(tasks), "celery_publish_per_s": round(published),
        "celery_processes": args.processes,
    }
    lines = []
    ingest, dispatch = last("ingest"), last("dispatch")
    if ingest:
        rate = ingest["figures"]["events_per_s"]
        figures.update({"ingest_events_per_s": rate, "ingest_of_redis_pop": round(rate / pop, 3),
                        "ingest_of_celery_noop": round(rate / tasks, 2), "ingest_of_pg_copy": round(rate / copy, 3)})
        lines.append(f"ingest {rate}/s from `{ingest['command']}` of {ingest['date']}")
    if dispatch:
        f = dispatch["figures"]
        rate = f["msgs_per_s"]
        in_flight = f["processes"] * f["concurrency_per_process"] / (f["provider_latency_ms"] / 1000)
        figures.update({"dispatch_msgs_per_s": rate, "dispatch_of_celery_noop": round(rate / tasks, 2),
                        "dispatch_of_pg_copy": round(rate / copy, 3), "provider_in_flight_ceiling_per_s":
                        round(in_flight), "dispatch_of_provider_ceiling": round(rate / in_flight, 3)})
        lines.append(f"dispatch {rate}/s from `{dispatch['command']}` of {dispatch['date']}")
    summary = (f"Redis pop {pop:,.0f}/s, PostgreSQL COPY {copy:,.0f} rows/s, Celery no-op {tasks:,.0f} tasks/s"
               + (f"; ingest at {figures['ingest_of_redis_pop']:.0%} of Redis pop" if ingest else "")
               + (f", dispatch at {figures['dispatch_of_provider_ceiling']:.0%} of the provider ceiling"
                  if dispatch else ""))
    record("limits", ("python -m bench limits " + " ".join(argv)).strip(), figures, summary=summary,
           notes="Ceilings measured in this run: single-item RPUSH / LPOP of ~600-byte event bodies, pipelined "
                 "1,000 to a round trip, from one redis-py client; COPY into the real `messages` table (indexes, "
                 "unique key) 10,000 rows a transaction from psycopg; no-op tasks through a plain "
                 f"Celery worker on Redis with {args.processes} prefork processes, published beforehand, timed from "
                 "the first taken until the queue is empty. `provider_in_flight_ceiling_per_s` is what "
                 "`processes` x `concurrency_per_process` sends in flight allow at 50 ms each. Our rates are not "
                 "re-run here; they are read from the last runs: " + "; ".join(lines or ["none recorded"]) + ". "
                 "A fraction near 1 means the ceiling binds; ingest writes several rows per event (booking, "
                 "customer, messages, timeline, event id), so `ingest_of_pg_copy` understates the write load.")
    return 0
