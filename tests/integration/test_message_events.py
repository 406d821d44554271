"""Issue 22, acceptance 1 (P4, N2, N5): the booking system hears of each message's outcome
exactly once, on Redis and on RabbitMQ.

On PostgreSQL, with SMS through a loopback Twilio API and its signed status callbacks posted to
the web app: a message sent, then delivered (the callback posted twice, and a late `sent` and
a `failed` after it), a message the provider refuses for good, and a planned reminder withdrawn
when the visit is cancelled produce exactly one `message.sent`, `message.delivered`,
`message.failed` and `message.withdrawn`, read back from the broker the way a booking system
reads them: the Redis list `outbound_queue`, or a queue of its own bound to the topic exchange
of that name. Publishing again (the sweep runs every few seconds) publishes nothing twice.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections import Counter
from datetime import timedelta

import pytest
import yaml
from sqlalchemy import select

from notifier.bootstrap import build_channels
from notifier.client import OutboundPublisher
from notifier.domain import outbound
from notifier.fake_providers import FakeProviders
from notifier.services import apply_events, publish_all_outbox
from notifier.store import schema as t
from notifier.web.app import twilio_signature
from tests.conftest import START, TENANTS, api_client, created, customer, event, make_context, make_settings
from tests.unit.test_services import run_due

TENANT = "studio-events"
PUBLIC = "https://notifier.example.org"
REFUSED = "+393471110000"  # a mobile number the provider refuses for good (21211)


def tenant_files(folder) -> None:
    folder.mkdir()
    shutil.copy(TENANTS / "studio-roma.yaml", folder)
    doc = yaml.safe_load((TENANTS / "studio-roma.yaml").read_text())
    doc.update(id=TENANT, message_events=True, settings={
        "info": {"delay_s": 0, "channels": ["sms"]}, "reminder": {"offset_s": 86400, "channels": ["sms"]},
        "confirmation": {"enabled": False}, "feedback": {"enabled": False}, "change": {"enabled": False},
        "cancellation": {"enabled": False}, "staff": {"enabled": False}, "quiet_hours": {"enabled": False}})
    (folder / f"{TENANT}.yaml").write_text(yaml.safe_dump(doc))


@pytest.fixture(params=["redis", "rabbitmq"])
def outbound_broker(request):
    """(settings overrides, read()) of an outbound queue of this test's own on the broker."""
    if request.param == "redis":
        import redis

        prefix = request.getfixturevalue("key_prefix")
        url = request.getfixturevalue("redis_url")
        queue = f"{prefix}.outbound"
        client = redis.Redis.from_url(url)
        yield {"outbound_url": url, "outbound_queue": queue}, lambda: [json.loads(b) for b in client.lrange(queue, 0, -1)]
        client.close()
        return
    from kombu import Connection, Exchange, Queue

    url = request.getfixturevalue("amqp_url")
    name = f"nt{uuid.uuid4().hex[:8]}.outbound"
    exchange = Exchange(name, type="topic", durable=True)
    mine = Queue(f"{name}.booking-system", exchange=exchange, routing_key="message.#", durable=False)
    with Connection(url) as conn:
        mine(conn.default_channel).declare()  # the booking system's queue, bound before anything is published

    def read() -> list[dict]:
        got = []
        with Connection(url) as conn:
            queue = mine(conn.default_channel)
            while (message := queue.get(no_ack=True)) is not None:
                got.append(json.loads(message.body))
        return got

    yield {"outbound_url": url, "outbound_queue": name}, read
    with Connection(url) as conn:
        mine(conn.default_channel).delete()
        exchange(conn.default_channel).delete()


def test_P4_N2_N5_one_outbound_event_per_outcome_duplicated_callbacks_included(tmp_path, pg_url, clock,
                                                                               outbound_broker):
    overrides, read = outbound_broker
    tenant_files(tmp_path / "tenants")
    with FakeProviders() as providers:
        providers.invalid_numbers.add(REFUSED)
        settings = make_settings(tmp_path, database_url=pg_url, tenants_path=tmp_path / "tenants",
                                 twilio_account_sid=providers.account_sid, twilio_auth_token=providers.auth_token,
                                 twilio_from="+4930123456", twilio_api_url=providers.url, public_url=PUBLIC,
                                 **overrides)
        ctx = make_context(settings, channels=build_channels(settings))
        try:
            client = api_client(ctx)
            bookings = [created(b, tenant=TENANT, starts_at=START + timedelta(days=3, hours=6),
                                resource={"id": "giulia", "name": "Giulia", "type": "specialist"},
                                cust=customer(f"c-{b}", language="it", email=None, phone=phone,
                                              consents={"sms": True}))
                        for b, phone in (("delivered", "+39 347 123 4567"), ("refused", REFUSED))]
            apply_events(ctx.store, [json.dumps(b) for b in bookings], now=START, source="test")
            assert run_due(ctx) == {**run_due_zero(), "sent": 1, "failed": 1}
            ids = message_ids(ctx)
            sid = provider_id(ctx, ids["delivered", "info"])
            form = {"MessageSid": sid, "MessageStatus": "delivered"}
            for status in ("delivered", "delivered", "sent", "failed"):  # twice, then late or contradicting news
                form = {"MessageSid": sid, "MessageStatus": status}
                signature = twilio_signature(providers.auth_token, PUBLIC + "/callbacks/twilio", form)
                assert client.post("/callbacks/twilio", data=form,
                                   headers={"X-Twilio-Signature": signature}).status_code == 204
            apply_events(ctx.store, [json.dumps(event("booking.cancelled", {"booking_id": "delivered", "by": "staff"},
                                                      tenant=TENANT, revision=2))], now=START, source="test")
            publisher = OutboundPublisher(ctx.settings)
            assert publish_all_outbox(ctx.store, publisher, now=START) >= 4
            assert publish_all_outbox(ctx.store, publisher, now=START) == 0  # the next sweep: nothing again
        finally:
            ctx.close()
    received = [e for e in read() if e["type"].startswith("message.")]
    assert Counter((e["type"], e["data"]["message_id"]) for e in received) == Counter({
        ("message.sent", ids["delivered", "info"]): 1, ("message.delivered", ids["delivered", "info"]): 1,
        ("message.failed", ids["refused", "info"]): 1, ("message.withdrawn", ids["delivered", "reminder"]): 1})
    for e in received:
        outbound.validate(e)
        assert e["tenant_id"] == TENANT
    failed = next(e["data"] for e in received if e["type"] == "message.failed")
    assert failed["code"] == "400" and "21211" in failed["reason"] and failed["channel"] == "sms"
    assert len({e["event_id"] for e in received}) == len(received)


def run_due_zero() -> dict[str, int]:
    from notifier.dispatch import DispatchReport

    return vars(DispatchReport())


def message_ids(ctx) -> dict[tuple[str, str], int]:
    m = t.messages.c
    with ctx.store.engine.connect() as conn:
        return {(r.booking_id, r.kind): r.id for r in conn.execute(select(m.booking_id, m.kind, m.id))}


def provider_id(ctx, message_id: int) -> str:
    m = t.messages.c
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(m.provider_message_id).where(m.id == message_id)).scalar_one()
