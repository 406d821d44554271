"""Booking systems bound to tenants (docs/security.md, "Producers").

Each booking system ("producer") publishes on a queue of its own, bound to the tenants it may
speak for, and the broker enforces it:
- Redis: the list `<events_queue>.<producer>`; the producer's ACL user may push to that key and
  run nothing else (`redis_acl_rules`).
- RabbitMQ: the events exchange with routing keys `<producer>.<event type>`; the producer's
  user may write to that exchange only, with topic permissions limiting its routing keys to its
  own prefix (`rabbitmq_grants`), and may configure and read nothing.
The ingester checks it again: an event whose tenant is not bound to the queue (or routing key)
it came by is a dead letter with that reason. The shared queue (`events_queue`, any tenant)
stays for one-tenant installs and the operator's own tools; `events_shared = false` stops it.

Bindings are settings, so every ingester knows them at start:
`producers = "salon-crm=salon-berlin,salon-munich; roma-app=studio-roma"` (or a TOML table).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# the first words of the event types: a producer of that name would read as an unbound routing key
RESERVED = frozenset({"booking", "customer", "resource", "tenant"})


@dataclass(frozen=True)
class Binding:
    """What a queue or routing key may speak for: `label` names it in a dead letter's reason."""

    label: str
    tenants: frozenset[str]

    def refuses(self, tenant_id: str) -> str | None:
        if tenant_id in self.tenants:
            return None
        return f"tenant {tenant_id!r} is not bound to {self.label}"


def parse_producers(text: str) -> dict[str, frozenset[str]]:
    """"a=t1,t2; b=t3" as {producer: tenants}; ValueError naming what is wrong."""
    out: dict[str, frozenset[str]] = {}
    for item in (part.strip() for part in text.split(";")):
        if not item:
            continue
        name, sep, tenants = (s.strip() for s in item.partition("="))
        bound = frozenset(t.strip() for t in tenants.split(",") if t.strip())
        if not sep or not bound:
            raise ValueError(f"{item!r}: expected producer=tenant[,tenant...]")
        if not NAME.match(name) or name in RESERVED:
            raise ValueError(f"{name!r} is not a producer name (a-z, 0-9, - and _; not {', '.join(sorted(RESERVED))})")
        if name in out:
            raise ValueError(f"{name!r} is named twice")
        out[name] = bound
    return out


def producer_queue(events_queue: str, producer: str) -> str:
    """The Redis list a producer pushes to."""
    return f"{events_queue}.{producer}"


def routing_binding(routing_key: str, producers: dict[str, frozenset[str]], *, shared: bool) -> Binding | None:
    """What an AMQP message may speak for, by its routing key: a producer's tenants, any tenant
    (None) on the shared path, or nothing when the shared path is off."""
    first = routing_key.split(".", 1)[0]
    if first in producers:
        return Binding(f"producer {first!r}", producers[first])
    if shared:
        return None
    return Binding(f"routing key {routing_key!r} (no producer of that name, and events_shared is off)", frozenset())


def redis_acl_rules(events_queue: str, producer: str) -> list[str]:
    """The ACL rules of a producer's Redis user: push to its own list, nothing else."""
    return ["resetkeys", f"~{producer_queue(events_queue, producer)}", "resetchannels", "-@all", "+rpush", "+lpush",
            "+ping", "+select"]


def rabbitmq_grants(events_url: str, exchange: str, producer: str, user: str) -> list[list[str]]:
    """`rabbitmqctl` argument lists giving a producer's user its routing keys on the events
    exchange, and nothing else (no queues, no declarations, no reading)."""
    path = urlsplit(events_url).path
    vhost = unquote(path[1:]) if len(path) > 1 else "/"
    return [["set_permissions", "-p", vhost, user, "^$", f"^{re.escape(exchange)}$", "^$"],
            ["set_topic_permissions", "-p", vhost, user, exchange, f"^{re.escape(producer)}\\.", "^$"]]
