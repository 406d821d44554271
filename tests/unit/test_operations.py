"""What operators and tenants do by hand (issue 22; R3, R21, N2, N7): find messages, resend a
failed one, withdraw a planned one, preview a template and send a test of it; each on the
booking's timeline with who did it, and on the command line as in the console.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import select

from notifier.channels.base import Outgoing, PermanentFailure
from notifier.channels.fake import FakeChannel
from notifier.cli import main
from notifier.domain.model import Channel
from notifier.operations import (
    Actor,
    MessageQuery,
    NotAllowed,
    NotFound,
    PreviewRequest,
    Refused,
    held_events,
    preview_template,
    replay_dead_letter,
    resend_message,
    search_messages,
    send_test,
    withdraw_message,
)
from notifier.services import apply_events, timeline_of
from notifier.store import schema as t
from tests.conftest import START, TENANTS, created, customer, event, make_context, make_settings, settings_env
from tests.unit.test_services import run_due

TENANT = "salon-ops"
OPS = Actor("key_0ps (ops)")
VISIT = START + timedelta(days=2, hours=6)  # Thursday 3 December, 13:00 in Berlin


@pytest.fixture
def world(tmp_path, clock):
    folder = tmp_path / "tenants"
    folder.mkdir()
    shutil.copy(TENANTS / "salon-berlin.yaml", folder)
    (folder / f"{TENANT}.yaml").write_text(yaml.safe_dump({
        "id": TENANT, "name": "Salon Ops", "timezone": "Europe/Berlin", "home_region": "DE", "language": "de",
        "channels": ["email", "sms"], "message_events": True,
        "company": {"name": "Salon Ops", "address": "Teststraße 3, 10115 Berlin", "phone": "+49 30 5550102"},
        "settings": {"info": {"channels": ["sms", "email"]}, "reminder": {"channels": ["email"]},
                     "confirmation": {"enabled": False}, "feedback": {"enabled": False},
                     "quiet_hours": {"enabled": False}, "staff": {"enabled": False}},
        "resources": [{"id": "anna", "name": "Anna Weber"}, {"id": "sauna", "name": "Sauna 2", "type": "equipment"}]}))
    email = FakeChannel("email", behaviour=refuse("weg@example.org"))
    sms = FakeChannel("sms")
    settings = make_settings(tmp_path, tenants_path=folder, twilio_account_sid="AC0", twilio_auth_token="t0",
                             twilio_from="+4930000000")
    ctx = make_context(settings, channels={Channel.EMAIL: email, Channel.SMS: sms})
    yield ctx, email, sms
    ctx.close()


def refuse(address: str):
    def behaviour(message: Outgoing) -> None:
        if message.to == address:
            raise PermanentFailure("recipient refused: 550 no such user", code="550")
    return behaviour


def book(ctx, booking_id: str, *, email: str | None = "kunde@example.org", phone: str | None = None,
         tenant: str = TENANT, starts=VISIT) -> None:
    consents = {"email": email is not None, "sms": phone is not None}
    report = apply_events(ctx.store, [json.dumps(created(booking_id, tenant=tenant, starts_at=starts, cust=customer(
        f"c-{booking_id}", email=email, phone=phone, consents=consents)))], now=ctx.clock.now(), source="test")
    assert report.applied == 1


def row(ctx, message_id: int):
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(t.messages).where(t.messages.c.id == message_id)).one()


def ids(ctx, booking_id: str) -> dict[str, int]:
    with ctx.store.engine.connect() as conn:
        return {r.key.split("/")[0] + ("#" + r.key.split("#")[1] if "#" in r.key else ""): r.id
                for r in conn.execute(select(t.messages).where(t.messages.c.booking_id == booking_id))}


def outbound(ctx) -> list[tuple[str, dict]]:
    with ctx.store.engine.connect() as conn:
        return [(r.type, r.payload) for r in conn.execute(select(t.outbox).order_by(t.outbox.c.id))
                if r.type.startswith("message.")]


def test_search_finds_a_customers_messages_by_phone_email_booking_state_and_time(world):
    ctx, _, _ = world
    book(ctx, "by-sms", email=None, phone="0151 23456789")  # written without the prefix (R5)
    book(ctx, "by-mail", email="Erika.M@Example.org")
    book(ctx, "other", email="someone@example.org", tenant="salon-berlin")
    run_due(ctx)

    def found(**filters) -> list[tuple[str, str, str]]:
        rows = search_messages(ctx.store, MessageQuery(**filters), actor=OPS)
        return sorted((r["booking_id"], r["kind"], r["state"]) for r in rows)

    assert found(phone="+49 151 23456789") == [("by-sms", "info", "sent")]
    assert found(phone="0151 23456789", tenant_id=TENANT) == [("by-sms", "info", "sent")]  # the tenant's region
    assert found(email="erika.m@example.org") == [("by-mail", "info", "sent"), ("by-mail", "reminder", "planned")]
    assert found(booking_id="by-mail", state="planned") == [("by-mail", "reminder", "planned")]
    assert found(channel="sms") == [("by-sms", "info", "sent")]
    assert found(tenant_id=TENANT, due_from=START + timedelta(hours=1)) == [("by-mail", "reminder", "planned")]
    assert found(tenant_id=TENANT, due_to=START + timedelta(hours=1)) == [("by-mail", "info", "sent"),
                                                                          ("by-sms", "info", "sent")]
    mine = Actor("key_t (planner)", tenant_id="salon-berlin")  # a tenant's key sees its own tenant only
    assert {r["booking_id"] for r in search_messages(ctx.store, MessageQuery(), actor=mine)} == {"other"}
    with pytest.raises(NotFound):
        search_messages(ctx.store, MessageQuery(tenant_id=TENANT), actor=mine)
    with pytest.raises(Refused, match="phone"):
        search_messages(ctx.store, MessageQuery(phone="12"), actor=OPS)
    page = search_messages(ctx.store, MessageQuery(tenant_id=TENANT, limit=2), actor=OPS)
    rest = search_messages(ctx.store, MessageQuery(tenant_id=TENANT, before_id=page[-1]["id"]), actor=OPS)
    assert len(page) == 2 and len(rest) == 1 and rest[0]["id"] < page[-1]["id"]


def test_R3_a_failed_message_sent_again_goes_once_and_is_on_the_timeline_with_who(world):
    ctx, email, _ = world
    book(ctx, "b1", email="weg@example.org")
    assert run_due(ctx)["failed"] == 1
    failed = ids(ctx, "b1")["info"]
    with pytest.raises(Refused, match="only a failed message"):
        resend_message(ctx.store, ids(ctx, "b1")["reminder"], actor=OPS, now=ctx.clock.now())
    email.behaviour = None  # the customer's mailbox is back
    again = resend_message(ctx.store, failed, actor=OPS, now=ctx.clock.now())
    # an event for the booking before the sweep: planning leaves the resend alone
    apply_events(ctx.store, [json.dumps(event("booking.rescheduled", {
        "booking_id": "b1", "starts_at": (VISIT + timedelta(hours=1)).isoformat(),
        "ends_at": (VISIT + timedelta(hours=2)).isoformat()}, tenant=TENANT, revision=2))],
        now=ctx.clock.now(), source="test")
    assert run_due(ctx)["sent"] == 1 and run_due(ctx)["sent"] == 0
    assert [m.message_id for m in email.sent] == [again]
    resend = row(ctx, again)
    assert (resend.state, resend.kind, resend.resend_of, resend.by) == ("sent", "info", failed, OPS.name)
    [entry] = [e for e in timeline_of(ctx.store, TENANT, "b1") if e["kind"] == "message.resend"]
    assert entry["detail"] == {"kind": "info", "channel": "email", "of": failed, "by": OPS.name}
    sent = [p for kind, p in outbound(ctx) if kind == "message.sent"]
    assert [(p["message_id"], p["resend_of"]) for p in sent] == [(again, failed)]
    assert len(search_messages(ctx.store, MessageQuery(booking_id="b1", state="failed"), actor=OPS)) == 1


def test_R3_a_resend_on_another_channel_goes_only_with_consent(world):
    ctx, email, sms = world
    book(ctx, "b1", email="weg@example.org")  # no phone, no SMS consent
    run_due(ctx)
    again = resend_message(ctx.store, ids(ctx, "b1")["info"], actor=OPS, now=ctx.clock.now(), channel="sms")
    assert run_due(ctx)["withdrawn"] == 1 and sms.sent == []
    assert row(ctx, again).error == "no consent for sms"
    with pytest.raises(Refused, match="customer message goes by"):
        resend_message(ctx.store, ids(ctx, "b1")["info"], actor=OPS, now=ctx.clock.now(), channel="staff")


def test_R21_a_message_withdrawn_by_hand_stays_withdrawn_whatever_is_replanned(world):
    ctx, email, _ = world
    book(ctx, "b1")
    run_due(ctx)
    reminder = ids(ctx, "b1")["reminder"]
    withdraw_message(ctx.store, reminder, actor=OPS, now=ctx.clock.now(), reason="the customer phoned: no reminder")
    for revision, hours in ((2, 1), (3, 0)):  # moved away and back: planning would bring a reminder back
        apply_events(ctx.store, [json.dumps(event("booking.rescheduled", {
            "booking_id": "b1", "starts_at": (VISIT + timedelta(hours=hours)).isoformat(),
            "ends_at": (VISIT + timedelta(hours=hours + 1)).isoformat()}, tenant=TENANT, revision=revision))],
            now=ctx.clock.now(), source="test")
    ctx.clock.set(VISIT - timedelta(hours=6))
    run_due(ctx)
    assert [m.metadata["kind"] for m in email.sent] == ["info"]  # no reminder went
    assert (row(ctx, reminder).state, row(ctx, reminder).by) == ("withdrawn", OPS.name)
    entry = next(e for e in timeline_of(ctx.store, TENANT, "b1") if e["kind"] == "message.withdrawn"
                 and e["detail"].get("by"))
    assert entry["detail"] == {"kind": "reminder", "channel": "email", "reason": "the customer phoned: no reminder",
                               "by": OPS.name}
    # the 13:00 visit had a reminder of its own (a new key), withdrawn when the visit moved back to 12:00;
    # the operator's stayed withdrawn: planning did not revive it
    [announced] = [p for k, p in outbound(ctx) if k == "message.withdrawn" and p["message_id"] == reminder]
    assert announced["by"] == OPS.name and announced["reason"] == "the customer phoned: no reminder"
    with pytest.raises(Refused, match="only a planned message"):
        withdraw_message(ctx.store, ids(ctx, "b1")["info"], actor=OPS, now=ctx.clock.now())
    with pytest.raises(NotFound):  # another tenant's key: as if there were no such message
        withdraw_message(ctx.store, reminder, actor=Actor("key_x", tenant_id="salon-berlin"), now=ctx.clock.now())


def test_a_preview_renders_a_bookings_data_or_the_samples_without_a_live_link(world):
    ctx, _, _ = world
    book(ctx, "b1", phone="0151 23456789")
    mail = preview_template(ctx, PreviewRequest(TENANT, "info", "email", booking_id="b1"), actor=OPS)
    assert mail.source == "booking b1" and mail.language == "de" and mail.subject and mail.html
    assert "Donnerstag, 3. Dezember 2026" in mail.text and "13:00" in mail.text  # the tenant's zone
    assert mail.card == "appointment card (ICS) attached"
    sms = preview_template(ctx, PreviewRequest(TENANT, "reminder", "sms", language="it", resource_type="equipment"),
                           actor=OPS)
    assert sms.source == "samples" and sms.language == "it" and "Salon Ops" in sms.text
    encoding, segments, chars = sms.sms
    assert encoding == "GSM-7" and chars == len(sms.text) and segments == (1 if chars <= 160 else 2)
    assert "/l/xxxxxxxxxxxxxxxxx" in mail.text + sms.text  # a placeholder of the link's length
    with ctx.store.engine.connect() as conn:
        tokens = [r.token for r in conn.execute(select(t.links))]
    assert not any(token in mail.text + (mail.html or "") for token in tokens)
    with pytest.raises(Refused, match="no kind"):
        preview_template(ctx, PreviewRequest(TENANT, "nonsense", "email"), actor=OPS)
    with pytest.raises(NotFound):
        preview_template(ctx, PreviewRequest(TENANT, "info", "email"), actor=Actor("k", tenant_id="salon-berlin"))


def test_a_test_goes_to_the_typed_address_only_marked_as_a_test_and_the_timeline_says_who(world):
    ctx, email, _ = world
    book(ctx, "b1")
    request = PreviewRequest(TENANT, "reminder", "email", booking_id="b1")
    send_test(ctx, request, "ops@salon-ops.example", actor=OPS, now=ctx.clock.now())
    [mail] = email.sent
    assert mail.to == "ops@salon-ops.example" and mail.subject.startswith("[Test] ")
    assert mail.headers == {"X-Notifier-Test": "1"} and mail.sender == "Salon Ops <notifier@localhost>"
    [entry] = [e for e in timeline_of(ctx.store, TENANT, "b1") if e["kind"] == "message.test_sent"]
    assert entry["detail"] == {"kind": "reminder", "channel": "email", "to": "***", "by": OPS.name}
    assert ctx.store.count_by_state() == {"planned": 2}  # the booking's own messages are untouched
    with pytest.raises(Refused, match="not an email address"):
        send_test(ctx, request, "ops at salon", actor=OPS, now=ctx.clock.now())
    with pytest.raises(Refused, match="refused the test"):
        send_test(ctx, request, "weg@example.org", actor=OPS, now=ctx.clock.now())


def test_held_events_and_a_dead_letters_replay_by_an_operator(world, tmp_path):
    from notifier.services import load_tenants

    ctx, _, _ = world
    apply_events(ctx.store, [json.dumps(event("booking.cancelled", {"booking_id": "b9", "by": "staff"},
                                              tenant=TENANT, revision=2)),
                             json.dumps(created("b8", tenant="salon-late"))], now=ctx.clock.now(), source="test")
    [held] = held_events(ctx.store, actor=OPS)
    assert (held["tenant_id"], held["aggregate"], held["type"], held["revision"]) == (
        TENANT, "booking:b9", "booking.cancelled", 2)
    assert held_events(ctx.store, actor=Actor("k", tenant_id="salon-berlin")) == []
    with ctx.store.engine.connect() as conn:
        [dead] = conn.execute(select(t.dead_letters.c.id)).scalars().all()  # an unknown tenant's booking
    with pytest.raises(NotAllowed):
        replay_dead_letter(ctx.store, dead, actor=Actor("k", tenant_id=TENANT), now=ctx.clock.now())
    late = tmp_path / "late"  # the operator fixes the cause: the tenant is loaded
    late.mkdir()
    doc = yaml.safe_load((TENANTS / "salon-berlin.yaml").read_text())
    (late / "salon-late.yaml").write_text(yaml.safe_dump(doc | {"id": "salon-late"}))
    load_tenants(ctx.store, late, now=ctx.clock.now())
    report = replay_dead_letter(ctx.store, dead, actor=OPS, now=ctx.clock.now())
    assert report.applied == 1
    entries = timeline_of(ctx.store, "salon-late", "b8")
    assert {"dead_letter": dead, "type": "booking.created", "by": OPS.name} in [e["detail"] for e in entries]


def test_the_command_line_does_the_same(world, tmp_path):
    ctx, _, _ = world
    book(ctx, "b1", email="weg@example.org")
    env = settings_env(ctx.settings)
    runner = CliRunner()
    found = runner.invoke(main, ["messages", "search", "--tenant", TENANT, "--email", "WEG@example.org"], env=env)
    assert found.exit_code == 0, found.output
    assert "salon-ops/b1" in found.output and "2 messages" in found.output
    reminder = ids(ctx, "b1")["reminder"]
    done = runner.invoke(main, ["messages", "withdraw", str(reminder), "--reason", "asked", "--by", "anna"], env=env)
    assert done.exit_code == 0 and row(ctx, reminder).by == "anna"
    again = runner.invoke(main, ["messages", "withdraw", str(reminder)], env=env)
    assert again.exit_code == 1 and "only a planned message can be withdrawn" in again.output
    nothing = runner.invoke(main, ["messages", "resend", "999999"], env=env)
    assert nothing.exit_code == 1 and "no message 999999" in nothing.output
    as_json = runner.invoke(main, ["messages", "search", "--booking", "b1", "--status", "withdrawn", "--json"],
                            env=env)
    assert [json.loads(line)["id"] for line in as_json.output.splitlines()] == [reminder]
    shown = runner.invoke(main, ["templates", "preview", "--tenant", TENANT, "--kind", "reminder", "--channel", "sms",
                                 "--language", "de"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "SMS:" in shown.output and "GSM-7" in shown.output and "samples" in shown.output
    run_due(ctx)  # b1's info is refused for good
    failed = ids(ctx, "b1")["info"]
    resent = runner.invoke(main, ["messages", "resend", str(failed), "--channel", "email", "--by", "anna"], env=env)
    assert resent.exit_code == 0, resent.output
    new = ids(ctx, "b1")["info#resend1"]
    assert f"sent again as message {new}" in resent.output
    assert (row(ctx, new).resend_of, row(ctx, new).by, row(ctx, new).state) == (failed, "anna", "planned")


def test_a_booking_system_finds_its_messages_through_the_api(world):
    from fastapi.testclient import TestClient

    from notifier.access import create_key
    from notifier.web.app import create_app

    ctx, _, _ = world
    book(ctx, "b1", email="weg@example.org")
    book(ctx, "b2", tenant="salon-berlin")
    run_due(ctx)
    key = create_key(ctx.store, tenant_id=TENANT, name="crm", now=START).key
    client = TestClient(create_app(ctx), headers={"Authorization": f"Bearer {key}"})
    page = client.get(f"/api/tenants/{TENANT}/messages", params={"state": "failed"}).json()
    assert [(m["booking_id"], m["kind"], m["error"]) for m in page["items"]] == [
        ("b1", "info", "recipient refused: 550 no such user")]
    assert page["next_before"] is None
    assert client.get("/api/tenants/salon-berlin/messages").status_code == 403  # another tenant's
    assert client.get(f"/api/tenants/{TENANT}/messages", params={"phone": "12"}).status_code == 422
    assert client.get(f"/api/tenants/{TENANT}/messages", params={"from": "2026-12-01T00:00:00"}).status_code == 422
