"""python -m bench memory: does a worker's memory grow with what is planned ahead?

Ours: the database is the only place a future message lives; beat's sweep asks for what is due
now, so a worker should hold nothing of the rest. Measured on the pipeline as deployed (beat, a
sweep worker, an sms worker with 2 prefork processes; RSS of every worker process summed):
1. warm-up: 2,000 reminders due now are sent (rendering, provider pool, store all in use), the
   sweeps run on for `--settle-s`; RSS is sampled (median of 5, 1 s apart): `rss_mb_empty`;
2. 1,000,000 future messages (two months ahead, with their bookings) are written into the
   store while the processes run; 2,000 more reminders are sent the same way, the sweeps run
   on over the million rows for `--settle-s`; RSS again: `rss_mb_planned`.
Same processes both times, so anything the million rows or the run itself left behind counts.

Beside it, same run (side by side: memory is measured, not speed), the usual alternative:
one Celery ETA task per future message (`apply_async(eta=...)`) to a plain Celery worker on
Redis (2 prefork processes). A Redis worker takes ETA tasks off the queue at once and holds
them in memory until they are due (it raises its prefetch limit for each), so its memory
grows with what is planned. Same warm-up (2,000 immediate no-op tasks), then 100,000 ETA
tasks due tomorrow; RSS before and after the queue is empty.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from bench import burst
from bench.common import (
    REDIS_URL,
    add_bookings,
    check_alive,
    fill_future_messages,
    pipeline_env,
    prepared_store,
    provider_process,
    record,
    redis_prefix,
    scratch_database,
    start_pipeline,
    stop_processes,
    tree_rss_mb,
    wait_until,
)
from bench.workload import START


def sample_rss_mb(procs, samples: int = 5) -> float:
    """Median over `samples` (1 s apart) of the summed RSS of the processes and their children."""
    values = []
    for i in range(samples):
        if i:
            time.sleep(1.0)
        values.append(sum(tree_rss_mb(p.pid) for p in procs))
    return statistics.median(values)


def run_ours(future: int, warmup: int, settle_s: float) -> dict:
    from notifier.clock import FileClock

    with scratch_database() as url, redis_prefix() as prefix, tempfile.TemporaryDirectory() as tmp, \
            provider_process(latency_s=0.05) as providers:
        store = prepared_store(url, [], tune=burst.reminders_only)
        clock = FileClock(Path(tmp) / "clock")
        clock.set(burst.DUE)  # the reminders fall due as they are written; the future rows come later
        env = pipeline_env(url, prefix, clock.path, tmp, providers=providers, extra={
            "NOTIFIER_DISPATCH_CONCURRENCY": "32", "NOTIFIER_DISPATCH_BATCH": "200",
            "NOTIFIER_SWEEP_BATCH": "5000", "NOTIFIER_SWEEP_INTERVAL_S": "0.5"})
        procs = start_pipeline(env, processes=2)
        workers = procs[:2]  # the sms worker and the sweep worker (beat is not a worker)
        alive = check_alive(procs)
        try:
            time.sleep(6.0)
            add_bookings(store, "salon-berlin", burst.bookings(warmup), now=START)
            wait_until(lambda: burst.sent_count(store) >= warmup, timeout_s=300, poll_s=0.2, check=alive)
            time.sleep(settle_s)
            empty = sample_rss_mb(workers)
            print(f"memory: ours {empty:.0f} MB with nothing planned ahead", file=sys.stderr)
            fill_s = fill_future_messages(store, future, after=burst.DUE + timedelta(days=1))
            add_bookings(store, "salon-berlin", burst.bookings(warmup, start=warmup), now=START)
            wait_until(lambda: burst.sent_count(store) >= 2 * warmup, timeout_s=300, poll_s=0.2, check=alive)
            time.sleep(settle_s)
            planned = sample_rss_mb(workers)
            alive()
            with store.engine.connect() as conn:
                waiting = conn.execute(text("SELECT count(*) FROM messages WHERE state = 'planned'")).scalar_one()
            print(f"memory: ours {planned:.0f} MB with {waiting:,} planned ahead (written in {fill_s:.0f} s)",
                  file=sys.stderr)
        finally:
            stop_processes(procs)
            store.engine.dispose()
    return {"empty": empty, "planned": planned, "waiting": waiting}


def run_eta(tasks: int, warmup: int, settle_s: float) -> dict:
    import redis

    from bench.limits import PLAIN_QUEUE, noop, plain_worker, publisher

    with redis_prefix() as prefix:
        sender = publisher(prefix)
        client = redis.Redis.from_url(REDIS_URL)
        queue = f"{prefix}{PLAIN_QUEUE}"
        worker = plain_worker(prefix, processes=2)
        alive = check_alive([worker])
        try:
            with sender.producer_or_acquire() as producer:
                for i in range(warmup):
                    noop.apply_async(args=(i,), producer=producer)
            wait_until(lambda: client.llen(queue) == 0 and client.hlen(f"{prefix}unacked") == 0, timeout_s=300,
                       poll_s=0.2, check=alive)
            time.sleep(settle_s)
            empty = sample_rss_mb([worker])
            tomorrow = datetime.now(UTC) + timedelta(days=1)
            started = time.perf_counter()
            with sender.producer_or_acquire() as producer:
                for i in range(tasks):
                    noop.apply_async(args=(i,), eta=tomorrow + timedelta(seconds=i), producer=producer)
            wait_until(lambda: client.llen(queue) == 0, timeout_s=600, poll_s=0.2, check=alive)
            taken_s = time.perf_counter() - started
            time.sleep(settle_s)
            held = sample_rss_mb([worker])
            in_memory = client.hlen(f"{prefix}unacked")  # taken by the worker, waiting for their time
            print(f"memory: Celery ETA {empty:.0f} MB empty, {held:.0f} MB holding {in_memory:,} tasks",
                  file=sys.stderr)
        finally:
            stop_processes([worker])
            client.close()
    return {"empty": empty, "held": held, "unacked": in_memory, "taken_s": taken_s}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench memory")
    parser.add_argument("--future", type=int, default=1_000_000, help="messages planned ahead (ours)")
    parser.add_argument("--eta-tasks", type=int, default=100_000, help="ETA tasks (the alternative)")
    parser.add_argument("--warmup", type=int, default=2000, help="messages sent / tasks run before each sample")
    parser.add_argument("--settle-s", type=float, default=5.0, help="sweeps keep running this long before sampling")
    args = parser.parse_args(argv)

    # the two measure memory, not speed: they run side by side (the ETA worker takes its tasks
    # off Redis at a few hundred a second, which alone would take minutes)
    eta_result: dict = {}
    alternative = threading.Thread(target=lambda: eta_result.update(run_eta(args.eta_tasks, args.warmup,
                                                                             args.settle_s)), name="eta")
    alternative.start()
    try:
        ours = run_ours(args.future, args.warmup, args.settle_s)
    finally:
        alternative.join()
    if not eta_result:
        raise SystemExit("the Celery ETA alternative did not finish (see above)")
    eta = eta_result
    ratio = ours["planned"] / ours["empty"]
    eta_ratio = eta["held"] / eta["empty"]
    eta_kb = (eta["held"] - eta["empty"]) * 1024 / args.eta_tasks
    figures = {
        "future_messages": args.future, "planned_in_store": ours["waiting"],
        "rss_mb_empty": round(ours["empty"], 1), "rss_mb_planned": round(ours["planned"], 1), "ratio": round(ratio, 3),
        "eta_tasks": args.eta_tasks, "eta_tasks_held_by_worker": eta["unacked"],
        "eta_rss_mb_empty": round(eta["empty"], 1), "eta_rss_mb_held": round(eta["held"], 1),
        "eta_ratio": round(eta_ratio, 2), "eta_kb_per_task": round(eta_kb, 2),
        "eta_seconds_to_take_all": round(eta["taken_s"], 1), "goal_ratio": 1.1,
    }
    verdict = (f"goal met: ratio {ratio:.3f} <= 1.1" if ratio <= 1.1 else
               f"goal missed: ratio {ratio:.3f} against 1.1")
    projected_gb = eta_kb * args.future / 2**20
    record("memory", ("python -m bench memory " + " ".join(argv)).strip(), figures,
           summary=f"worker RSS {ours['empty']:.0f} MB with nothing planned, {ours['planned']:.0f} MB with "
                   f"{args.future:,} planned (x{ratio:.2f}); Celery ETA: x{eta_ratio:.1f} for "
                   f"{args.eta_tasks:,} tasks",
           notes=f"{verdict}. Ours: RSS summed over every worker process (the sms worker with 2 prefork children, "
                 f"the sweep worker with 1), median of 5 samples 1 s apart, after {args.warmup:,} reminders were "
                 f"sent and the sweeps (every 0.5 s) ran on for {args.settle_s:g} s; then {args.future:,} future "
                 f"messages (two months ahead, five per booking, with bookings and customers) were written into "
                 f"PostgreSQL while the same processes ran, {args.warmup:,} more reminders were sent, and the sweeps "
                 f"ran on over the million rows before the second sample. The alternative, same run, side by "
                 f"side (each measures its own processes' memory): a plain "
                 f"Celery worker on Redis (2 prefork processes) given one ETA task per future message; it takes "
                 f"them all off the queue at once and holds them (the Redis transport's unacked set shows "
                 f"{eta['unacked']:,}) until they are due: {eta_kb:.1f} KB each, so {args.future:,} would need "
                 f"~{projected_gb:.1f} GB in one worker, and every worker restart or visibility timeout (1 h on "
                 f"Redis) hands them all round again.")
    return 0
