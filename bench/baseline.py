"""The baseline the benchmarks compare against: plain Celery, one task per event or message.

Configured from the environment (BENCH_BROKER_URL, BENCH_DATABASE_URL, BENCH_KEY_PREFIX) so
`celery -A bench.baseline worker` runs it as a separate process, as it would be deployed.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from functools import cache

from celery import Celery

app = Celery("bench-baseline")
app.conf.update(
    broker_url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"),
    broker_transport_options={"global_keyprefix": os.environ.get("BENCH_KEY_PREFIX", "bench")},
    task_ignore_result=True, task_acks_late=True, worker_prefetch_multiplier=16,
    task_serializer="json", accept_content=["json"], task_default_queue="baseline",
    worker_hijack_root_logger=False,
)
NOW = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


@cache
def _store():
    from notifier.store.sql import Store, make_engine

    return Store(make_engine(os.environ["BENCH_DATABASE_URL"]))


@app.task(name="bench.apply_event")
def apply_event(body: str) -> None:
    """What a team without batching would write: one event, one task, one transaction."""
    from notifier.services import apply_events

    apply_events(_store(), [body], now=NOW, source="baseline")


_building = threading.Lock()


@cache
def _built_context():
    from notifier.bootstrap import build

    return build()


def _context():
    """One context per worker process: 64 threads asking at once must not build 64 (each with
    its own connection pool: PostgreSQL ran out of connections)."""
    with _building:
        return _built_context()


@app.task(name="bench.send_message")
def send_message(message_id: int) -> None:
    """One message, one task: render, send, record."""
    from notifier.dispatch import send_one

    send_one(_context(), message_id)
