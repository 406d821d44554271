"""What every benchmark shares: throw-away databases and key prefixes, the machine, the record."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from notifier.devtools import RunningClock  # noqa: F401 - the benchmarks' running clock, shared with the tests

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "bench"
PG_ADMIN = os.environ.get("NOTIFIER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("NOTIFIER_TEST_REDIS", "redis://127.0.0.1:6379/0")


@contextmanager
def scratch_database() -> Iterator[str]:
    """A PostgreSQL database of the benchmark's own (SQLAlchemy URL), dropped afterwards."""
    import psycopg

    name = f"notifier_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def redis_prefix() -> Iterator[str]:
    import redis

    prefix = f"nb{uuid.uuid4().hex[:8]}"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()


@contextmanager
def provider_process(*, latency_s: float) -> Iterator[Any]:
    """The loopback Twilio/Meta provider as a process of its own (notifier.fake_providers), so
    its CPU is not the benchmark's; `.received()` asks it what it received."""
    import requests

    proc = subprocess.Popen([sys.executable, "-m", "notifier.fake_providers", "--latency-s", str(latency_s)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not url:
            raise RuntimeError("the fake provider process did not start")

        def received() -> list[dict[str, Any]]:
            return requests.get(f"{url}/_fake/received", timeout=60).json()["received"]

        yield SimpleNamespace(url=url, account_sid="ACtest", auth_token="secret-token", received=received,
                              pid=proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_until(condition: Callable[[], bool], *, timeout_s: float, poll_s: float = 0.05,
               check: Callable[[], None] | None = None) -> float:
    """Seconds until `condition()` held; raises TimeoutError past the deadline."""
    start = time.perf_counter()
    while not condition():
        if check:
            check()
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError("benchmark condition not reached in time")
        time.sleep(poll_s)
    return time.perf_counter() - start


def machine() -> dict[str, object]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    pg = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip() or "?"
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gb": mem_gb, "python": platform.python_version(),
            "postgres_client": pg}


def record(name: str, command: str, figures: dict[str, object], notes: str = "", *, summary: str = "",
           images: list[dict[str, str]] | None = None) -> None:
    """Save the figures (docs/bench/NAME.json), regenerate docs/benchmarks.md, print the JSON line.
    `summary`: one line for the table at the top; `images`: [{"path": "img/x.png" (relative to
    docs/), "caption": ...}] shown under the figures."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    entry = {"name": name, "command": command, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
             "machine": machine(), "figures": figures, "notes": notes}
    if summary:
        entry["summary"] = summary
    if images:
        entry["images"] = images
    (RESULTS / f"{name}.json").write_text(json.dumps(entry, indent=2) + "\n")
    from bench.report import write_report

    write_report()
    sys.stdout.flush()
    print(json.dumps(figures, separators=(",", ":")))


def prepared_store(url: str, history: list[str], *, batch: int = 1000, tune=None):
    """A migrated store with the shipped tenants, `tune(tx)` applied, `history` applied and
    ANALYZEd: a live database has statistics (autovacuum keeps them); a fresh one misleads."""
    from sqlalchemy import text

    from bench.workload import START
    from notifier.services import apply_events, load_tenants
    from notifier.settings import shipped_path
    from notifier.store.sql import Store, make_engine

    store = Store(make_engine(url))
    store.migrate()
    load_tenants(store, shipped_path("config") / "tenants", now=START)
    if tune is not None:
        with store.transaction() as tx:
            tune(tx)
    for i in range(0, len(history), batch):
        apply_events(store, history[i:i + batch], now=START, source="bench")
    with store.engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    return store


def count_rows(store, table, *where) -> int:
    from sqlalchemy import func, select

    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def stop_processes(procs) -> None:
    import subprocess

    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


# --- the pipeline as processes, a clock that runs, rows in bulk (burst, steady, sweep, memory, limits) --

def pipeline_env(url: str, prefix: str, clock_path: Path, data_dir: str, *, providers: Any = None,
                 extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of `notifier worker` / `notifier beat` processes on this run's database,
    Redis key prefix, simulated clock and (when given) loopback provider."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env.update({"NOTIFIER_DATABASE_URL": url, "NOTIFIER_BROKER_URL": REDIS_URL, "NOTIFIER_BROKER_KEY_PREFIX": prefix,
                "NOTIFIER_CLOCK": f"file:{clock_path}", "NOTIFIER_DATA_DIR": data_dir,
                "NOTIFIER_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)})
    if providers is not None:
        env.update({"NOTIFIER_TWILIO_ACCOUNT_SID": providers.account_sid,
                    "NOTIFIER_TWILIO_AUTH_TOKEN": providers.auth_token, "NOTIFIER_TWILIO_FROM": "+4930123456",
                    "NOTIFIER_TWILIO_API_URL": providers.url})
    env.update(extra or {})
    return env


def start_pipeline(env: dict[str, str], *, processes: int, queues: str = "sms", sweep_worker: bool = True,
                   beat: bool = True) -> list[subprocess.Popen]:
    """As docker-compose deploys it: a `notifier worker` on the channel `queues` (prefork,
    `processes` children), with `sweep_worker` one more on the sweep queue (one child, so a
    sweep never waits behind dispatch batches), and with `beat` one `notifier beat`."""
    def worker(queue: str, children: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "notifier.cli", "worker", "-Q", queue, "-c", str(children)],
                                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    procs = [worker(queues, processes)]
    if sweep_worker:
        procs.append(worker("sweep", 1))
    if beat:
        procs.append(subprocess.Popen([sys.executable, "-m", "notifier.cli", "beat"], env=env, cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def check_alive(procs) -> Callable[[], None]:
    """For `wait_until(check=...)`: fail at once when a process of the pipeline died."""
    def check() -> None:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{' '.join(map(str, proc.args[:4]))} exited with {proc.returncode}")
    return check


def add_bookings(store, tenant_id: str, bookings: list[dict[str, Any]], *, now: datetime,
                 chunk: int = 5000) -> int:
    """Bookings with their customers and planned messages, written the way the ingester writes
    them (a `BatchSession` flushed through the store's COPY helpers) but without parsing an
    event per booking: each booking is planned by the real planner (`plan_booking`, the
    tenant's settings as stored), and its board check time set as ingest sets it. Each item:
    booking_id, customer_id, resource_id, starts_at, phone, language. Returns the messages planned."""
    from datetime import timedelta

    from notifier.domain.model import Booking, Channel, Customer
    from notifier.domain.planning import diff_plan, next_flag_change, plan_booking
    from notifier.services import settings_for
    from notifier.store.batch import BatchSession

    planned_total = 0
    for i in range(0, len(bookings), chunk):
        with store.engine.begin() as conn:
            session = BatchSession(conn, lock_bookings=False)
            tenant = session.tenant(tenant_id)
            for item in bookings[i:i + chunk]:
                customer = Customer(id=item["customer_id"], tenant_id=tenant_id, name=f"Kunde {item['customer_id']}",
                                    phone=item["phone"], language=item["language"],
                                    consents=frozenset({Channel.SMS}), privacy_accepted=True, snapshot_at=now)
                booking = Booking(id=item["booking_id"], tenant_id=tenant_id, customer_id=customer.id,
                                  resource_id=item["resource_id"], starts_at=item["starts_at"],
                                  ends_at=item["starts_at"] + timedelta(minutes=45), created_at=now,
                                  scheduled_at=now, revision=1)
                resource = session.resource(tenant_id, booking.resource_id)
                settings = settings_for(tenant, resource)
                session.put_customer(customer, None)
                session.put_booking(booking)
                session.set_next_check(tenant_id, booking.id, next_flag_change(booking, settings, now))
                planned = plan_booking(booking, customer, resource, tenant, settings, now=now).messages
                session.apply_diff(tenant_id, booking.id, diff_plan([], planned))
                planned_total += len(planned)
            session.flush(now)
    return planned_total


def fill_future_messages(store, n: int, *, after: datetime, span_s: float = 60 * 86400, per_booking: int = 5,
                         tenant_id: str = "salon-berlin", resource_id: str = "anna", tag: str = "f") -> float:
    """`n` planned messages due evenly from `after` over `span_s` (two months), `per_booking` to a booking
    (with their bookings and customers), generated inside PostgreSQL (generate_series): what a
    store holds when the next two months are booked. VACUUM ANALYZE after. Returns the seconds."""
    from sqlalchemy import text

    started = time.perf_counter()
    params = {"tenant": tenant_id, "resource": resource_id, "tag": tag, "after": after, "n": n,
              "bookings": -(-n // per_booking), "per": per_booking, "span": float(span_s)}
    p = ("WITH p AS (SELECT CAST(:tenant AS text) AS tenant, CAST(:tag AS text) AS tag, "
         "CAST(:resource AS text) AS resource, CAST(:after AS timestamptz) AS after) ")
    statements = [
        p + "INSERT INTO customers (tenant_id, id, name, phone, language, consents, privacy_accepted, "
            "created_via_online_booking, revision, snapshot_at) "
            "SELECT p.tenant, p.tag || 'c' || g, 'Kunde ' || g, '+49152' || lpad(g::text, 8, '0'), 'de', "
            "'[\"sms\"]'::json, true, false, 0, p.after FROM p, generate_series(1, :bookings) AS g",
        p + "INSERT INTO bookings (tenant_id, id, customer_id, resource_id, starts_at, ends_at, created_at, "
            "scheduled_at, source, status, needs_approval, revision) "
            "SELECT p.tenant, p.tag || 'b' || g, p.tag || 'c' || g, p.resource, s, s + interval '45 minutes', "
            "p.after, p.after, 'staff', 'active', false, 1 "
            "FROM p, generate_series(1, :bookings) AS g, "
            "LATERAL (SELECT p.after + make_interval(secs => 3600 + g::float8 / :bookings * :span) AS s) AS b",
        p + "INSERT INTO messages (tenant_id, booking_id, key, kind, channel, recipient, state, "
            "due_at, attempts, created_at, updated_at) "
            "SELECT p.tenant, p.tag || 'b' || b, k || '/customer', split_part(k, '.', 1), 'sms', 'customer', 'planned', "
            "p.after + make_interval(secs => g::float8 / :n * :span), 0, p.after, p.after "
            "FROM p, generate_series(1, :n) AS g, "
            "LATERAL (SELECT (g - 1) / :per + 1 AS b, (ARRAY['info', 'confirmation', 'reminder', 'late', "
            "'feedback'])[(g - 1) % :per % 5 + 1] || '.' || ((g - 1) % :per) AS k) AS m",
    ]
    with store.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement), params)
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    return time.perf_counter() - started


def process_tree(pid: int) -> list[int]:
    """A process and all its live descendants (a prefork worker and its pool)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            pass
    return out


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, MB."""
    def rss_kb(p: int) -> int:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    return sum(rss_kb(p) for p in process_tree(pid)) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU a live process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class CpuMeter:
    """CPU seconds each group of processes used over a with-block (`groups()` names them, asked
    at the start and at the end so processes started meanwhile count from zero), and how busy
    the whole machine was. Where the goal is a rate, CPU per message says where the time goes."""

    def __init__(self, groups: Callable[[], dict[str, list[int]]]) -> None:
        self.groups = groups
        self.used: dict[str, float] = {}
        self.machine_busy = 0.0

    def _sample(self) -> dict[int, tuple[str, float]]:
        return {pid: (label, cpu_seconds(pid)) for label, pids in self.groups().items() for pid in pids}

    def __enter__(self) -> "CpuMeter":
        self._before, self._ticks = self._sample(), _machine_ticks()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed_s = time.perf_counter() - self._started
        busy, total = _machine_ticks()
        self.machine_busy = (busy - self._ticks[0]) / max(1, total - self._ticks[1])
        for pid, (label, seconds) in self._sample().items():
            before = self._before.get(pid, (label, 0.0))[1]
            self.used[label] = self.used.get(label, 0.0) + max(0.0, seconds - before)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank; values need not be sorted."""
    if not values:
        return float("nan")
    import math

    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


# --- where the time goes: py-spy on the pipeline's processes (burst, steady) -----------------------

PROFILE_CATEGORIES = (  # first match in a stack wins; a sample is a moment a thread held the GIL
    ("importing modules (first task of a process)", ("_find_and_load",)),
    ("simulated clock reads (bench only)", (";FileClock.now",)),
    ("provider calls (HTTP client)", (";transmit [notifier/dispatch.py]",)),
    ("claim + load the batch (SQL)", (";Store.claim_batch_for_send", ";_load [notifier/dispatch.py]")),
    ("send-time re-plan (R3 check)", (";_planned_keys [notifier/dispatch.py]",)),
    ("rendering (Jinja, babel)", (";Renderer.render [notifier/rendering/",)),
    ("other send-time checks, message assembly", (";prepare [notifier/dispatch.py]",)),
    ("recording outcomes (SQL)", (";record [notifier/dispatch.py]",)),
    ("rest of dispatch_batch", (";dispatch_batch [notifier/dispatch.py]",)),
    ("sweeps and outbox", (";sweep_due", ";sweep_states", ";publish_outbox", ";housekeeping")),
    ("Celery and kombu (task transport)", ("celery/", "kombu/", "billiard/")),
)


class Profiler:
    """py-spy (`record --gil --subprocesses`) on running processes for `seconds`: which code held
    each process's GIL. `summary()`: the share of samples per category, and how busy each process
    was (samples held over samples possible). A no-op when py-spy is missing or may not attach."""

    def __init__(self, procs, seconds: float, *, rate_hz: int = 100) -> None:
        import shutil
        import tempfile

        self.seconds, self.rate_hz = seconds, rate_hz
        self.spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.folder = Path(tempfile.mkdtemp(prefix="bench-profile-"))
        self.procs = procs
        self.runs: list[tuple[subprocess.Popen, Path]] = []

    def __enter__(self) -> "Profiler":
        if not Path(self.spy).exists():
            return self
        for proc in self.procs:
            out = self.folder / f"{proc.pid}.txt"
            self.runs.append((subprocess.Popen(
                [self.spy, "record", "--gil", "--subprocesses", "--nonblocking", "-r", str(self.rate_hz), "-d",
                 str(int(self.seconds)), "-f", "raw", "-o", str(out), "-p", str(proc.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out))
        return self

    def __exit__(self, *exc: object) -> None:
        for spy, _ in self.runs:
            try:
                spy.wait(timeout=self.seconds + 30)
            except subprocess.TimeoutExpired:
                spy.kill()

    def summary(self) -> dict[str, Any]:
        import re
        import shutil
        from collections import Counter

        # "transmit (/repo/notifier/dispatch.py:345)" -> "transmit [notifier/dispatch.py]"
        location = re.compile(rf" \((?:.*/site-packages/|{re.escape(str(ROOT))}/|.*/python3\.\d+/)?([^:]*):\d+\)$")
        shares: Counter[str] = Counter()
        per_process: Counter[str] = Counter()
        for _, out in self.runs:
            if not out.exists():
                continue
            for line in out.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                if not stack or not count.isdigit():
                    continue
                frames = [location.sub(r" [\1]", f) for f in stack.split(";")]
                # "process PID:..." frames: the worker's, then its prefork child's when it was one
                process = [f for f in frames if f.startswith("process ")][-1].split(":")[0]
                per_process[process] += int(count)
                joined = ";" + ";".join(frames)
                category = next((name for name, needles in PROFILE_CATEGORIES
                                 if any(n in joined for n in needles)), "other")
                shares[category] += int(count)
        shutil.rmtree(self.folder, ignore_errors=True)
        total = sum(shares.values())
        if not total:
            return {}
        possible = self.seconds * self.rate_hz
        return {"seconds": self.seconds, "samples": total,
                "busy_per_process": {p: round(n / possible, 2) for p, n in sorted(per_process.items())},
                "shares": {name: round(n / total, 3) for name, n in shares.most_common()}}


def describe_profile(profile: dict[str, Any]) -> str:
    """One sentence for a note."""
    if not profile:
        return "No profile (py-spy missing or not allowed to attach)."
    busy = " / ".join(f"{v:.0%}" for v in profile["busy_per_process"].values())
    parts = ", ".join(f"{name} {share:.0%}" for name, share in profile["shares"].items() if share >= 0.02)
    return (f"Profile (py-spy --gil on the sms worker and its prefork children, the first {profile['seconds']:g} s): "
            f"each process held its GIL {busy} of the time; of that time: {parts}.")



def pipeline_cpu_groups(procs, providers, store) -> Callable[[], dict[str, list[int]]]:
    """For `CpuMeter`: the processes of a `start_pipeline` run, its loopback provider, the
    PostgreSQL backends serving its database, the Redis server and this process."""
    import redis
    from sqlalchemy import text

    def groups() -> dict[str, list[int]]:
        with store.engine.connect() as conn:
            backends = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"))
            backends = [int(pid) for pid in backends.scalars()]
        client = redis.Redis.from_url(REDIS_URL)
        try:
            redis_pid = int(client.info("server")["process_id"])
        finally:
            client.close()
        return {"sms worker": process_tree(procs[0].pid),
                "sweep worker and beat": [p for proc in procs[1:] for p in process_tree(proc.pid)],
                "PostgreSQL": backends, "loopback provider": [providers.pid], "Redis": [redis_pid],
                "bench (polling, clock)": [os.getpid()]}
    return groups


def describe_cpu(meter: CpuMeter, messages: int) -> tuple[dict[str, float], str]:
    """CPU milliseconds per message by group, and a sentence for a note."""
    per = {label: round(seconds * 1000 / max(1, messages), 2) for label, seconds in
           sorted(meter.used.items(), key=lambda kv: -kv[1])}
    total = sum(per.values())
    cores = os.cpu_count() or 1
    parts = ", ".join(f"{label} {ms:.2f}" for label, ms in per.items())
    ours = sum(meter.used.values()) / max(1e-9, meter.elapsed_s)  # cores our processes kept busy
    return per, (f"CPU per message (ms): {parts}; {total:.2f} in all, so {cores} cores to ourselves could carry "
                 f"at most ~{cores * 1000 / total:.0f} msgs/s. During the run the machine was "
                 f"{meter.machine_busy:.0%} busy, our processes {ours:.2f} of its {cores} cores; the rest was "
                 f"other work on the shared machine.")


# --- services of a run's own, to stop and start at will (chaos) -----------------------------------------
# The machine's PostgreSQL (5432) and Redis (6379) are shared with other tests and benchmarks: a run
# that stops or restarts a service starts its own cluster and server on free ports and touches only those.

def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_postgres_user(argv: list[str]) -> list[str]:
    """initdb and pg_ctl refuse to run as root: run them as the `postgres` account then."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


def postgres_bindir() -> Path:
    """The newest installed server's bin folder (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    pg_config = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
    if pg_config.returncode == 0 and (Path(pg_config.stdout.strip()) / "initdb").exists():
        return Path(pg_config.stdout.strip())
    raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl) found")


def niced(increment: int) -> Callable[[], None] | None:
    """A `preexec_fn` that lowers a child process's priority (`nice`), or None for none: what a
    benchmark starves runs below what stands for the world outside (providers, sinks)."""
    return (lambda: os.nice(increment)) if increment else None


class PrivatePostgres:
    """A PostgreSQL cluster of the run's own: initdb into a temporary folder, served on a free
    loopback port with trust authentication; `stop(mode)` and `start()` act on it alone. `nice`:
    its processes' priority increment."""

    def __init__(self, *, database: str = "notifier", nice: int = 0) -> None:
        import shutil
        import tempfile

        self.bindir = postgres_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="notifier-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.database = database
        self.nice = nice
        self._shutil = shutil
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(_as_postgres_user([str(self.bindir / argv[0]), *argv[1:]]), capture_output=True,
                              text=True, check=check, cwd=self.root, preexec_fn=niced(self.nice))

    def __enter__(self) -> "PrivatePostgres":
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast`: connections cut, a clean shutdown; `immediate`: as if the server crashed."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def __exit__(self, *exc: object) -> None:
        self.stop("immediate")
        self._shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A redis-server of the run's own on a free loopback port, with an append-only file as
    docs/operations.md deploys it (`appendfsync` everysec by default); `restart(crash=...)`
    stops it with SIGTERM (Redis saves and exits) or SIGKILL (a crash) and starts it again."""

    def __init__(self, *, appendfsync: str = "everysec", nice: int = 0) -> None:
        import tempfile

        self.root = Path(tempfile.mkdtemp(prefix="notifier-redis-"))
        self.port = free_port()
        self.appendfsync = appendfsync
        self.nice = nice
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--dir", str(self.root), "--appendonly", "yes",
                                      "--appendfsync", self.appendfsync, "--save", "",
                                      "--logfile", str(self.root / "redis.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=niced(self.nice))
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.root / 'redis.log'}")
            time.sleep(0.05)
        client.close()

    def stop(self, *, crash: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.kill() if crash else self.proc.terminate()
        self.proc.wait(timeout=60)

    def __enter__(self) -> "PrivateRedis":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import shutil

        self.stop(crash=True)
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def flapping_provider_process(*, latency_s: float, seed: int | None = None, account_sid: str = "ACtest",
                              auth_token: str = "secret-token") -> Iterator[Any]:
    """`provider_process` whose provider can be made to flap: `.flap(error_rate=0.2, ...)`
    (fields of notifier.fake_providers.Flapping), `.faults()` (what it injected, by kind), and
    go down: `.outage("refuse", for_s=20)` (its port closed until then) or `.outage("5xx", ...)`."""
    import requests

    argv = [sys.executable, "-m", "notifier.fake_providers", "--latency-s", str(latency_s),
            "--account-sid", account_sid, "--auth-token", auth_token]
    if seed is not None:
        argv += ["--seed", str(seed)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not url:
            raise RuntimeError("the fake provider process did not start")
        session = requests.Session()

        def received() -> list[dict[str, Any]]:
            return session.get(f"{url}/_fake/received", timeout=60).json()["received"]

        def flap(**rates: float) -> dict[str, Any]:
            return session.post(f"{url}/_fake/faults", json=rates, timeout=10).json()

        def faults() -> dict[str, int]:
            return session.get(f"{url}/_fake/faults", timeout=10).json()["injected"]

        def outage(mode: str | None, *, for_s: float) -> None:
            session.post(f"{url}/_fake/outage", json={"mode": mode, "for_s": for_s}, timeout=10).raise_for_status()

        yield SimpleNamespace(url=url, account_sid=account_sid, auth_token=auth_token, meta_token="meta-token",
                              received=received, flap=flap, faults=faults, outage=outage)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
