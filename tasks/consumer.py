"""The worker's consumer (Celery's `worker_consumer`): Celery's own, whose Redis connection treats
a channel of a closed connection as the outage it is (finding K1, docs/reliability.md).

A worker exited (status 0) when Redis crashed and came back a second later with batches in
flight (celery 5.7.0, kombu 5.7.0, redis-py 8.2.0; no later release changes it). On a connection
error Celery 5.7 closes the broken connection (`Consumer.on_connection_error_after_connected`:
`collect()`, then `close()`). In `collect()` the task channel, waiting in BRPOP, fails on the dead
socket before it counts as closed (the error is swallowed), the transport's closing of its
channels stops at the next one's ConnectionError, and kombu still drops the transport's broker
address (`transport.client = None`). `close()` then closes the task channel again, which restores
the batches' unacknowledged deliveries through a new Redis pool built from that address:
`AttributeError: 'NoneType' object has no attribute 'hostname'` in `_connparams`. Neither kombu
(`maybe_close_channel`, `ignore_errors`) nor Celery counts an AttributeError as a connection
error, so the worker shut down ("Unrecoverable error").
Guarding the close alone is not enough: a batch still running finishes after the reconnect and
acknowledges through the same old channel, and fails the same way in the event loop.

`RedisChannel` says what the situation is: a channel whose connection has been closed raises
redis's `ConnectionError` instead of reading a broker address that is no longer there. kombu and
Celery already handle that error at each of these places: the close goes on, the worker
reconnects, and an acknowledgement that cannot be made is logged ("Couldn't ack") and left. The
message stays in Redis's unacked set, and kombu restores it after the visibility timeout; the
task it carries then finds its messages sent and claims nothing (the database says what is due
and what was sent, N1 N2). A channel of a live connection is not affected.
"""

from __future__ import annotations

from typing import Any

import redis
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.transport import redis as kombu_redis


class RedisChannel(kombu_redis.Channel):
    """kombu's Redis channel; once its connection is closed, a connection error, not an AttributeError."""

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        transport = self.connection  # kombu sets it to None when it closes the channel properly
        if transport is None or transport.client is None:
            raise redis.exceptions.ConnectionError("this channel's connection to the broker is closed")
        return super()._connparams(asynchronous=asynchronous)


class Consumer(CeleryConsumer):
    """Celery's consumer; its connection to a Redis broker makes its channels as `RedisChannel`."""

    def connection_for_read(self, heartbeat: float | None = None) -> Any:
        connection = self.app.connection_for_read(heartbeat=heartbeat)
        # every channel of this connection is made by `transport.Channel(...)`; set here, before
        # the first, it changes this connection only (not its URL, its logs, beat's or the web app's)
        if type(connection.transport) is kombu_redis.Transport:
            connection.transport.Channel = RedisChannel
        return self.ensure_connected(connection)
