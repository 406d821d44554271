"""python -m bench ingest: events applied into PostgreSQL (with the messages they plan) per second.

Ours: raw JSON events on a Redis list, consumed by `notifier ingest` processes that apply
them in batches (one transaction per batch). Baseline, same run, same events, same number
of processes: one Celery task per event (`bench.baseline`), each applying its event in its
own transaction. Both are timed from the first publish until the last event is applied.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import (
    REDIS_URL,
    ROOT,
    CpuMeter,
    count_rows,
    prepared_store,
    record,
    redis_prefix,
    scratch_database,
    stop_processes,
    wait_until,
)
from bench.workload import START, booking_events
from notifier.clock import FileClock

# what the notes say of the figure's past (benchmarks.md is rewritten on every run)
HISTORY = (" Earlier: 2026-11-26, 2,412/s before the ingesters stopped waiting for each other's locks; after,"
           " single runs of 5,000-5,500/s when the machine was quick and 2,000-3,000/s when it had slowed twofold"
           " (2,181/s recorded). 2026-12-03, the same code: 3,265/s (3,164 / 3,265 / 4,637) at 0.53 ms of CPU per"
           " event. That night's commits cut PostgreSQL's instructions per event by 42% and the ingester's by 14%"
           " (`python -m bench ingest_cost`, after a 25,000-event history: 1,200k to 693k and 1,126k to 964k): withdrawn"
           " messages nothing refers to are deleted, not rewritten (migration 0008 drops the attempts' foreign key that"
           " made each delete a query), identifier columns compare in byte order (COLLATE \"C\"), and the late path"
           " (R16-R18) is planned when a visit starts unmarked instead of with every booking (8 messages a booking"
           " become 5, and a reschedule moves 3 fewer).")


def _prepare(url: str, warmup: list[str]):
    return prepared_store(url, warmup)


def _processed(store) -> int:
    from notifier.store import schema as t

    return count_rows(store, t.processed_events)


def _messages(store) -> int:
    """Messages that will go out (withdrawn ones depend on arrival order, live ones must not)."""
    from notifier.store import schema as t

    return count_rows(store, t.messages, t.messages.c.state != "withdrawn")


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env.update(extra, PYTHONPATH=str(ROOT), NOTIFIER_LOG_LEVEL="WARNING")
    return env




def run_ours(events: list[str], warmup: list[str], processes: int, batch: int) -> dict[str, Any]:
    with scratch_database() as url, redis_prefix() as prefix, tempfile.TemporaryDirectory() as tmp:
        store = _prepare(url, warmup)
        clock = FileClock(Path(tmp) / "clock")
        clock.set(START)  # the same `now` as the baseline's
        queue = f"{prefix}.events"
        env = _env({"NOTIFIER_DATABASE_URL": url, "NOTIFIER_EVENTS_URL": REDIS_URL, "NOTIFIER_EVENTS_QUEUE": queue,
                    "NOTIFIER_INGEST_BATCH_MAX": str(batch), "NOTIFIER_CLOCK": f"file:{clock.path}",
                    "NOTIFIER_HOLD_S": "3600"})
        consumers = [f"bench-{i}" for i in range(processes)]
        procs = [subprocess.Popen([sys.executable, "-m", "notifier.cli", "ingest"],
                                  env=dict(env, NOTIFIER_INGEST_CONSUMER=name), cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name in consumers]
        client = redis.Redis.from_url(REDIS_URL)
        lists = [queue] + [f"{queue}:processing:{name}" for name in consumers]

        def drained() -> bool:
            """Nothing waiting and nothing held: a consumer deletes what it holds only after the commit."""
            pipe = client.pipeline(transaction=False)
            for key in lists:
                pipe.llen(key)
            return not any(pipe.execute())

        try:
            time.sleep(2.0)  # let the processes import and block on the empty list
            with CpuMeter(_cpu_groups(procs, store, client)) as meter:
                started = time.perf_counter()
                pipe = client.pipeline(transaction=False)
                for i in range(0, len(events), 1000):
                    pipe.rpush(queue, *events[i:i + 1000])
                pipe.execute()
                # polled on Redis (LLEN is free), not with count(*) on the database the ingesters write
                wait_until(drained, timeout_s=1800, poll_s=0.02, check=lambda: _all_alive(procs))
                seconds = time.perf_counter() - started
            applied = _processed(store) - len(warmup)
            if applied != len(events):
                raise SystemExit(f"ingest: {applied} of {len(events)} events recorded as processed")
            planned = _messages(store)
        finally:
            stop_processes(procs)
            client.close()
            store.engine.dispose()
    cpu_ms = {label: round(used * 1000 / len(events), 3) for label, used in meter.used.items()}
    return {"seconds": seconds, "events_per_s": len(events) / seconds, "messages_planned": planned,
            "cpu_ms_per_event": cpu_ms, "machine_busy": meter.machine_busy,
            "cores_used": sum(meter.used.values()) / meter.elapsed_s}


def _all_alive(procs) -> None:
    """An ingester that died (a deadlock once killed one) would leave the others to do its share
    and the figure would be of fewer processes than it says."""
    dead = [p.args for p in procs if p.poll() is not None]
    if dead:
        raise SystemExit(f"ingest: {len(dead)} of {len(procs)} ingester processes exited during the run")


def _cpu_groups(procs, store, client):
    """For `CpuMeter`: the ingesters, the PostgreSQL backends serving the run's database, Redis, this process."""
    from sqlalchemy import text

    redis_pid = int(client.info("server")["process_id"])

    def groups() -> dict[str, list[int]]:
        with store.engine.connect() as conn:
            backends = [int(pid) for pid in conn.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )).scalars()]
        return {"ingesters": [p.pid for p in procs], "PostgreSQL": backends, "Redis": [redis_pid],
                "bench (publish, poll)": [os.getpid()]}
    return groups


def run_baseline(events: list[str], warmup: list[str], processes: int) -> dict[str, float]:
    with scratch_database() as url, redis_prefix() as prefix:
        store = _prepare(url, warmup)
        env = _env({"BENCH_DATABASE_URL": url, "BENCH_BROKER_URL": REDIS_URL, "BENCH_KEY_PREFIX": prefix})
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "bench.baseline", "worker", "-c",
                                   str(processes), "-Q", "baseline", "--without-gossip", "--without-mingle",
                                   "--loglevel", "WARNING"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        os.environ.update({k: v for k, v in env.items() if k.startswith("BENCH_")})
        from bench.baseline import app, apply_event

        app.conf.broker_transport_options = {"global_keyprefix": prefix}
        try:
            time.sleep(3.0)
            started = time.perf_counter()
            with app.producer_or_acquire() as producer:
                for body in events:
                    apply_event.apply_async(args=(body,), producer=producer)
            wait_until(lambda: _processed(store) >= len(events) + len(warmup), timeout_s=3600, poll_s=0.2)
            seconds = time.perf_counter() - started
            planned = _messages(store)
        finally:
            stop_processes([worker])
            store.engine.dispose()
    return {"seconds": seconds, "events_per_s": len(events) / seconds, "messages_planned": planned}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench ingest")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--baseline-events", type=int, default=10_000,
                        help="the first N of the same events for the baseline (it runs ~25x slower; the rate "
                             "is per event either way)")
    parser.add_argument("--processes", type=int, default=2, help="ingester processes = baseline worker processes")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=5000, help="events applied (and ANALYZEd) before timing")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of ours, each on a fresh database; the figures are the median run's (the "
                             "machine is shared: one run can get a fraction of it)")
    args = parser.parse_args(argv)

    stream = booking_events(args.warmup + args.events)
    warmup, events = stream[: args.warmup], stream[args.warmup:]
    runs = []
    for _ in range(max(args.repeat, 1)):
        runs.append(run_ours(events, warmup, args.processes, args.batch))
        print(f"ours: {args.events} events in {runs[-1]['seconds']:.1f} s = {runs[-1]['events_per_s']:.0f}/s "
              f"({runs[-1]['messages_planned']} messages planned)", file=sys.stderr)
    ours = sorted(runs, key=lambda r: r["events_per_s"])[len(runs) // 2]
    baseline_events = events[: args.baseline_events or args.events]
    base = run_baseline(baseline_events, warmup, args.processes)
    print(f"baseline: {len(baseline_events)} events in {base['seconds']:.1f} s = {base['events_per_s']:.0f}/s",
          file=sys.stderr)
    if len(baseline_events) == len(events) and base["messages_planned"] != ours["messages_planned"]:
        raise SystemExit(f"the two paths planned different messages: {ours['messages_planned']} "
                         f"!= {base['messages_planned']}")
    figures = {
        "events": args.events, "warmup_events": args.warmup, "processes": args.processes, "batch": args.batch,
        "repeat": len(runs),
        "events_per_s": round(ours["events_per_s"]), "seconds": round(ours["seconds"], 2),
        "events_per_s_runs": [round(r["events_per_s"]) for r in runs],
        "messages_planned": ours["messages_planned"],
        "baseline_events": len(baseline_events), "baseline_events_per_s": round(base["events_per_s"]),
        "ratio": round(ours["events_per_s"] / base["events_per_s"], 2),
        "goal_events_per_s": 5000,
        "cpu_ms_per_event": ours["cpu_ms_per_event"],
        # what the CPU per event allows with every core to ourselves; the machine is shared
        "capacity_events_per_s": round((os.cpu_count() or 1) * 1000 / sum(ours["cpu_ms_per_event"].values())),
        "cores_used": round(ours["cores_used"], 2), "machine_busy": round(ours["machine_busy"], 2),
    }
    command = "python -m bench ingest " + " ".join(argv)
    record("ingest", command.strip(), figures,
           notes="Ours: `notifier ingest` processes on a Redis list, batches of up to `batch` events per "
                 "transaction, run `repeat` times on fresh databases: the figures are the median run's, "
                 "`events_per_s_runs` all of them. Baseline: one Celery task per event on Redis, each in its own transaction, as "
                 "many worker processes. Both start from the same warm-up history (ANALYZEd) and are timed from "
                 "the first publish until the last event is applied; both must plan the same live messages. "
                 "`cpu_ms_per_event`: CPU the ingesters, the PostgreSQL backends of the run's database, Redis and "
                 "the bench itself used per event while ours ran; `capacity_events_per_s` is what that allows on "
                 f"{os.cpu_count()} cores to ourselves; `cores_used` is how much of the machine our processes got "
                 "and `machine_busy` how busy it was in all (the machine is shared with other work)." + HISTORY)
    return 0
