"""Producers are bound to tenants (issue 16; docs/security.md, "Producers").

On real Redis (ACL users) and real RabbitMQ (users with topic permissions): a booking system
bound to tenant A cannot change tenant B, refused first by the broker (it cannot push to B's
list, nor to the shared one; it cannot publish B's routing keys) and then by the ingester (an
event for B on A's own queue is a dead letter with the reason, and B is untouched). The users
have names of their own and are removed afterwards; the default user and guest are not touched.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from notifier import ingest
from notifier.channels.fake import FakeChannel
from notifier.client import publish
from notifier.domain.model import Channel
from notifier.producers import producer_queue, rabbitmq_grants, redis_acl_rules
from notifier.store import schema as t
from tests.conftest import created, make_context, make_settings, unavailable

A, B = "salon-berlin", "studio-roma"  # tenants; producers "pa" and "pb" speak for one each
BINDINGS = f"pa={A}; pb={B}"


def with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def state(ctx) -> tuple[set[tuple[str, str]], list[str]]:
    with ctx.store.engine.connect() as conn:
        bookings = {(r.tenant_id, r.id) for r in conn.execute(t.bookings.select())}
        reasons = [r.reason for r in conn.execute(t.dead_letters.select())]
    return bookings, reasons


def ingest_all(ctx, settings) -> None:
    source = ingest.open_source(settings)
    try:
        ingest.run(ctx, source, idle_exit_s=1.5)
    finally:
        source.close()


def test_a_redis_producer_for_one_tenant_cannot_change_another(tmp_path, clock, redis_url, key_prefix):
    import redis

    queue = f"{key_prefix}.events"
    settings = make_settings(tmp_path, events_url=redis_url, events_queue=queue, producers=BINDINGS,
                             events_shared="false")
    ctx = make_context(settings, channels={Channel.EMAIL: FakeChannel("email")})
    admin = redis.Redis.from_url(redis_url)
    urls, users = {}, []
    try:
        for name in ("pa", "pb"):
            user, password = f"{key_prefix}-{name}", secrets.token_hex(16)
            admin.execute_command("ACL", "SETUSER", user, "on", f">{password}", *redis_acl_rules(queue, name))
            users.append(user)
            urls[name] = with_user(redis_url, user, password)
        as_a = redis.Redis.from_url(urls["pa"])
        claim_b = json.dumps(created("b-forged", tenant=B))
        # at the broker: A's user can push to A's list only
        for elsewhere in (producer_queue(queue, "pb"), queue):
            with pytest.raises(redis.exceptions.NoPermissionError):
                as_a.rpush(elsewhere, claim_b)
        with pytest.raises(redis.exceptions.NoPermissionError):
            as_a.lrange(producer_queue(queue, "pa"), 0, -1)  # nor read, even its own
        as_a.close()
        # at the ingester: on its own list, A speaks for A, not for B
        publish([created("b-a", tenant=A), claim_b], url=urls["pa"], settings=settings, producer="pa")
        publish([created("b-b", tenant=B)], url=urls["pb"], settings=settings, producer="pb")
        ingest_all(ctx, settings)
        bookings, reasons = state(ctx)
        assert bookings == {(A, "b-a"), (B, "b-b")}
        assert reasons == [f"tenant {B!r} is not bound to producer 'pa'"]
        assert admin.llen(producer_queue(queue, "pa")) == admin.llen(producer_queue(queue, "pb")) == 0
    finally:
        for user in users:
            admin.execute_command("ACL", "DELUSER", user)
        admin.close()
        ctx.close()


@pytest.fixture
def rabbitmqctl(amqp_url):
    if shutil.which("rabbitmqctl") is None:
        unavailable("rabbitmqctl (users and permissions of the local RabbitMQ)", FileNotFoundError("rabbitmqctl"))

    def run(*args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)

    return run


def test_a_rabbitmq_producer_for_one_tenant_cannot_change_another(tmp_path, clock, amqp_url, rabbitmqctl):
    from amqp.exceptions import AccessRefused
    from kombu import Connection, Exchange, Queue

    name = f"nt{uuid.uuid4().hex[:8]}.events"
    settings = make_settings(tmp_path, events_url=amqp_url, events_queue=name, events_exchange=name,
                             producers=BINDINGS, events_shared="false")
    ctx = make_context(settings, channels={Channel.EMAIL: FakeChannel("email")})
    source = ingest.open_source(settings)
    source.fetch(1, 0.0, block_s=0.1)  # the ingester declares the exchange and its queue, bound to "#"
    source.close()
    users = {}
    try:
        for producer in ("pa", "pb"):
            user, password = f"{name}-{producer}", secrets.token_hex(16)
            rabbitmqctl("add_user", user, password)
            users[producer] = with_user(amqp_url, user, password)
            for grant in rabbitmq_grants(amqp_url, name, producer, user):
                rabbitmqctl(*grant)
        claim_b = json.dumps(created("b-forged", tenant=B))
        # at the broker: A's user cannot publish B's routing keys, nor the shared ones
        for routing_key in ("pb.booking.created", "booking.created"):
            with Connection(users["pa"], transport_options={"confirm_publish": True}) as conn:
                with pytest.raises(AccessRefused):
                    conn.Producer().publish(claim_b, exchange=Exchange(name, type="topic", durable=True),
                                            routing_key=routing_key)
        # nor declare or read a queue of its own to see others' events
        with Connection(users["pa"]) as conn, pytest.raises(AccessRefused):
            Queue(f"{name}.spy", exchange=Exchange(name, type="topic"), routing_key="#")(conn.default_channel).declare()
        # at the ingester: with its own routing keys, A speaks for A, not for B
        publish([created("b-a", tenant=A), claim_b], url=users["pa"], settings=settings, producer="pa")
        publish([created("b-b", tenant=B)], url=users["pb"], settings=settings, producer="pb")
        publish([created("b-shared", tenant=A)], settings=settings)  # the shared path is off
        ingest_all(ctx, settings)
        bookings, reasons = state(ctx)
        assert bookings == {(A, "b-a"), (B, "b-b")}
        assert sorted(reasons) == sorted([f"tenant {B!r} is not bound to producer 'pa'",
                                          f"tenant {A!r} is not bound to routing key 'booking.created' (no producer "
                                          "of that name, and events_shared is off)"])
    finally:
        for producer in users:
            rabbitmqctl("delete_user", f"{name}-{producer}")
        with Connection(amqp_url) as conn:
            Queue(name)(conn.default_channel).delete()
            Exchange(name, type="topic")(conn.default_channel).delete()
        ctx.close()
