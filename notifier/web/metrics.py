"""`/metrics` of the web process: what the store and the broker say, read at scrape time.

A custom collector rather than counters kept in memory: the messages were sent by worker
processes, claimed by beat's sweep, confirmed through this process or another replica;
reading the store when Prometheus asks makes the figures true whichever process did the work,
and a restarted web process loses nothing. Each query is index-driven and bounded (see
notifier/views.py), so a scrape costs what is late or recent, not the size of the tables.

The worker, ingester and beat processes have their own in-process counters (provider calls,
task durations: notifier/observability/metrics.py); these names do not overlap them.

| metric | type | labels | meaning |
| --- | --- | --- | --- |
| notifier_queue_lag_seconds | gauge | | age of the oldest message that is due and not sent (0: none) |
| notifier_due_unsent_messages | gauge | state | due, not sent: planned (waiting for the sweep), queued, sending |
| notifier_celery_queue_length | gauge | queue | tasks waiting in each Celery queue (Redis brokers: list lengths) |
| notifier_send_lateness_seconds | gauge histogram | channel | sent_at - due_at of the messages sent in the window |
| notifier_recent_sends | gauge | channel, status | messages with a send attempt in the window, by delivery status now |
| notifier_metrics_source_up | gauge | source | 1 when the store / broker answered this scrape |

The window is `WINDOW_S` (15 minutes). Lateness is a gauge histogram: its buckets describe the
window, so quantiles come straight from them, e.g.
`histogram_quantile(0.95, sum by (le) (notifier_send_lateness_seconds_bucket))`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from notifier import views
from notifier.domain.model import Channel, MessageState

log = logging.getLogger("notifier.web.metrics")
WINDOW_S = 900.0
SEND_STATUSES = (MessageState.SENT.value, MessageState.DELIVERED.value, MessageState.READ.value,
                 MessageState.FAILED.value)


def celery_queues() -> tuple[str, ...]:
    from tasks.celery_app import ALL_QUEUES  # the one table of queue names (opens nothing)

    return tuple(ALL_QUEUES)


def redis_queue_lengths(settings: Any, queues: tuple[str, ...]) -> dict[str, int]:
    """LLEN of each queue's lists, as kombu's Redis transport lays them out: the queue's name
    under the broker key prefix, plus one list per priority step ("name\\x06\\x16N")."""
    import redis
    from kombu.transport.redis import PRIORITY_STEPS
    from kombu.transport.redis import Channel as RedisChannel

    prefix, sep = settings.broker_key_prefix, RedisChannel.sep
    client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            for step in PRIORITY_STEPS:
                pipe.llen(f"{prefix}{queue}{sep}{step}" if step else f"{prefix}{queue}")
        lengths = pipe.execute()
    finally:
        client.close()
    steps = len(PRIORITY_STEPS)
    return {queue: int(sum(lengths[i * steps:(i + 1) * steps])) for i, queue in enumerate(queues)}


class StoreCollector(Collector):
    def __init__(self, ctx: Any, *, window_s: float = WINDOW_S) -> None:
        self.ctx = ctx
        self.window_s = window_s

    def describe(self) -> list:
        return []  # read at scrape time only: registering must not query the store

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("notifier_metrics_source_up", "1 when the source answered this scrape.",
                               labels=["source"])
        try:
            yield from list(self._store_metrics())  # all read before any is given: no half answers
            up.add_metric(["store"], 1)
        except Exception as exc:  # noqa: BLE001 - a scrape reports the outage, it does not fail
            log.warning("metrics: store unavailable: %s", exc.__class__.__name__)
            up.add_metric(["store"], 0)
        if self.ctx.settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
            try:
                yield from list(self._queue_metrics())
                up.add_metric(["broker"], 1)
            except Exception as exc:  # noqa: BLE001
                log.warning("metrics: broker unavailable: %s", exc.__class__.__name__)
                up.add_metric(["broker"], 0)
        yield up

    def _store_metrics(self) -> Iterator[Any]:
        store, now = self.ctx.store, self.ctx.clock.now()
        waiting = views.backlog(store, now=now)
        late = views.lateness(store, now=now, window_s=self.window_s)
        sends = views.recent_sends(store, now=now, window_s=self.window_s)

        lag = GaugeMetricFamily("notifier_queue_lag_seconds",
                                "Age of the oldest message that is due and not sent yet (0 when none is).")
        lag.add_metric([], max(0.0, (now - waiting.oldest_due_at).total_seconds()) if waiting.oldest_due_at else 0.0)
        yield lag
        due = GaugeMetricFamily("notifier_due_unsent_messages",
                                "Messages due and not sent: planned (the sweep has not claimed them), queued "
                                "(handed to a channel queue), sending (a worker has them).", labels=["state"])
        for state, count in sorted(waiting.counts.items()):
            due.add_metric([state], count)
        yield due

        hist = GaugeHistogramMetricFamily(
            "notifier_send_lateness_seconds",
            f"Due-to-sent lateness (sent_at - due_at) of the messages sent in the last {self.window_s:g} s.",
            labels=["channel"])
        for entry in late:
            bounds = [*(floatToGoString(b) for b in views.LATENESS_BUCKETS_S), "+Inf"]
            hist.add_metric([entry.channel], list(zip(bounds, entry.buckets, strict=True)), entry.sum_s)
        yield hist

        recent = GaugeMetricFamily(
            "notifier_recent_sends",
            f"Messages with a send attempt in the last {self.window_s:g} s, by channel and delivery status now.",
            labels=["channel", "status"])
        for channel in Channel:  # every series present, so a drop to zero is seen as zero
            for status in SEND_STATUSES:
                recent.add_metric([channel.value, status], sends.get((channel.value, status), 0))
        for (channel, status), count in sorted(sends.items()):
            if status not in SEND_STATUSES:  # e.g. planned again: a retry is waiting
                recent.add_metric([channel, status], count)
        yield recent

    def _queue_metrics(self) -> Iterator[Any]:
        lengths = redis_queue_lengths(self.ctx.settings, celery_queues())
        family = GaugeMetricFamily("notifier_celery_queue_length", "Tasks waiting in a Celery queue (Redis list "
                                   "lengths, all priorities).", labels=["queue"])
        for queue, length in lengths.items():
            family.add_metric([queue], length)
        yield family
