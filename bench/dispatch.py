"""python -m bench dispatch: messages rendered, sent and recorded per second, through Celery
workers, to a loopback SMS provider (Twilio's API) that answers after 50 ms.

Ours: beat's sweep claims due rows and hands batches of ids to the `sms` queue; a dispatch
task sends its batch concurrently (`dispatch_concurrency` threads) and records each attempt.
Baseline, same run, same worker processes: one Celery task per message (threads pool with
the same total concurrency), each rendering, sending and recording its message.
Second phase: a configured limit of 200 messages/s for at least 30 s; `rate_limit_ratio` is
the achieved rate over the limit.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from bench.common import (
    REDIS_URL,
    ROOT,
    count_rows,
    prepared_store,
    provider_process,
    record,
    redis_prefix,
    scratch_database,
    stop_processes,
    wait_until,
)
from bench.workload import START

EVENTS_PER_BOOKING = 1  # each booking plans one info SMS due at once


def _events(n: int) -> list[str]:
    import json
    import uuid

    out = []
    for i in range(n):
        starts = START + timedelta(days=2, hours=4, minutes=i % 240)
        out.append(json.dumps({
            "schema_version": 1, "event_id": uuid.uuid4().hex, "type": "booking.created",
            "occurred_at": START.isoformat(), "tenant_id": "salon-berlin", "revision": 1,
            "data": {"booking_id": f"d{i}", "customer": {
                "id": f"c{i}", "name": f"Kunde {i}", "phone": f"+49151{i:08d}", "language": "de",
                "consents": {"sms": True}, "privacy_accepted": True},
                "resource": {"id": "anna", "name": "Anna Weber", "type": "specialist"},
                "starts_at": starts.isoformat(), "ends_at": (starts + timedelta(minutes=30)).isoformat()}}))
    return out


def _only_info_sms(tx) -> None:
    """Only the new-booking SMS: the other kinds would add messages due later."""
    from dataclasses import replace

    tenant = tx.tenant("salon-berlin")
    tx.save_tenant(replace(tenant, settings={
        "info": {"channels": ["sms"], "delay_s": 0}, "reminder": {"enabled": False},
        "confirmation": {"enabled": False}, "late": {"enabled": False, "activity_enabled": False,
                                                     "release_enabled": False},
        "feedback": {"enabled": False}, "staff": {"enabled": False}, "quiet_hours": {"enabled": False}}), START)


def _prepare(url: str, n: int):
    return prepared_store(url, _events(n), batch=2000, tune=_only_info_sms)


def _sent(store) -> int:
    from notifier.store import schema as t

    return count_rows(store, t.messages, t.messages.c.state == "sent")


def _env(url: str, prefix: str, providers, clock_path: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env.update({"NOTIFIER_DATABASE_URL": url, "NOTIFIER_BROKER_URL": REDIS_URL, "NOTIFIER_BROKER_KEY_PREFIX": prefix,
                "NOTIFIER_TWILIO_ACCOUNT_SID": providers.account_sid,
                "NOTIFIER_TWILIO_AUTH_TOKEN": providers.auth_token, "NOTIFIER_TWILIO_FROM": "+4930123456",
                "NOTIFIER_TWILIO_API_URL": providers.url, "NOTIFIER_CLOCK": f"file:{clock_path}",
                "NOTIFIER_LOG_LEVEL": "WARNING", "NOTIFIER_SWEEP_INTERVAL_S": "0.5", "NOTIFIER_LEASE_S": "600",
                "PYTHONPATH": str(ROOT), "BENCH_DATABASE_URL": url, "BENCH_BROKER_URL": REDIS_URL,
                "BENCH_KEY_PREFIX": prefix, **extra})
    return env




def run_ours(n: int, processes: int, concurrency: int, *, rate_limit: str = "") -> dict[str, float]:
    from notifier.clock import FileClock

    with scratch_database() as url, redis_prefix() as prefix, tempfile.TemporaryDirectory() as tmp, \
            provider_process(latency_s=0.05) as providers:
        clock = FileClock(Path(tmp) / "clock")
        clock.set(START - timedelta(minutes=10))  # nothing is due while the processes start
        store = _prepare(url, n)
        env = _env(url, prefix, providers, clock.path, {
            "NOTIFIER_DISPATCH_CONCURRENCY": str(concurrency), "NOTIFIER_DISPATCH_BATCH": "200",
            "NOTIFIER_SWEEP_BATCH": "5000", "NOTIFIER_RATE_LIMITS": rate_limit, "NOTIFIER_DATA_DIR": tmp})
        worker = subprocess.Popen([sys.executable, "-m", "notifier.cli", "worker", "-Q", "sweep,sms", "-c",
                                   str(processes)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        beat = subprocess.Popen([sys.executable, "-m", "notifier.cli", "beat"], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(6.0)  # workers and beat import, connect and sweep (empty) before the messages fall due
            clock.set(START)
            started = time.perf_counter()
            samples: list[tuple[float, int]] = []

            def done() -> bool:
                count = _sent(store)
                samples.append((time.perf_counter() - started, count))
                return count >= n

            wait_until(done, timeout_s=1800, poll_s=0.5)
            seconds = time.perf_counter() - started
        finally:
            stop_processes([beat, worker])
            store.engine.dispose()
        received = providers.received()
    duplicates = len(received) - len({m["to"] for m in received})
    return {"seconds": seconds, "msgs_per_s": n / seconds, "samples": samples, "duplicates": duplicates,
            "received": len(received)}


def run_baseline(n: int, processes: int, concurrency: int) -> dict[str, float]:
    from notifier.clock import FileClock

    with scratch_database() as url, redis_prefix() as prefix, tempfile.TemporaryDirectory() as tmp, \
            provider_process(latency_s=0.05) as providers:
        clock = FileClock(Path(tmp) / "clock")
        clock.set(START)
        store = _prepare(url, n)
        env = _env(url, prefix, providers, clock.path, {"NOTIFIER_DATA_DIR": tmp})
        workers = [subprocess.Popen([sys.executable, "-m", "celery", "-A", "bench.baseline", "worker", "-P",
                                     "threads", "-c", str(concurrency), "-Q", "baseline", "--without-gossip",
                                     "--without-mingle", "--loglevel", "WARNING", "-n", f"b{i}@%h"], env=env,
                                    cwd=ROOT, stdout=subprocess.DEVNULL,
                                    stderr=open(os.environ.get("BENCH_LOG_DIR", tmp) + f"/baseline-{i}.log", "wb"))
                   for i in range(processes)]
        os.environ.update({k: v for k, v in env.items() if k.startswith(("BENCH_", "NOTIFIER_"))})
        from bench.baseline import app, send_message
        from notifier.store import schema as t

        app.conf.broker_transport_options = {"global_keyprefix": prefix}
        with store.engine.connect() as conn:
            ids = conn.execute(select(t.messages.c.id)).scalars().all()
        try:
            time.sleep(4.0)
            started = time.perf_counter()
            # what a plain design does: claim each due message, one task each
            store.claim_due(START, lease_s=600, limit=n)
            with app.producer_or_acquire() as producer:
                for message_id in ids:
                    send_message.apply_async(args=(message_id,), producer=producer)
            wait_until(lambda: _sent(store) >= n, timeout_s=3600, poll_s=0.5)
            seconds = time.perf_counter() - started
        finally:
            stop_processes(workers)
            store.engine.dispose()
    return {"seconds": seconds, "msgs_per_s": n / seconds}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench dispatch")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--baseline-messages", type=int, default=5_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64, help="sends in flight per worker process")
    parser.add_argument("--rate", type=float, default=200.0, help="the limit for the second phase (messages/s)")
    parser.add_argument("--rate-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)

    ours = run_ours(args.messages, args.processes, args.concurrency)
    print(f"ours: {args.messages} in {ours['seconds']:.1f} s = {ours['msgs_per_s']:.0f}/s", file=sys.stderr)
    base = run_baseline(args.baseline_messages, args.processes, args.concurrency)
    print(f"baseline: {args.baseline_messages} in {base['seconds']:.1f} s = {base['msgs_per_s']:.0f}/s",
          file=sys.stderr)
    limited_n = int(args.rate * args.rate_seconds * 1.35)  # measured between 10 % and 90 %: >= rate_seconds
    limited = run_ours(limited_n, args.processes, args.concurrency, rate_limit=f"sms={args.rate:g}")
    # the achieved rate once the pipeline is running: between 10 % and 90 % of the messages sent
    points = limited["samples"]
    low = next(p for p in points if p[1] >= 0.1 * limited_n)
    high = next(p for p in points if p[1] >= 0.9 * limited_n)
    achieved = (high[1] - low[1]) / (high[0] - low[0])
    print(f"rate limited: {achieved:.1f}/s against {args.rate:g}/s over {high[0] - low[0]:.0f} s", file=sys.stderr)
    figures = {
        "messages": args.messages, "processes": args.processes, "concurrency_per_process": args.concurrency,
        "provider_latency_ms": 50, "msgs_per_s": round(ours["msgs_per_s"]), "seconds": round(ours["seconds"], 1),
        "provider_received": ours["received"], "duplicates": ours["duplicates"],
        "baseline_messages": args.baseline_messages, "baseline_msgs_per_s": round(base["msgs_per_s"]),
        "ratio": round(ours["msgs_per_s"] / base["msgs_per_s"], 2),
        "rate_limit": args.rate, "rate_limit_achieved": round(achieved, 1),
        "rate_limit_window_s": round(high[0] - low[0], 1), "rate_limit_ratio": round(achieved / args.rate, 3),
        "goal_msgs_per_s": 1000, "goal_rate_limit_ratio": "0.95-1.00",
    }
    record("dispatch", ("python -m bench dispatch " + " ".join(argv)).strip(), figures,
           notes="Ours: beat + `notifier worker` processes on Redis, batches of 200 ids on the `sms` queue, "
                 "`concurrency_per_process` sends in flight, each rendered, sent to the loopback Twilio API and "
                 "recorded (attempt row, state, timeline). Baseline: one Celery task per message, threads pool "
                 "with the same concurrency. Timed from the first sweep until every message is recorded sent.")
    return 0
