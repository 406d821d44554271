"""Prometheus metrics of the ingester, the Celery workers and beat.

Nothing is created at import time: `metrics()` builds the collectors on first use, and
`serve()` starts a process's `/metrics` endpoint. A prefork worker runs its tasks in
child processes; they write their samples to files in PROMETHEUS_MULTIPROC_DIR and the
parent's endpoint adds them up (`prepare_multiprocess()` must run before prometheus_client
is imported, i.e. before `metrics()` or `serve()`).

The names are part of the operations contract (deploy/grafana-dashboard.json and the
alerts in docs/operations.md use them):

| metric | labels | from |
| --- | --- | --- |
| notifier_ingest_events_total | outcome: applied, duplicate, stale, held, dead | ingester |
| notifier_ingest_batch_seconds (histogram) | | ingester: apply + commit of one batch |
| notifier_ingest_batch_events (histogram) | | ingester |
| notifier_ingest_last_batch_timestamp_seconds | | ingester |
| notifier_not_planned_total | reason, kind | ingester, worker, web: `message.not_planned` entries written (each once per booking) |
| notifier_sends_total | channel, outcome: sent, temporary, permanent, error | worker: provider calls |
| notifier_send_seconds (histogram) | channel | worker: one provider call |
| notifier_provider_sends_total | channel, account, outcome | worker: provider calls by provider account (which one carried each message) |
| notifier_provider_cooldowns_total | channel, account | worker: an account found down and skipped for its cool-down (notifier/failover.py) |
| notifier_dispatch_messages_total | channel, outcome: sent, failed, retried, withdrawn, skipped, ... | worker |
| notifier_task_seconds (histogram) | task | worker |
| notifier_task_failures_total | task | worker: a task that raised |
| notifier_sweep_claimed_total | | worker: due messages handed to the channel queues |
| notifier_sweep_state_changes_total | | worker: markers lit, slots released |
| notifier_beat_sent_total | task | beat |
| notifier_beat_last_sent_timestamp_seconds | task | beat |
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEND_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TASK_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
INGEST_OUTCOMES = {"applied": "applied", "duplicates": "duplicate", "stale": "stale", "held": "held",
                   "dead": "dead"}


@dataclass(frozen=True)
class Metrics:
    ingest_events: Any
    ingest_batch_seconds: Any
    ingest_batch_events: Any
    ingest_last_batch: Any
    sends: Any
    send_seconds: Any
    dispatch_messages: Any
    task_seconds: Any
    task_failures: Any
    sweep_claimed: Any
    sweep_state_changes: Any
    beat_sent: Any
    beat_last_sent: Any
    parked: Any
    not_planned: Any
    provider_sends: Any
    provider_cooldowns: Any


_building = threading.Lock()


def metrics() -> Metrics:
    """The process's collectors, in prometheus_client's default registry. Sender threads ask
    at once: the first builds them while the others wait (a second build would register the
    same series twice)."""
    global _built
    built = _built
    if built is not None:  # every provider call asks: no lock to queue on once they are there
        return built
    with _building:
        if _built is None:
            _built = _metrics()
        return _built


_built: Metrics | None = None


def _metrics() -> Metrics:
    from prometheus_client import Counter, Gauge, Histogram

    return Metrics(
        ingest_events=Counter("notifier_ingest_events", "Events taken from the broker, by outcome.", ["outcome"]),
        ingest_batch_seconds=Histogram("notifier_ingest_batch_seconds",
                                       "Time to apply and commit one batch of events.", buckets=BATCH_BUCKETS_S),
        ingest_batch_events=Histogram("notifier_ingest_batch_events", "Events per batch.",
                                      buckets=BATCH_SIZE_BUCKETS),
        ingest_last_batch=Gauge("notifier_ingest_last_batch_timestamp_seconds",
                                "Unix time of the last committed batch.", multiprocess_mode="max"),
        sends=Counter("notifier_sends", "Provider calls, by channel and outcome.", ["channel", "outcome"]),
        send_seconds=Histogram("notifier_send_seconds", "Duration of one provider call.", ["channel"],
                               buckets=SEND_BUCKETS_S),
        dispatch_messages=Counter("notifier_dispatch_messages",
                                  "Messages a dispatch task handled, by channel and outcome.", ["channel", "outcome"]),
        task_seconds=Histogram("notifier_task_seconds", "Celery task duration.", ["task"], buckets=TASK_BUCKETS_S),
        task_failures=Counter("notifier_task_failures", "Celery tasks that raised.", ["task"]),
        sweep_claimed=Counter("notifier_sweep_claimed", "Due messages the sweep handed to channel queues."),
        sweep_state_changes=Counter("notifier_sweep_state_changes", "Markers and releases the state sweep applied."),
        beat_sent=Counter("notifier_beat_sent", "Tasks beat published.", ["task"]),
        beat_last_sent=Gauge("notifier_beat_last_sent_timestamp_seconds", "Unix time beat last published a task.",
                             ["task"], multiprocess_mode="max"),
        parked=Counter("notifier_parked", "Bookings, held events, messages and message records a loop set aside "
                       "with their reason (on the timeline) so that the rest went on, by loop.", ["loop"]),
        not_planned=Counter("notifier_not_planned", "Message kinds planning left out for a booking, recorded on "
                            "its timeline (once per booking and reason), by reason and kind.", ["reason", "kind"]),
        provider_sends=Counter("notifier_provider_sends", "Provider calls by channel, provider account and outcome.",
                               ["channel", "account", "outcome"]),
        provider_cooldowns=Counter("notifier_provider_cooldowns", "Provider accounts found down and skipped for "
                                   "their cool-down, by channel and account.", ["channel", "account"]),
    )


def count_not_planned(counts: dict[tuple[str, str], int]) -> None:
    """What a committed transaction recorded as not planned, by (reason, kind)."""
    if counts:
        m = metrics()
        for (reason, kind), n in counts.items():
            m.not_planned.labels(reason, kind).inc(n)


# --- the endpoint ------------------------------------------------------------------------------

def prepare_multiprocess(folder: str | None = None) -> Path:
    """Use (and empty) a folder for the samples of forked children; call before prometheus_client is imported.

    Without a folder (argument or PROMETHEUS_MULTIPROC_DIR) a temporary one is made, and removed
    when this process exits (not when a forked child does)."""
    given = folder or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = Path(given or tempfile.mkdtemp(prefix="notifier-metrics-"))
    if path.exists():
        for stale in path.glob("*.db"):
            stale.unlink()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    if not given:
        owner = os.getpid()
        atexit.register(lambda: os.getpid() == owner and shutil.rmtree(path, ignore_errors=True))
    return path


def serve(port: int, host: str = "127.0.0.1", *, multiprocess: bool = False) -> Any:
    """Start the `/metrics` HTTP endpoint in a daemon thread; returns the server."""
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

    registry = REGISTRY
    if multiprocess:
        from prometheus_client import multiprocess as mp

        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)
    metrics()
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


# --- ingester --------------------------------------------------------------------------------

class MeteredSource:
    """A `Source` that times each batch from its arrival to its acknowledgement (after the commit)."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.name = source.name

    def fetch(self, max_n: int, wait_s: float, block_s: float) -> Any:
        batch = self.source.fetch(max_n, wait_s, block_s)
        if batch is None:
            return None
        started, ack, keep = time.perf_counter(), batch.ack, batch.keep
        m = metrics()

        def observe(settled: int) -> None:
            m.ingest_batch_seconds.observe(time.perf_counter() - started)
            m.ingest_batch_events.observe(settled)
            m.ingest_last_batch.set(time.time())

        def timed_ack() -> None:
            ack()
            observe(len(batch.bodies))

        def timed_keep(positions: list[int]) -> None:
            keep(positions)
            observe(len(batch.bodies) - len(positions))

        batch.ack = timed_ack
        if keep is not None:
            batch.keep = timed_keep
        return batch

    def close(self) -> None:
        self.source.close()


def count_ingested(report: Any) -> None:
    """`on_batch` callback of `notifier.ingest.run`: events by outcome."""
    m = metrics()
    for field, outcome in INGEST_OUTCOMES.items():
        value = getattr(report, field, 0)
        if value:
            m.ingest_events.labels(outcome).inc(value)


# --- workers ---------------------------------------------------------------------------------

class MeteredChannel:
    """A channel adapter that counts and times each provider call; everything else passes through."""

    def __init__(self, channel: str, adapter: Any, account: str = "") -> None:
        self._channel, self._adapter = channel, adapter
        self.name = getattr(adapter, "name", channel)
        self.account = account or getattr(adapter, "provider", "") or channel  # who carried it
        self._series: dict[str, tuple[Any, Any, Any]] = {}  # outcome -> its three series

    def _count(self, outcome: str, seconds: float) -> None:
        """One call in the series, each looked up once (prometheus_client takes a lock per lookup)."""
        series = self._series.get(outcome)
        if series is None:
            m = metrics()
            series = self._series[outcome] = (m.sends.labels(self._channel, outcome),
                                              m.provider_sends.labels(self._channel, self.account, outcome),
                                              m.send_seconds.labels(self._channel))
        series[0].inc()
        series[1].inc()
        series[2].observe(seconds)

    def send(self, message: Any) -> Any:
        from notifier.channels.base import PermanentFailure, TemporaryFailure

        started = time.perf_counter()
        outcome = "error"
        try:
            result = self._adapter.send(message)
            outcome = "sent"
            return result
        except TemporaryFailure:
            outcome = "temporary"
            raise
        except PermanentFailure:
            outcome = "permanent"
            raise
        finally:
            self._count(outcome, time.perf_counter() - started)

    def close(self) -> None:
        self._adapter.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)


def metered_channels(channels: dict[Any, Any], *, account: str = "") -> dict[Any, Any]:
    return {channel: MeteredChannel(getattr(channel, "value", str(channel)), adapter, account)
            for channel, adapter in channels.items()}


def connect_worker_signals() -> None:
    """Task durations, failures and outcomes, recorded in the process that ran the task."""
    from celery.signals import task_failure, task_postrun, task_prerun

    started: dict[str, float] = {}

    @task_prerun.connect(weak=False)
    def _prerun(task_id: str, **_: Any) -> None:
        started[task_id] = time.perf_counter()

    @task_postrun.connect(weak=False)
    def _postrun(task_id: str, task: Any, args: tuple = (), retval: Any = None, state: str | None = None,
                 **_: Any) -> None:
        m = metrics()
        began = started.pop(task_id, None)
        if began is not None:
            m.task_seconds.labels(task.name).observe(time.perf_counter() - began)
        if task.name == "notifier.dispatch_batch" and isinstance(getattr(retval, "counts", None), dict):
            retval, state = retval.counts, "SUCCESS"  # MessagesFailed: the batch ran; some failed for good
        if state != "SUCCESS":
            return
        if task.name == "notifier.dispatch_batch" and isinstance(retval, dict) and args:
            for outcome, count in retval.items():  # the task's DispatchReport, field by field
                if isinstance(count, int) and count > 0:
                    m.dispatch_messages.labels(str(args[0]), outcome).inc(count)
        elif task.name == "notifier.sweep_due" and isinstance(retval, int):
            m.sweep_claimed.inc(retval)
        elif task.name == "notifier.sweep_states" and isinstance(retval, int):
            m.sweep_state_changes.inc(retval)

    @task_failure.connect(weak=False)
    def _failure(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
        if exception is not None and isinstance(exception, getattr(sender, "throws", ()) or ()):
            return  # an expected outcome (a batch with failed messages): counted by outcome, not as a task's error
        metrics().task_failures.labels(getattr(sender, "name", "unknown")).inc()


def connect_beat_signals(clock: Callable[[], float] = time.time) -> None:
    """What beat published, and when it last did (a silent beat is an alert)."""
    from celery.signals import before_task_publish

    @before_task_publish.connect(weak=False)
    def _published(sender: str | None = None, **_: Any) -> None:
        m = metrics()
        task = sender or "unknown"
        m.beat_sent.labels(task).inc()
        m.beat_last_sent.labels(task).set(clock())
