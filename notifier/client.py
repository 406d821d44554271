"""Publishing events, for Python booking systems, the CLI, tests and the demo.

    from notifier.client import publish
    publish({"event_id": "...", "type": "booking.created", ...}, url="redis://localhost:6379/0")

On Redis an event is one `RPUSH <queue> <json>`; on AMQP it is published to the topic
exchange with the event type as routing key. Other languages do the same with their own
clients (docs/events.md has PHP and redis-cli examples).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from notifier.producers import producer_queue
from notifier.settings import Settings, load_settings


def _body(event: Mapping[str, Any] | str | bytes) -> tuple[bytes, str]:
    if isinstance(event, (str, bytes)):
        raw = event.encode() if isinstance(event, str) else event
        try:
            kind = str(json.loads(raw).get("type", "unknown"))
        except (ValueError, AttributeError):
            kind = "unknown"  # still published: the ingester dead-letters it with the reason
        return raw, kind
    return json.dumps(event, separators=(",", ":"), default=str).encode(), str(event.get("type", "unknown"))


def publish(events: Mapping[str, Any] | str | bytes | Iterable[Mapping[str, Any] | str | bytes], *,
            url: str | None = None, settings: Settings | None = None, producer: str | None = None) -> int:
    """Publish one event or many; returns how many were published. `producer`: as that booking
    system, bound to its tenants (notifier/producers.py): its own Redis list, or routing keys
    `<producer>.<type>` on AMQP, without declaring anything (its user may not)."""
    settings = settings or load_settings()
    url = url or settings.events_url
    if isinstance(events, (Mapping, str, bytes)):
        events = [events]
    bodies = [_body(e) for e in events]
    if url.startswith(("redis://", "rediss://", "unix://")):
        import redis

        client = redis.Redis.from_url(url)
        queue = producer_queue(settings.events_queue, producer) if producer else settings.events_queue
        try:
            for i in range(0, len(bodies), 1000):
                client.rpush(queue, *[b for b, _ in bodies[i:i + 1000]])
        finally:
            client.close()
        return len(bodies)

    from kombu import Connection, Exchange, Queue

    from notifier.bootstrap import kombu_url

    broker, options = kombu_url(url, settings)
    exchange = Exchange(settings.events_exchange, type="topic", durable=True)
    queue = Queue(settings.events_queue, exchange=exchange, routing_key="#", durable=True)
    if producer:  # the exchange exists (the ingester declared it); the broker confirms each publish
        options = {**options, "confirm_publish": True}
    with Connection(broker, transport_options=options) as conn:
        publisher = conn.Producer()
        for body, kind in bodies:
            publisher.publish(body, exchange=exchange, routing_key=f"{producer}.{kind}" if producer else kind,
                              content_type="application/json", content_encoding="utf-8", delivery_mode=2,
                              declare=[] if producer else [queue], retry=not producer)
    return len(bodies)


class OutboundPublisher:
    """Events notifier sends back to the booking system (docs/events.md, "Outbound"): a JSON
    object per event on the Redis list `outbound_queue`, or on the AMQP topic exchange of that
    name with the event type as routing key. `publish_many` sends a page of them over one
    connection (one RPUSH on Redis)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.outbound_url or settings.events_url

    def __call__(self, type_: str, tenant_id: str, payload: dict[str, Any], *, event_id: str | None = None) -> None:
        import uuid

        self.publish_many([(event_id or uuid.uuid4().hex, type_, tenant_id, payload)])

    def publish_many(self, events: list[tuple[str, str, str, dict[str, Any]]]) -> None:
        """(event_id, type, tenant_id, payload) each, in order."""
        if not events:
            return
        bodies = [(type_, json.dumps({"schema_version": 1, "event_id": event_id, "type": type_, "tenant_id": tenant_id,
                                      "data": payload}, separators=(",", ":"), default=str))
                  for event_id, type_, tenant_id, payload in events]
        if self.url.startswith(("redis://", "rediss://", "unix://")):
            import redis

            client = redis.Redis.from_url(self.url)
            try:
                client.rpush(self.settings.outbound_queue, *[body for _, body in bodies])
            finally:
                client.close()
            return
        from kombu import Connection, Exchange

        from notifier.bootstrap import kombu_url

        broker, options = kombu_url(self.url, self.settings)
        exchange = Exchange(self.settings.outbound_queue, type="topic", durable=True)
        with Connection(broker, transport_options=options) as conn:
            producer = conn.Producer()
            for number, (type_, body) in enumerate(bodies):
                producer.publish(body.encode(), exchange=exchange, routing_key=type_,
                                 declare=[exchange] if number == 0 else [], content_type="application/json",
                                 content_encoding="utf-8", retry=True)
