"""python -m bench ingest_cost: machine instructions the ingester spends per event (valgrind).

`bench ingest` times the whole pipeline, which on this shared machine swings by ±15% from run to
run and by 2x within a day (2026-11-26: the unchanged baseline went from 211 to 110 events/s);
a code change worth a few percent cannot be seen in it. Instructions retired are the same on a
busy machine as on a quiet one, so this bench counts them (`valgrind --tool=callgrind`) for the
ingester's own process: events applied with `apply_events` against PostgreSQL, in batches as
`notifier ingest` applies them, and one event per transaction as the baseline Celery task
does (`bench.baseline.apply_event`, without Celery's own cost). PostgreSQL's work is not
counted. Each figure is the difference between a run that applies `--events` events after a
warm-up and one that stops after the warm-up, each on a fresh database, so start-up and imports
cancel out. Needs valgrind (Debian: `apt-get install valgrind`); not part of `make bench`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from bench.common import ROOT, prepared_store, record, scratch_database


def _child(url: str, warmup: int, events: int, batch: int, generated: int) -> None:
    """Runs under valgrind: the warm-up in batches of 500, then `events` more in batches of
    `batch`. Both runs of a pair generate the same `generated` events, so making them cancels out."""
    from bench.workload import START, booking_events
    from notifier.ingest import tune_gc
    from notifier.services import apply_events
    from notifier.store.sql import Store, make_engine

    stream = booking_events(generated)
    store = Store(make_engine(url))
    tune_gc()  # as `notifier ingest` does
    for i in range(0, warmup, 500):
        apply_events(store, stream[i:min(i + 500, warmup)], now=START, source="bench")
    for i in range(warmup, warmup + events, batch):
        apply_events(store, stream[i:min(i + batch, warmup + events)], now=START, source="bench")
    store.engine.dispose()


def _instructions(warmup: int, events: int, batch: int, generated: int) -> int:
    """Instructions the child process retired, on a database of its own."""
    with scratch_database() as url:
        prepared_store(url, []).engine.dispose()
        env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(ROOT))
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m",
             "bench.ingest_cost", "--child", url, str(warmup), str(events), str(batch), str(generated)],
            env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    for line in out.stderr.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1].strip())
    raise SystemExit(f"valgrind printed no instruction count:\n{out.stderr[-2000:]}")


def per_event(warmup: int, events: int, batch: int) -> float:
    generated = warmup + events
    return (_instructions(warmup, events, batch, generated) - _instructions(warmup, 0, batch, generated)) / events


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        _child(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench ingest_cost")
    parser.add_argument("--events", type=int, default=1500, help="events counted, in batches")
    parser.add_argument("--baseline-events", type=int, default=300, help="events counted, one per transaction")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("bench ingest_cost needs valgrind (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    ours = per_event(args.warmup, args.events, args.batch)
    print(f"ours: {ours / 1000:,.0f}k instructions per event", file=sys.stderr)
    base = per_event(args.warmup, args.baseline_events, 1)
    print(f"one event per transaction: {base / 1000:,.0f}k instructions per event", file=sys.stderr)
    figures: dict[str, Any] = {
        "events": args.events, "batch": args.batch, "warmup_events": args.warmup,
        "instructions_per_event": round(ours), "baseline_events": args.baseline_events,
        "baseline_instructions_per_event": round(base), "ratio": round(base / ours, 2),
        "seconds": round(time.perf_counter() - started),
    }
    record("ingest_cost", "python -m bench ingest_cost " + " ".join(argv), figures,
           notes="Instructions the ingester's process retires per event (`valgrind --tool=callgrind`), PostgreSQL's "
                 "work not counted: `apply_events` in batches of `batch` (as `notifier ingest`), and one event per "
                 "transaction (as the baseline Celery task, without Celery's own cost), each the difference between "
                 "a run with the events and one without, after the same warm-up, on fresh databases. The same on a "
                 "busy machine as on a quiet one, unlike `bench ingest`. On 2026-11-26, measured the same way by "
                 "hand: 1,161k per event before that afternoon's commits, 985k after them (1,500 events, batches of "
                 "500).",
           summary=f"ingester {ours / 1000:,.0f}k instructions per event vs {base / 1000:,.0f}k one event per "
                   f"transaction (x{base / ours:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
