"""Message events for the booking system and the tenant's sender identity (issue 22; P4, N2, N5).

A tenant that opts in (`message_events: true` in its tenant file) hears of every message's
outcome on the outbound queue, through the outbox: `message.sent`, `message.delivered`,
`message.read`, `message.failed` (with the reason) and `message.withdrawn`, each exactly once
per outcome whatever is repeated (a redelivered dispatch task, a provider's callback sent
twice), each naming the message by its stable `message_id`. A tenant that did not opt in gets
none. Its emails come from its own `mail_from` with its `reply_to`, its SMS from its own number,
sender id or messaging service; a tenant without them falls back to the settings'.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta

import pytest
import yaml
from sqlalchemy import select

from notifier.channels.base import Outgoing, PermanentFailure
from notifier.channels.email import SMTPChannel
from notifier.channels.fake import FakeChannel
from notifier.dispatch import dispatch_batch
from notifier.domain import outbound
from notifier.domain.config import InvalidConfig, tenant_config
from notifier.domain.model import Channel
from notifier.services import apply_delivery_status, apply_events
from notifier.store import schema as t
from tests.conftest import START, TENANTS, created, customer, event, make_context, make_settings
from tests.unit.test_services import run_due

TENANT = "salon-events"
BOUNCES = "bounce@example.org"  # the fake provider refuses this address for good


def tenant_file(folder, **extra) -> None:
    folder.mkdir(exist_ok=True)
    doc = {"id": TENANT, "name": "Salon Events", "timezone": "Europe/Berlin", "home_region": "DE", "language": "de",
           "channels": ["email"], "company": {"name": "Salon Events", "email": "hallo@salon-events.example",
                       "address": "Teststraße 2, 10115 Berlin", "phone": "+49 30 5550101"},
           "settings": {"info": {"channels": ["email"]}, "reminder": {"channels": ["email"]},
                        "confirmation": {"enabled": False}, "feedback": {"enabled": False},
                        "quiet_hours": {"enabled": False}, "staff": {"enabled": False}},
           "resources": [{"id": "anna", "name": "Anna Weber"}], **extra}
    (folder / f"{TENANT}.yaml").write_text(yaml.safe_dump(doc))
    shutil.copy(TENANTS / "salon-berlin.yaml", folder)  # a tenant with neither events nor a sender of its own


def refuse_bounces(message: Outgoing) -> None:
    if message.to == BOUNCES:
        raise PermanentFailure("recipient refused: 550 5.1.1 <bounce@example.org> unknown", code="550")


@pytest.fixture
def world(tmp_path, clock):
    tenant_file(tmp_path / "tenants", message_events=True,
                sender={"mail_from": "Salon Events <termine@salon-events.example>",
                        "reply_to": "rezeption@salon-events.example"})
    email = FakeChannel("email", behaviour=refuse_bounces)
    ctx = make_context(make_settings(tmp_path, tenants_path=tmp_path / "tenants"), channels={Channel.EMAIL: email})
    yield ctx, email
    ctx.close()


def outbox(ctx) -> list[dict]:
    o = t.outbox.c
    with ctx.store.engine.connect() as conn:
        rows = conn.execute(select(o.id, o.tenant_id, o.type, o.payload).order_by(o.id)).all()
    return [{"schema_version": 1, "event_id": str(r.id), "type": r.type, "tenant_id": r.tenant_id, "data": r.payload}
            for r in rows]


def message_events(ctx) -> list[tuple[str, int]]:
    return [(e["type"], e["data"]["message_id"]) for e in outbox(ctx) if e["type"].startswith("message.")]


def book(ctx, booking_id: str, *, email: str = "kunde@example.org", days: int = 2, tenant: str = TENANT) -> None:
    apply_events(ctx.store, [json.dumps(created(booking_id, tenant=tenant, starts_at=START + timedelta(days=days, hours=6),
                                                cust=customer(f"c-{booking_id}", email=email)))],
                 now=ctx.clock.now(), source="test")


def ids_of(ctx, booking_id: str) -> dict[str, int]:
    m = t.messages.c
    with ctx.store.engine.connect() as conn:
        return {r.kind: r.id for r in conn.execute(select(m.kind, m.id).where(m.booking_id == booking_id))}


def test_P4_N2_N5_each_outcome_is_announced_once_with_a_stable_message_id(world):
    ctx, email = world
    book(ctx, "sent")  # info goes now; its reminder is planned for the visit's morning
    book(ctx, "bounced", email=BOUNCES)
    run_due(ctx)
    sent, bounced = ids_of(ctx, "sent")["info"], ids_of(ctx, "bounced")["info"]
    reminder = ids_of(ctx, "sent")["reminder"]
    provider_id = next(m for m in email.sent if m.message_id == sent)
    assert provider_id.to == "kunde@example.org"
    pid = f"fake-email-{email.sent.index(provider_id) + 1}"
    for status in ("delivered", "delivered", "read", "read", "delivered", "failed"):  # repeated, out of order
        apply_delivery_status(ctx.store, "fake", pid, status, now=ctx.clock.now())
    assert dispatch_batch(ctx, [sent, bounced]).skipped == 2  # a redelivered task: nothing more
    # the visit is cancelled: its planned reminder is withdrawn
    apply_events(ctx.store, [json.dumps(event("booking.cancelled", {"booking_id": "sent", "by": "staff"},
                                              tenant=TENANT, revision=2))], now=ctx.clock.now(), source="test")
    assert sorted(message_events(ctx)) == sorted([
        ("message.sent", sent), ("message.delivered", sent), ("message.read", sent),
        ("message.failed", bounced), ("message.withdrawn", reminder)])
    events = {(e["type"], e["data"]["message_id"]): e for e in outbox(ctx)}
    for e in events.values():
        outbound.validate(e)  # every event as docs/outbound.schema.json describes it
    failed = events[("message.failed", bounced)]["data"]
    assert failed["reason"].startswith("recipient refused: 550") and failed["code"] == "550"
    assert failed["kind"] == "info" and failed["channel"] == "email" and failed["recipient"] == "customer"
    assert "to" not in failed and "email" not in failed  # nothing of the customer beyond the booking's id
    assert events[("message.sent", sent)]["data"]["provider_message_id"] == pid
    assert events[("message.withdrawn", reminder)]["data"]["reason"] == "no longer applies"


def test_a_message_a_worker_is_sending_is_not_announced_as_withdrawn(world):
    ctx, _ = world
    book(ctx, "b2")
    ids = ids_of(ctx, "b2")
    ctx.store.claim_due(ctx.clock.now(), lease_s=60, limit=10)  # the sweep took b2's info: queued
    ctx.store.claim_batch_for_send([ids["info"]], ctx.clock.now(), lease_s=60)  # a worker is sending it
    apply_events(ctx.store, [json.dumps(event("booking.cancelled", {"booking_id": "b2", "by": "staff"},
                                              tenant=TENANT, revision=2))], now=ctx.clock.now(), source="test")
    withdrawn = [i for kind, i in message_events(ctx) if kind == "message.withdrawn"]
    assert ids["reminder"] in withdrawn and ids["info"] not in withdrawn  # the one being sent was not withdrawn


def test_withdrawal_by_consent_before_the_send_is_announced(world):
    ctx, _ = world
    book(ctx, "b1")
    ids = ids_of(ctx, "b1")
    ctx.store.claim_due(ctx.clock.now(), lease_s=60, limit=10)  # the info is queued: kept as withdrawn
    apply_events(ctx.store, [json.dumps(event("customer.updated", {"customer": customer(
        "c-b1", consents={"email": False})}, tenant=TENANT, revision=1))], now=ctx.clock.now(), source="test")
    assert sorted(message_events(ctx)) == sorted([("message.withdrawn", ids["info"]),
                                                  ("message.withdrawn", ids["reminder"])])
    assert run_due(ctx)["sent"] == 0 and len(message_events(ctx)) == 2  # the stale task finds nothing to take


def test_a_tenant_that_did_not_opt_in_hears_of_no_message(world):
    ctx, _ = world
    book(ctx, "b1", tenant="salon-berlin")
    assert run_due(ctx)["sent"] == 1
    assert message_events(ctx) == []


def test_emails_come_from_the_tenants_own_sender_with_its_reply_to(world):
    ctx, email = world
    book(ctx, "b1")
    book(ctx, "b2", tenant="salon-berlin")  # no sender of its own: the settings' address, its company's name
    run_due(ctx)
    smtp = SMTPChannel(host="127.0.0.1", port=25, mail_from=ctx.settings.mail_from)  # the mail as SMTP sends it
    by_tenant = {m.metadata["tenant_id"]: smtp.build(m) for m in email.sent}
    ours, theirs = by_tenant[TENANT], by_tenant["salon-berlin"]
    assert ours["From"] == "Salon Events <termine@salon-events.example>"
    assert ours["Reply-To"] == "rezeption@salon-events.example"
    assert ours["Message-ID"].endswith("@salon-events.example>")
    assert theirs["From"] == "Salon Test Berlin <notifier@localhost>"
    assert theirs["Reply-To"] is None  # neither a reply_to of its own nor a company email: no Reply-To


def test_reply_to_falls_back_to_the_companys_email(tmp_path, clock):
    tenant_file(tmp_path / "tenants")
    email = FakeChannel("email")
    ctx = make_context(make_settings(tmp_path, tenants_path=tmp_path / "tenants"), channels={Channel.EMAIL: email})
    try:
        book(ctx, "b1")
        run_due(ctx)
        [mail] = email.sent
        built = SMTPChannel(host="127.0.0.1", port=25, mail_from=ctx.settings.mail_from).build(mail)
        assert built["From"] == "Salon Events <notifier@localhost>"
        assert built["Reply-To"] == "hallo@salon-events.example"
    finally:
        ctx.close()


def test_an_sms_goes_from_the_tenants_number_or_messaging_service():
    from notifier.channels.twilio import TwilioSMSChannel

    twilio = TwilioSMSChannel(account_sid="AC1", auth_token="x", sender="+4930000000")
    base = dict(message_id=1, idempotency_key="k", to="+4915123456789", text="Hallo")
    assert twilio.form(Outgoing(**base))["From"] == "+4930000000"  # the settings'
    assert twilio.form(Outgoing(**base, sender="Lindenblatt"))["From"] == "Lindenblatt"
    own = twilio.form(Outgoing(**base, messaging_service="MG" + "a" * 32))
    assert own["MessagingServiceSid"] == "MG" + "a" * 32 and "From" not in own


def test_a_tenants_sms_comes_from_its_sender_id_and_another_from_the_settings_number(tmp_path, clock):
    from notifier.channels.twilio import TwilioSMSChannel

    by_sms = {"channels": ["email", "sms"], "settings": {
        "info": {"channels": ["sms"]}, "reminder": {"enabled": False}, "confirmation": {"enabled": False},
        "feedback": {"enabled": False}, "quiet_hours": {"enabled": False}, "staff": {"enabled": False}}}
    tenant_file(tmp_path / "tenants", sender={"sms_from": "Lindenblatt"}, **by_sms)
    plain = yaml.safe_load((tmp_path / "tenants" / f"{TENANT}.yaml").read_text())
    plain.pop("sender")
    (tmp_path / "tenants" / "salon-plain.yaml").write_text(yaml.safe_dump({**plain, "id": "salon-plain"}))
    sms = FakeChannel("sms")
    ctx = make_context(make_settings(tmp_path, tenants_path=tmp_path / "tenants"), channels={Channel.SMS: sms})
    try:
        for tenant in (TENANT, "salon-plain"):
            apply_events(ctx.store, [json.dumps(created("b1", tenant=tenant, starts_at=START + timedelta(days=2),
                                                        cust=customer("c1", phone="+49 151 23456789",
                                                                      consents={"sms": True})))],
                         now=START, source="test")
        assert run_due(ctx)["sent"] == 2
    finally:
        ctx.close()
    twilio = TwilioSMSChannel(account_sid="AC1", auth_token="x", sender="+4930000000")  # the settings' number
    sent_from = {m.metadata["tenant_id"]: twilio.form(m)["From"] for m in sms.sent}
    assert sent_from == {TENANT: "Lindenblatt", "salon-plain": "+4930000000"}


@pytest.mark.parametrize("sender, problem", [
    ({"mail_from": "Salon <termine@salon.example>\r\nBcc: all@example.org"}, "one line"),
    ({"mail_from": "termine at salon"}, "an address"),
    ({"reply_to": "a@example.org, b@example.org"}, "an address"),
    ({"sms_from": "+49 30 123"}, "E.164"),
    ({"sms_from": "Salon Lindenblatt"}, "1 to 11"),
    ({"sms_from": "+4930123456", "sms_messaging_service": "MG" + "0" * 32}, "give one"),
    ({"smtp_password": "x"}, "unknown key"),
])
def test_a_sender_that_would_not_work_is_refused_with_its_key(sender, problem):
    with pytest.raises(InvalidConfig) as refused:
        tenant_config({"id": "t", "name": "T", "sender": sender})
    assert problem in str(refused.value) and "sender" in str(refused.value)


def test_docs_outbound_schema_is_current():
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs"
    assert json.loads((docs / "outbound.schema.json").read_text()) == outbound.json_schema(), "run `make schema`"


def test_N2_an_event_published_again_keeps_its_event_id(world):
    """The sweep publishes, then marks published in the same transaction: a publication that fails
    half-way is published again, under the same event_ids, so the booking system can dedupe."""
    from notifier.services import publish_outbox

    ctx, _ = world
    book(ctx, "b1")
    run_due(ctx)
    seen: list[list[str]] = []

    class Flaky:
        def publish_many(self, events):
            seen.append([event_id for event_id, *_ in events])
            if len(seen) == 1:
                raise ConnectionError("broker went away after taking them")

    with pytest.raises(ConnectionError):
        publish_outbox(ctx.store, Flaky(), now=START)
    assert publish_outbox(ctx.store, Flaky(), now=START) == len(seen[0]) > 0
    assert seen[0] == seen[1] and len(set(seen[0])) == len(seen[0])
    assert publish_outbox(ctx.store, Flaky(), now=START) == 0
