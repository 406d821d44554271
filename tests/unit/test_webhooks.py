"""The staff and activity webhooks (issue 19; R1, R13, R14, R17, R18, R23, R33): what notifier
sends is what docs/events.md and docs/webhooks.schema.json say, and the documented way of
checking the signature accepts it. Every staff kind is produced through events, the sweeps and
dispatch on the embedded store, and received by a webhook server on loopback."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest

from notifier.channels.fake import FakeChannel
from notifier.channels.outbound import parse_networks
from notifier.channels.webhook import STAFF_KINDS, WebhookChannel, json_schema
from notifier.devtools import HttpSink
from notifier.domain.model import Channel
from notifier.inbound import Inbound, receive_reply
from notifier.services import apply_events, sweep_states
from tests.conftest import START, customer, event, make_context, make_settings
from tests.unit.test_services import run_due

DOCS = Path(__file__).resolve().parents[2] / "docs"
TENANT = "clinic-full"  # every kind at its default: staff notices and activities on
RESOURCE = {"id": "dr-weiss", "name": "Dr. Weiss", "type": "specialist"}
VISIT = START + timedelta(days=1, hours=3)  # Wednesday 2 December, 10:00 in Berlin
SECRET = "webhook-secret-for-the-test-0123456789"


def test_the_committed_schema_is_the_generated_one():
    assert json.loads((DOCS / "webhooks.schema.json").read_text()) == json_schema(), "run `make schema`"


def documented_check():
    """The signature check as docs/events.md shows it to a booking system's developer."""
    text = (DOCS / "events.md").read_text(encoding="utf-8")
    section = text[text.index("## Webhooks: staff notices and follow-up activities"):]
    [code] = re.findall(r"```python\n(.*?)```", section[:section.index("\n## ", 5)], re.S)
    scope: dict = {}
    exec(code, scope)  # noqa: S102 - our own documentation's example
    return scope["genuine"]


@pytest.fixture
def hooks():
    with HttpSink() as sink:
        yield sink


@pytest.fixture
def wired(tmp_path, clock, hooks):
    settings = make_settings(tmp_path, staff_webhook_url=hooks.url, webhook_secret=SECRET,
                             webhook_allowed_networks="127.0.0.0/8")
    networks = parse_networks(settings.webhook_allowed_networks)
    ctx = make_context(settings, channels={
        Channel.EMAIL: FakeChannel("email"),
        Channel.STAFF: WebhookChannel("staff", secret=SECRET, allowed_networks=networks),
        Channel.ACTIVITY: WebhookChannel("activity", secret=SECRET, allowed_networks=networks)})
    yield ctx
    ctx.close()


def apply(ctx, *events):
    return apply_events(ctx.store, [json.dumps(e) for e in events], now=ctx.clock.now(), source="test")


def booked(booking_id: str, phone: str | None = None, **data):
    return event("booking.created", {"booking_id": booking_id, "customer": customer(f"c-{booking_id}", phone=phone),
                                     "resource": RESOURCE, "starts_at": VISIT.isoformat(),
                                     "ends_at": (VISIT + timedelta(hours=1)).isoformat(), **data}, tenant=TENANT)


def at(ctx, moment):
    ctx.clock.set(moment)
    sweep_states(ctx.store, now=moment)
    run_due(ctx)


def test_R1_every_staff_notice_and_activity_sent_matches_the_documented_schema_and_signature(wired, hooks):
    ctx = wired
    apply(ctx, booked("late", phone="+49 151 23456789"),  # unconfirmed (R13), then not marked arrived (R17, R18)
          booked("request", status={"id": "s1", "name": "Anfrage", "kind": "start"}),  # R23
          booked("leaving"))
    # R1: the customer writes what notifier cannot act on; the staff get it (customer.replied)
    assert receive_reply(ctx.store, Inbound("twilio", Channel.SMS, "SM-reply-1", sender="+4915123456789",
                                            text="Ich komme 10 Minuten später"),
                         now=START, valid_after_visit_s=3600).status == "forwarded"
    at(ctx, START)  # the new request's notice goes before the request is accepted
    apply(ctx, event("booking.status_changed", {"booking_id": "request", "status": {
        "id": "s2", "name": "Bestätigt", "kind": "confirmation"}}, tenant=TENANT, revision=2),  # R33
        event("booking.cancelled", {"booking_id": "leaving", "by": "customer"}, tenant=TENANT, revision=2))  # R14
    for moment in (START, VISIT - timedelta(hours=3), VISIT + timedelta(minutes=1), VISIT + timedelta(minutes=15),
                   VISIT + timedelta(minutes=30)):
        at(ctx, moment)

    received = list(hooks.requests)
    assert {r["json"]["kind"] for r in received} == set(STAFF_KINDS)
    schema = json.loads((DOCS / "webhooks.schema.json").read_text())
    genuine = documented_check()
    for request in received:
        jsonschema.validate(request["json"], schema, cls=jsonschema.Draft202012Validator)
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert genuine(SECRET, request["body"], headers["x-notifier-signature"])
        assert not genuine("another-secret-0123456789", request["body"], headers["x-notifier-signature"])
        assert headers["x-notifier-idempotency-key"] == request["json"]["idempotency_key"]
        assert headers["content-type"] == "application/json"
        body = request["json"]
        assert body["type"] == ("notifier.activity" if body["kind"].startswith("activity_") else
                                "customer.replied" if body["kind"] == "staff_reply" else "notifier.staff")
        assert ("reply" in body) == (body["kind"] == "staff_reply")
        assert body["tenant_id"] == TENANT and body["title"] and body["body"]


def test_the_schema_refuses_what_notifier_never_sends():
    schema = json.loads((DOCS / "webhooks.schema.json").read_text())
    good = {"type": "notifier.staff", "message_id": 1, "idempotency_key": "t/b/staff_cancelled/staff",
            "title": "x", "body": "y", "tenant_id": "t", "booking_id": "b", "kind": "staff_cancelled",
            "resource_id": "r", "starts_at": "2026-12-03T14:00:00+00:00"}
    jsonschema.validate(good, schema, cls=jsonschema.Draft202012Validator)
    for wrong in ({**good, "kind": "reminder"}, {**good, "type": "notifier.email"}, {**good, "extra": 1},
                  {k: v for k, v in good.items() if k != "booking_id"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema, cls=jsonschema.Draft202012Validator)


def test_N4_the_links_lifetime_in_events_md_is_the_default():
    """A booking system's developer reads how long the customer's link works in docs/events.md;
    the figure there is the setting's default."""
    from dataclasses import fields

    from notifier.settings import Settings

    text = (DOCS / "events.md").read_text(encoding="utf-8")
    section = text[text.index("## The customer's link"):]
    [days] = re.findall(r"`link_valid_after_visit_s`\s+after the visit ends \(default (\d+) days", section)
    [default] = [f.default for f in fields(Settings) if f.name == "link_valid_after_visit_s"]
    assert int(days) * 86_400 == default
