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

PostgreSQL's own instructions are counted too (`PrivatePostgres`): a throw-away cluster of the
bench's own (initdb in a temporary directory, a free port on loopback) is given the warm-up
natively, then restarted under callgrind, and the backend that applies the events is measured
(less what an idle backend costs). It needs the server's binaries (`pg_config --bindir`, or
Debian's /usr/lib/postgresql/N/bin); as root the server runs as the `postgres` user.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
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


class PrivatePostgres:
    """A PostgreSQL cluster of the bench's own, started natively or under callgrind."""

    def __init__(self) -> None:
        self.bindir = _pg_bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="notifier-pgcost-"))
        self.user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # it refuses root
        if self.user:
            shutil.chown(self.dir, "postgres")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.proc: subprocess.Popen | None = None
        self._run([str(self.bindir / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres",
                   "-E", "UTF8", "--locale=C.UTF-8"])

    def _run(self, argv: list[str]) -> None:
        subprocess.run(self.user + argv, check=True, capture_output=True, cwd=self.dir)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, *, callgrind: bool) -> None:
        self.stop()
        server = [str(self.bindir / "postgres"), "-D", str(self.dir / "data"), "-p", str(self.port),
                  "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "autovacuum=off",
                  "-c", "checkpoint_timeout=1h", "-c", "max_wal_size=8GB", "-c", "shared_buffers=128MB"]
        wrap = (["valgrind", "--tool=callgrind", "--dump-instr=no", f"--callgrind-out-file={self.dir}/cg.%p"]
                if callgrind else [])
        self.proc = subprocess.Popen(self.user + wrap + server, cwd=self.dir, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while subprocess.run([str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
                             ).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("bench ingest_cost: the private PostgreSQL did not start")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None:
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop"])
            self.proc.wait(timeout=300)
            self.proc = None

    def instructions(self, backend_pid: int) -> int:
        """What a backend that has exited retired, from its callgrind output."""
        path = self.dir / f"cg.{backend_pid}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if path.exists():
                for line in path.read_text().splitlines():
                    if line.startswith(("summary:", "totals:")):
                        return int(line.split()[1])
            time.sleep(0.2)
        raise SystemExit(f"bench ingest_cost: no callgrind output for backend {backend_pid}")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pg_bindir() -> Path:
    found = shutil.which("pg_config")
    if found:
        bindir = Path(subprocess.run([found, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (bindir / "postgres").exists():
            return bindir
    servers = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if not servers:
        raise SystemExit("bench ingest_cost: no PostgreSQL server binaries (apt-get install postgresql)")
    return Path(servers[-1]).parent


def postgres_per_event(warmup: int, events: int, batch: int) -> float:
    """Instructions PostgreSQL's backend retires per event applied in batches of `batch`, after
    `warmup` events given natively."""
    import psycopg
    from sqlalchemy import text

    from bench.workload import START, booking_events
    from notifier.services import apply_events
    from notifier.store.sql import Store, make_engine

    stream = booking_events(warmup + events)
    pg = PrivatePostgres()
    try:
        pg.start(callgrind=False)
        admin = f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE warm")
        prepared_store(pg.url("warm"), stream[:warmup]).engine.dispose()
        pg.start(callgrind=True)
        store = Store(make_engine(pg.url("warm")))

        def backend() -> int:
            with store.engine.connect() as conn:
                pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
                conn.commit()
            return pid

        idle = backend()
        store.engine.dispose()
        pid = backend()
        for i in range(warmup, warmup + events, batch):
            apply_events(store, stream[i:min(i + batch, warmup + events)], now=START, source="bench")
        store.engine.dispose()
        return (pg.instructions(pid) - pg.instructions(idle)) / events
    finally:
        pg.close()


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
    pg_ours = postgres_per_event(args.warmup, args.events, args.batch)
    print(f"PostgreSQL: {pg_ours / 1000:,.0f}k instructions per event", file=sys.stderr)
    pg_base = postgres_per_event(args.warmup, args.baseline_events, 1)
    print(f"PostgreSQL, one event per transaction: {pg_base / 1000:,.0f}k instructions per event", file=sys.stderr)
    figures: dict[str, Any] = {
        "events": args.events, "batch": args.batch, "warmup_events": args.warmup,
        "instructions_per_event": round(ours), "baseline_events": args.baseline_events,
        "baseline_instructions_per_event": round(base), "ratio": round(base / ours, 2),
        "postgres_instructions_per_event": round(pg_ours),
        "postgres_baseline_instructions_per_event": round(pg_base),
        "postgres_ratio": round(pg_base / pg_ours, 2),
        "seconds": round(time.perf_counter() - started),
    }
    record("ingest_cost", "python -m bench ingest_cost " + " ".join(argv), figures,
           notes="Instructions the ingester's process retires per event (`valgrind --tool=callgrind`): `apply_events` "
                 "in batches of `batch` (as `notifier ingest`), and one event per transaction (as the baseline Celery "
                 "task, without Celery's own cost), each the difference between a run with the events and one without, "
                 "after the same warm-up, on fresh databases. `postgres_*`: the instructions of the PostgreSQL backend "
                 "that applied the same events, on a private cluster restarted under callgrind after the warm-up "
                 "(autovacuum off), less an idle backend's. The same on a busy machine as on a quiet one, unlike "
                 "`bench ingest`. History (ingester, then PostgreSQL, per event): 2026-11-26 1,161k before that "
                 "afternoon's commits, 985k after them; 2026-12-03, measured the same way after a 25,000-event "
                 "history, 1,126k and 1,200k before that day's commits, 964k and 693k after them.",
           summary=f"ingester {ours / 1000:,.0f}k + PostgreSQL {pg_ours / 1000:,.0f}k instructions per event vs "
                   f"{base / 1000:,.0f}k + {pg_base / 1000:,.0f}k one event per transaction")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
