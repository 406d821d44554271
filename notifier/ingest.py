"""The ingester: consumes raw JSON events from the broker and applies them in batches.

Sources (chosen by the URL in `events_url`):
- `redis://...`: a plain Redis list (`RPUSH notifier.events '<json>'` from any language).
  Reliable-queue pattern: events move atomically (LMOVE, or a script moving many at
  once) to this consumer's own processing list and are deleted from it only after the batch is committed. A
  consumer that died leaves its processing list behind; live consumers notice its
  heartbeat is gone and move the events back to the main list.
- `amqp://...` and kombu's other transports ("embedded" = SQLite): a queue bound
  to a topic exchange, routed by event type; the consumer acks after commit.

Producers bound to tenants (notifier/producers.py): on Redis each has a list of its own, which
`RedisListsSource` consumes beside the shared one; on AMQP the routing key names the producer.
Each body of a batch carries the `Binding` it arrived by, and an event for a tenant outside it
is a dead letter (services.apply_events).

A batch is whatever arrives within `ingest_batch_wait_s` of the first event, up to
`ingest_batch_max`: a lone event waits at most that long. A database error leaves the
batch unacknowledged; the loop backs off and applies the same batch again (N1). A broker
outage (Redis restarting, RabbitMQ gone) is waited out the same way: the loop backs off and
fetches again; a batch whose acknowledgement failed is fetched again and its events are
recognised by `event_id` (N2).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.exc import DBAPIError

from notifier.producers import Binding, producer_queue, routing_binding
from notifier.services import IngestReport, apply_events, release_expired_holds

log = logging.getLogger("notifier.ingest")
DEFER_ROUNDS = 10  # batches an event may be left in before its locks are waited for (a backstop; measured: 3 cost a fifth of bench ingest)


@dataclass
class Batch:
    bodies: list[bytes]
    ack: Callable[[], None]  # all applied: the broker may forget them
    # applied but for these positions, which stay with this consumer and open its next batch
    keep: Callable[[list[int]], None] | None = None
    # per body, the tenants the queue it came by may speak for (None: any; no list: all None)
    bound: list[Binding | None] | None = None


class Source(Protocol):
    name: str

    def fetch(self, max_n: int, wait_s: float, block_s: float) -> Batch | None: ...

    def close(self) -> None: ...


# Moves up to ARGV[1] events from the head of the list KEYS[1] to the tail of KEYS[2] at once
# and returns them: what LMOVE does for one, atomically for many (a Redis script runs alone),
# in one round trip and a fraction of the server's work of one command per event.
_MOVE_MANY = """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items > 0 then
  redis.call('LTRIM', KEYS[1], #items, -1)
  for i = 1, #items, 1000 do
    redis.call('RPUSH', KEYS[2], unpack(items, i, math.min(i + 999, #items)))
  end
end
return items
"""


class RedisListSource:
    """Events pushed onto a Redis list by the booking system, consumed reliably."""

    HEARTBEAT_S = 15

    def __init__(self, url: str, queue: str, consumer: str, binding: Binding | None = None) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.queue = queue
        self.binding = binding
        self.consumer = consumer
        self.processing = f"{queue}:processing:{consumer}"
        self.name = f"redis:{queue}"
        self._last_beat = 0.0
        self._move_many = self.client.register_script(_MOVE_MANY)

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_beat < self.HEARTBEAT_S / 3:
            return
        self._last_beat = now
        self.client.set(f"{self.queue}:alive:{self.consumer}", "1", ex=self.HEARTBEAT_S)
        self.recover_orphans()

    def recover_orphans(self) -> int:
        """Move events held by consumers that stopped beating back to the main list."""
        moved = 0
        prefix = f"{self.queue}:processing:"
        for key in self.client.scan_iter(match=f"{prefix}*", count=100):
            owner = key.decode()[len(prefix):]
            if owner == self.consumer or self.client.exists(f"{self.queue}:alive:{owner}"):
                continue
            while self.client.lmove(key, self.queue, "RIGHT", "LEFT") is not None:
                moved += 1
        if moved:
            log.warning("recovered %d events from stopped consumers", moved)
        return moved

    def fetch(self, max_n: int, wait_s: float, block_s: float) -> Batch | None:
        self._heartbeat()
        # events kept from the last batch (or left by our own crash) come first, topped up from the queue
        held = self.client.lrange(self.processing, 0, -1)
        if held:
            if len(held) < max_n:
                held.extend(self._move_many(keys=[self.queue, self.processing], args=[max_n - len(held)]))
        else:
            first = self.client.blmove(self.queue, self.processing, block_s, "LEFT", "RIGHT")
            if first is None:
                return None
            held = [first]
            deadline = time.monotonic() + wait_s
            while len(held) < max_n:
                got = self._move_many(keys=[self.queue, self.processing], args=[max_n - len(held)])
                held.extend(got)
                if len(held) >= max_n or time.monotonic() >= deadline:
                    break
                if not got:
                    time.sleep(min(0.005, max(deadline - time.monotonic(), 0)))
        return self._batch(held)

    def fetch_now(self, max_n: int) -> Batch | None:
        """What is held or waiting, up to `max_n`, without blocking (RedisListsSource)."""
        self._heartbeat()
        held = self.client.lrange(self.processing, 0, max_n - 1)
        if len(held) < max_n:
            held.extend(self._move_many(keys=[self.queue, self.processing], args=[max_n - len(held)]))
        return self._batch(held) if held else None

    def _batch(self, held: list[bytes]) -> Batch:
        bodies = list(held)

        def keep(positions: list[int]) -> None:  # one MULTI: the processing list becomes what is kept
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(self.processing)
            pipe.rpush(self.processing, *(bodies[i] for i in positions))
            pipe.execute()

        bound = [self.binding] * len(bodies) if self.binding is not None else None
        return Batch(bodies=bodies, ack=lambda: self.client.delete(self.processing), keep=keep, bound=bound)

    def close(self) -> None:
        self.client.delete(f"{self.queue}:alive:{self.consumer}")
        self.client.close()


class RedisListsSource:
    """Several Redis lists (the shared one, one per producer), each consumed reliably as
    `RedisListSource` does; a batch takes what the lists hold, in turn, up to its size. No
    command blocks on several lists and moves atomically, so an idle source looks again every
    POLL_S: a lone event waits at most that long."""

    POLL_S = 0.05

    def __init__(self, sources: list[RedisListSource]) -> None:
        self.sources = sources
        self.name = "redis:" + ",".join(s.queue for s in sources)
        self._turn = 0

    def fetch(self, max_n: int, wait_s: float, block_s: float) -> Batch | None:
        deadline = time.monotonic() + block_s
        while True:
            taken: list[Batch] = []
            room = max_n
            for step in range(len(self.sources)):  # who goes first rotates: no list starves
                if room <= 0:
                    break
                batch = self.sources[(self._turn + step) % len(self.sources)].fetch_now(room)
                if batch is not None:
                    taken.append(batch)
                    room -= len(batch.bodies)
            self._turn = (self._turn + 1) % len(self.sources)
            if taken:
                return _joined(taken)
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(self.POLL_S, max(deadline - time.monotonic(), 0)))

    def close(self) -> None:
        for source in self.sources:
            source.close()


def _joined(batches: list[Batch]) -> Batch:
    """One batch of several sources' batches: acknowledged and kept each by its own source."""
    if len(batches) == 1:
        return batches[0]
    bodies = [body for b in batches for body in b.bodies]
    bound = [binding for b in batches for binding in (b.bound or [None] * len(b.bodies))]
    starts = [0]
    for b in batches[:-1]:
        starts.append(starts[-1] + len(b.bodies))

    def ack() -> None:
        for b in batches:
            b.ack()

    def keep(positions: list[int]) -> None:
        for b, start in zip(batches, starts, strict=True):
            mine = [p - start for p in positions if start <= p < start + len(b.bodies)]
            if mine:
                b.keep(mine)  # type: ignore[misc] - Redis batches always keep
            else:
                b.ack()

    return Batch(bodies=bodies, ack=ack, keep=keep, bound=bound)


class KombuSource:
    """Events on an AMQP queue (or any kombu transport), bound to the events exchange. With
    producers bound to tenants, a message's routing key (`<producer>.<type>`) says which."""

    def __init__(self, url: str, transport_options: dict, queue: str, exchange: str,
                 producers: dict[str, frozenset[str]] | None = None, shared: bool = True) -> None:
        from kombu import Connection, Exchange, Queue

        self.producers = dict(producers or {})
        self.shared = shared

        self.conn = Connection(url, transport_options=transport_options)
        self.exchange = Exchange(exchange, type="topic", durable=True)
        self.queue = Queue(queue, exchange=self.exchange, routing_key="#", durable=True)
        self.name = f"kombu:{queue}"
        self._pending: list = []
        self._consumer = None
        self._prefetch = 0

    def _ensure(self, prefetch: int) -> None:
        if self._consumer is not None:
            return
        self.conn.ensure_connection(max_retries=3)
        channel = self.conn.default_channel
        self.queue(channel).declare()
        self._consumer = self.conn.Consumer([self.queue], on_message=self._pending.append, no_ack=False)
        self._consumer.qos(prefetch_count=prefetch)
        self._consumer.consume()

    def fetch(self, max_n: int, wait_s: float, block_s: float) -> Batch | None:
        self._ensure(max_n)
        self._drain(0.001 if self._pending else block_s)  # events kept from the last batch do not wait
        if not self._pending:
            return None
        deadline = time.monotonic() + wait_s
        while len(self._pending) < max_n and time.monotonic() < deadline:
            if not self._drain(max(deadline - time.monotonic(), 0.001)):
                break
        messages, self._pending[:] = list(self._pending[:max_n]), self._pending[max_n:]

        def ack() -> None:
            for message in messages:
                message.ack()

        def keep(positions: list[int]) -> None:  # unacknowledged, first in the next batch
            kept = set(positions)
            for i, message in enumerate(messages):
                if i not in kept:
                    message.ack()
            self._pending[:0] = [messages[i] for i in sorted(kept)]

        bound = None
        if self.producers or not self.shared:
            bound = [routing_binding(m.delivery_info.get("routing_key") or "", self.producers, shared=self.shared)
                     for m in messages]
        return Batch(bodies=[m.body if isinstance(m.body, bytes) else str(m.body).encode() for m in messages],
                     ack=ack, keep=keep, bound=bound)

    def recover(self) -> None:
        """After a connection error: drop the consumer and connection; the next fetch opens new
        ones. Messages taken but not acknowledged are redelivered by the broker (N1)."""
        try:
            self.close()
        except Exception:  # noqa: BLE001 - the old connection is broken anyway
            pass
        self.conn = self.conn.clone()
        self._consumer = None
        self._pending.clear()

    def _drain(self, timeout: float) -> bool:
        try:
            self.conn.drain_events(timeout=timeout)
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.cancel()
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        self.conn.release()


def open_source(settings) -> Source:
    from notifier.bootstrap import kombu_url

    consumer = settings.ingest_consumer or f"{socket.gethostname()}-{os.getpid()}"
    producers = settings.producer_bindings
    if settings.events_url.startswith(("redis://", "rediss://", "unix://")):
        if not producers:
            return RedisListSource(settings.events_url, settings.events_queue, consumer)
        lists = [RedisListSource(settings.events_url, producer_queue(settings.events_queue, name), consumer,
                                 Binding(f"producer {name!r}", tenants)) for name, tenants in producers.items()]
        if settings.events_shared:
            lists.insert(0, RedisListSource(settings.events_url, settings.events_queue, consumer))
        return RedisListsSource(lists)
    url, options = kombu_url(settings.events_url, settings)
    return KombuSource(url, options, settings.events_queue, settings.events_exchange, producers=producers,
                       shared=settings.events_shared)


def broker_errors() -> tuple[type[BaseException], ...]:
    """What a broker outage raises from a source's fetch or ack: the loop waits and tries again."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        import redis

        errors += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    try:
        from kombu.exceptions import OperationalError

        errors.append(OperationalError)
    except ImportError:  # pragma: no cover - kombu is a dependency
        pass
    return tuple(errors)


def tune_gc() -> None:
    """For a long-running ingester: a batch allocates hundreds of thousands of short-lived,
    acyclic objects (freed by reference counting), and the cyclic collector's default thresholds
    made it walk them, and everything imported, for a sixth of the process's time. What startup
    built is frozen out of its sight and young objects are examined less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def run(ctx, source: Source, *, stop: Callable[[], bool] = lambda: False, idle_exit_s: float | None = None,
        on_batch: Callable[[IngestReport], None] | None = None) -> IngestReport:
    """Consume until `stop()` says so (or nothing arrived for `idle_exit_s`)."""
    s = ctx.settings
    regions = ctx.unavailable  # channels not offered in a region (R6) or without a provider: never planned
    total = IngestReport()
    idle_since = time.monotonic()
    backoff_s = 0.5
    broker_backoff_s = 0.5
    next_hold_check = 0.0
    deferred: dict[bytes, int] = {}  # events left for the next batch: how many batches in a row left them
    outage = broker_errors()
    while not stop():
        if time.monotonic() >= next_hold_check:
            next_hold_check = time.monotonic() + 5.0
            try:
                total.merge(release_expired_holds(ctx.store, now=ctx.clock.now(), hold_s=s.hold_s,
                                                 regions=regions))
            except DBAPIError as exc:
                log.warning("could not release held events: %s", exc.__class__.__name__)
        try:
            batch = source.fetch(s.ingest_batch_max, s.ingest_batch_wait_s, block_s=1.0)
        except outage as exc:  # broker down or restarting: wait, then fetch again (reconnects)
            log.warning("broker unavailable, fetching again in %.1fs: %s", broker_backoff_s,
                        exc.__class__.__name__)
            recover = getattr(source, "recover", None)
            if recover is not None:
                recover()
            time.sleep(broker_backoff_s)
            broker_backoff_s = min(broker_backoff_s * 2, 10.0)
            continue
        broker_backoff_s = 0.5
        if batch is None:
            if idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                break
            continue
        idle_since = time.monotonic()
        # a booking or customer another ingester's batch holds is not waited for: its events open
        # this consumer's next batch. An event left DEFER_ROUNDS times is waited for.
        wait_for_locks = batch.keep is None or any(deferred.get(b, 0) >= DEFER_ROUNDS for b in batch.bodies)
        while True:
            try:
                report = apply_events(ctx.store, batch.bodies, now=ctx.clock.now(), source=source.name,
                                      regions=regions, wait_for_locks=wait_for_locks, bound=batch.bound)
                break
            except DBAPIError as exc:  # database down: keep the batch, back off, try again
                log.warning("database unavailable, retrying batch of %d in %.1fs: %s", len(batch.bodies),
                            backoff_s, exc.__class__.__name__)
                if stop():
                    return total
                time.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 30.0)
        backoff_s = 0.5
        deferred = {batch.bodies[i]: deferred.get(batch.bodies[i], 0) + 1 for i in report.deferred}
        try:
            if report.deferred:
                batch.keep(report.deferred)
            else:
                batch.ack()
        except outage as exc:  # committed but not acknowledged: fetched again, recognised by event_id (N2)
            log.warning("broker unavailable, batch of %d committed but not acknowledged: %s", len(batch.bodies),
                        exc.__class__.__name__)
        total.merge(report)
        if on_batch:
            on_batch(report)
        log.info("applied batch", extra={"applied": report.applied, "duplicates": report.duplicates,
                                         "stale": report.stale, "held": report.held, "dead": report.dead})
    return total


def stop_on_signals() -> Callable[[], bool]:
    flag = {"stop": False}

    def handler(*_: object) -> None:
        flag["stop"] = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return lambda: flag["stop"]


def iter_lines(stream) -> Iterator[str]:
    for line in stream:
        line = line.strip()
        if line:
            yield line
