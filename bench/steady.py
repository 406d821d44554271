"""python -m bench steady: a steady stream of due messages (500 a second for two minutes); how
late does each go out?

The same pipeline as `bench burst` (beat, a sweep worker, an sms worker, Redis, PostgreSQL, the
loopback Twilio API answering after 50 ms). The messages are reminders three hours before
visits that start 2 ms apart, so one falls due every 1/rate seconds from 10:00 local on
2 Dec; they are prepared in bulk as in `bench burst` (real planner, the store's COPY path).
The simulated clock is set to the first due instant and then runs in real time (a thread
moves it every 20 ms); lateness = sent_at - due_at from the workers' stamps on that clock.
After the last message falls due the bench waits at most `--drain-s` more; a message still
unsent then counts as late by at least the time it waited.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from bench import burst
from bench.burst import sent_count
from bench.common import (
    ROOT,
    CpuMeter,
    Profiler,
    RunningClock,
    add_bookings,
    check_alive,
    describe_cpu,
    describe_profile,
    percentile,
    pipeline_cpu_groups,
    pipeline_env,
    prepared_store,
    provider_process,
    record,
    redis_prefix,
    scratch_database,
    start_pipeline,
    stop_processes,
    wait_until,
)
from bench.workload import START

FIRST_DUE = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)  # 10:00 in Berlin
OFFSET_S = 3 * 3600  # the reminder, three hours before each visit
IMAGE = "img/steady-lateness.png"


# one SMS reminder three hours before a visit, nothing else; at the early desk 15 minutes earlier,
# so the workers warm up before the first due instant
reminders_3h_before = burst.tune_reminders({"offset_s": OFFSET_S}, {"reminder": {"offset_s": OFFSET_S + 900}})


def bookings(n: int, rate: float, *, tag: str = "s", resource: str | None = None,
             phone: str = "+49151") -> list[dict]:
    """Visits `1/rate` s apart from three hours after FIRST_DUE: their reminders fall due that far apart."""
    first = FIRST_DUE + timedelta(seconds=OFFSET_S)
    return [{"booking_id": f"{tag}{i}", "customer_id": f"{tag}c{i}",
             "resource_id": resource or ("anna", "jonas", "sauna")[i % 3],
             "starts_at": first + timedelta(seconds=i / rate), "phone": f"{phone}{i:08d}", "language": "de"}
            for i in range(n)]


def outcomes(store) -> list[tuple[float, float | None]]:
    """(due offset from the first due instant, lateness or None if unsent), seconds, every message."""
    with store.engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT EXTRACT(EPOCH FROM due_at - :first), "
            "CASE WHEN state = 'sent' THEN EXTRACT(EPOCH FROM sent_at - due_at) END FROM messages "
            "WHERE booking_id LIKE 's%'"), {"first": FIRST_DUE}).all()
    return [(float(due), None if late is None else float(late)) for due, late in rows]


def run(rate: float, duration_s: float, drain_s: float, *, processes: int, concurrency: int, batch: int,
        sweep_batch: int, sweep_interval_s: float, lease_s: int, profile_s: float) -> dict:
    from notifier.clock import FileClock

    n = int(rate * duration_s)
    warm = burst.warm_up_count(processes, batch)
    with scratch_database() as url, redis_prefix() as prefix, tempfile.TemporaryDirectory() as tmp, \
            provider_process(latency_s=0.05) as providers:
        store = prepared_store(url, [], tune=reminders_3h_before)
        planned = add_bookings(store, "salon-berlin", bookings(n, rate), now=START)
        if planned != n:
            raise SystemExit(f"the planner planned {planned} messages for {n} bookings; expected one reminder each")
        add_bookings(store, "salon-berlin", bookings(warm, rate, tag="w", resource=burst.EARLY, phone="+49153"),
                     now=START)
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
        clock = FileClock(Path(tmp) / "clock")
        clock.set(FIRST_DUE - timedelta(minutes=10))
        env = pipeline_env(url, prefix, clock.path, tmp, providers=providers, extra={
            "NOTIFIER_DISPATCH_CONCURRENCY": str(concurrency), "NOTIFIER_DISPATCH_BATCH": str(batch),
            "NOTIFIER_SWEEP_BATCH": str(sweep_batch), "NOTIFIER_SWEEP_INTERVAL_S": str(sweep_interval_s),
            "NOTIFIER_LEASE_S": str(lease_s)})
        procs = start_pipeline(env, processes=processes)
        alive = check_alive(procs)
        try:
            # warm: the early desk's reminders are due at once (imports, connections, as after a night's work)
            wait_until(lambda: sent_count(store) >= warm, timeout_s=300, poll_s=0.2, check=alive)
            time.sleep(2 * sweep_interval_s)
            load_before = os.getloadavg()[0]
            with RunningClock(clock, FIRST_DUE) as running, Profiler(procs[:1], profile_s) as profiler, \
                    CpuMeter(pipeline_cpu_groups(procs, providers, store)) as cpu:
                try:
                    wait_until(lambda: sent_count(store) >= n + warm, timeout_s=duration_s + drain_s, poll_s=0.5,
                               check=alive)
                except TimeoutError:
                    pass
                elapsed = time.perf_counter() - running.started
                load_after = os.getloadavg()[0]
        finally:
            stop_processes(procs)
        found = outcomes(store)
        store.engine.dispose()
        received = [m for m in providers.received() if m["to"].startswith("+49151")]
    return {"n": n, "elapsed": elapsed, "outcomes": found, "received": len(received),
            "duplicates": len(received) - len({m["to"] for m in received}), "warm": warm,
            "profile": profiler.summary(), "cpu": cpu, "load": (round(load_before, 1), round(load_after, 1))}


def plot(path: Path, points: list[tuple[float, float]], rate: float, p50: float, p99: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    step = max(1, len(points) // 6000)  # a readable scatter
    shown = sorted(points)[::step]
    left.scatter([d for d, _ in shown], [lt for _, lt in shown], s=2, color="tab:blue", alpha=0.5)
    left.axhline(3, color="tab:red", linestyle="--", linewidth=1, label="goal: p99 <= 3 s")
    left.set_xlabel("due, seconds after the first")
    left.set_ylabel("lateness (s)")
    left.legend(loc="upper left")
    lates = [lt for _, lt in points]
    right.hist(lates, bins=80, color="tab:blue")
    for value, label, style in ((p50, "p50", ":"), (p99, "p99", "-")):
        right.axvline(value, color="black", linestyle=style, linewidth=1, label=f"{label} {value:.2f} s")
    right.axvline(3, color="tab:red", linestyle="--", linewidth=1)
    right.set_xlabel("lateness: sent_at - due_at (s)")
    right.set_ylabel("messages")
    right.legend(loc="upper right")
    fig.suptitle(f"bench steady: {rate:g} due messages a second, {len(points):,} messages")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench steady")
    parser.add_argument("--rate", type=float, default=500.0, help="messages falling due per second")
    parser.add_argument("--duration-s", type=float, default=120.0)
    parser.add_argument("--drain-s", type=float, default=60.0,
                        help="longest wait after the last message fell due (keeps `make bench` bounded)")
    parser.add_argument("--processes", type=int, default=2, help="prefork children of the sms worker")
    parser.add_argument("--concurrency", type=int, default=64, help="sends in flight per worker process")
    parser.add_argument("--batch", type=int, default=200, help="message ids per dispatch task")
    parser.add_argument("--sweep-batch", type=int, default=5000)
    parser.add_argument("--sweep-interval-s", type=float, default=0.5)
    parser.add_argument("--lease-s", type=int, default=600)
    parser.add_argument("--profile-s", type=float, default=30.0,
                        help="py-spy on the sms worker for the first N s (0: off)")
    args = parser.parse_args(argv)

    result = run(args.rate, args.duration_s, args.drain_s, processes=args.processes, concurrency=args.concurrency,
                 batch=args.batch, sweep_batch=args.sweep_batch, sweep_interval_s=args.sweep_interval_s,
                 lease_s=args.lease_s, profile_s=args.profile_s)
    n, elapsed = result["n"], result["elapsed"]
    # an unsent message waited at least from its due instant until the bench stopped
    points = [(due, late if late is not None else elapsed - due) for due, late in result["outcomes"]]
    unsent = sum(1 for _, late in result["outcomes"] if late is None)
    lates = [late for _, late in points]
    p50, p99 = percentile(lates, 50), percentile(lates, 99)
    print(f"steady: {n - unsent} of {n} sent, lateness p50 {p50:.2f} s, p99 {p99:.2f} s", file=sys.stderr)
    plot(ROOT / "docs" / IMAGE, points, args.rate, p50, p99)
    cpu_ms, cpu_note = describe_cpu(result["cpu"], n - unsent)
    figures = {
        "rate_per_s": args.rate, "duration_s": args.duration_s, "messages": n,
        "processes": args.processes, "concurrency_per_process": args.concurrency, "dispatch_batch": args.batch,
        "sweep_interval_s": args.sweep_interval_s, "provider_latency_ms": 50,
        "lateness_p50_s": round(p50, 2), "lateness_p99_s": round(p99, 2), "lateness_max_s": round(max(lates), 2),
        "sent": n - unsent, "unsent_after_drain": unsent, "drain_s": args.drain_s,
        "provider_received": result["received"], "duplicates": result["duplicates"],
        "warm_up_messages": result["warm"], "load_avg_1m_before_after": list(result["load"]),
        "machine_cpu_busy": round(result["cpu"].machine_busy, 2), "cpu_ms_per_msg": cpu_ms,
        "goal_lateness_p99_s": 3,
    }
    if result["profile"]:
        figures["profile_gil_shares"] = result["profile"]["shares"]
        figures["profile_busy_per_process"] = list(result["profile"]["busy_per_process"].values())
    verdict = (f"goal met: p99 {p99:.2f} s <= 3 s" if p99 <= 3 else
               f"goal missed: p99 {p99:.2f} s against 3 s (+{p99 - 3:.2f} s)")
    gap = "" if p99 <= 3 else burst.closing_the_gap(args.rate, cpu_ms, result["profile"], os.cpu_count() or 1) + " "
    record("steady", ("python -m bench steady " + " ".join(argv)).strip(), figures,
           summary=f"{args.rate:g} due msgs/s for {args.duration_s:g} s: lateness p50 {p50:.2f} s, p99 {p99:.2f} s",
           images=[{"path": IMAGE, "caption": "bench steady: lateness of each message by its due time, and "
                                               "their distribution"}],
           notes=f"{verdict}. {cpu_note} {describe_profile(result['profile'])} {gap}Same pipeline as `burst` (beat every `sweep_interval_s`, a sweep worker, an sms "
                 f"worker with `processes` prefork children, the loopback Twilio API answering after 50 ms). "
                 f"Messages fall due every 1/`rate_per_s` s (reminders three hours before visits 2 ms apart), "
                 f"prepared in bulk through the store's own path with the real planner. The simulated clock runs "
                 f"in real time from the first due instant (a thread moves it every 20 ms); lateness = sent_at - "
                 f"due_at from the workers' stamps. The sweep interval is a floor under the lateness: a message "
                 f"waits up to one interval to be claimed. Unsent after `drain_s` count as late by the time "
                 f"they waited (a lower bound). Warm-up and load figures as in `burst`.")
    return 0
