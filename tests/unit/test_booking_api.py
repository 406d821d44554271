"""A booking as it stands (issue 19): `GET /api/tenants/T/bookings/B` and `notifier booking show`.

Every reason planning can give for leaving a message kind out is made to happen through events,
and found once on the timeline and once in the booking endpoint (R2, R3, R4, R5, R6, R10, R11,
R24, R25, N3); the status history is listed newest first (R35). On the embedded store."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from notifier.access import create_key
from notifier.channels.fake import FakeChannel
from notifier.cli import main
from notifier.domain.model import Channel
from notifier.services import WITHOUT_PROVIDER, apply_events, load_tenants, replan_booking, sweep_states, timeline_of
from notifier.web.app import create_app
from tests.conftest import START, customer, event, settings_env
from tests.unit.test_services import run_due

TENANT = "praxis-test"
RESOURCE = {"id": "dr-weiss", "name": "Dr. Weiss", "type": "specialist"}
VISIT = START + timedelta(days=2, hours=4)  # Thursday 3 December, 11:00 in Berlin
MOBILE = "0151 23456789"


@pytest.fixture
def api(ctx, tmp_path: Path):
    """A tenant with every kind at its default and email, SMS and WhatsApp switched on; a
    resource whose own settings switch the feedback request off; a client with its key."""
    folder = tmp_path / "tenants"
    folder.mkdir()
    (folder / "praxis.yaml").write_text(yaml.safe_dump({
        "id": TENANT, "name": "Praxis Test", "timezone": "Europe/Berlin", "home_region": "DE", "language": "de",
        "channels": ["email", "sms", "whatsapp"],
        "company": {"name": "Praxis Test", "address": "Teststraße 1", "phone": "+49 30 5550100"},
        "settings": {"change": {"channels": ["sms"]}},
        "resources": [RESOURCE, {"id": "room-2", "name": "Raum 2", "type": "equipment",
                                 "settings": {"feedback": {"enabled": False}}}]}))
    load_tenants(ctx.store, folder, now=START)
    key = create_key(ctx.store, tenant_id=TENANT, name="test", now=START).key
    client = TestClient(create_app(ctx), headers={"Authorization": f"Bearer {key}"})
    return ctx, client


def book(ctx, *, booking_id="b1", at=START, starts=VISIT, resource=RESOURCE, regions=None, **who):
    body = event("booking.created", {
        "booking_id": booking_id, "customer": customer(**who), "resource": resource,
        "starts_at": starts.isoformat(), "ends_at": (starts + timedelta(hours=1)).isoformat()},
        tenant=TENANT, at=at)
    report = apply_events(ctx.store, [json.dumps(body)], now=at, source="test", regions=regions)
    assert report.applied == 1


def later(ctx, type_, data, *, revision, at=START, booking_id="b1"):
    body = event(type_, {"booking_id": booking_id, **data}, tenant=TENANT, revision=revision, at=at)
    assert apply_events(ctx.store, [json.dumps(body)], now=at, source="test").applied == 1


def email_only(ctx):
    body = event("tenant.settings_updated", {"channels": ["email"]}, tenant=TENANT, revision=1)
    assert apply_events(ctx.store, [json.dumps(body)], now=START, source="test").applied == 1


# each reason: the requirement it keeps, how to make it happen, and the kinds its one entry concerns
SCENARIOS = {
    "inside_lead_time": ("R11", lambda ctx: book(ctx, at=START + timedelta(hours=2),
                                                 starts=START + timedelta(hours=2, minutes=30)),
                         {"confirmation", "reminder", "activity_unconfirmed"}),
    "quiet_hours_after_visit": ("R10", lambda ctx: book(ctx, at=START + timedelta(hours=15),  # 22:00, for 07:30
                                                        starts=START + timedelta(days=1, minutes=30)), {"info"}),
    "visit_started": ("R10", lambda ctx: book(ctx, at=VISIT + timedelta(minutes=20)),
                      {"info", "confirmation", "reminder", "activity_unconfirmed"}),
    "privacy_not_accepted": ("R4", lambda ctx: book(ctx, created_via_online_booking=True, privacy_accepted=False),
                             {"reminder"}),
    "no_show": ("R25", lambda ctx: (book(ctx), later(ctx, "booking.visit_marked", {"outcome": "no_show"}, revision=2,
                                                     at=VISIT + timedelta(minutes=40))), {"feedback"}),
    # a kind switched off: for the resource (the tenant's own switch leaves nothing to say, R24)
    "switched_off_for_resource": ("R24", lambda ctx: book(ctx, resource={"id": "room-2", "name": "Raum 2",
                                                                         "type": "equipment"}), {"feedback"}),
    "channel_switched_off": ("R2", lambda ctx: (email_only(ctx),
                                                book(ctx, phone=MOBILE, consents={"sms": True, "email": True}),
                                                later(ctx, "booking.rescheduled", {
                                                    "starts_at": (VISIT + timedelta(days=1)).isoformat(),
                                                    "ends_at": (VISIT + timedelta(days=1, hours=1)).isoformat()},
                                                    revision=2, at=START + timedelta(hours=1))),
                             {"change"}),  # change notices by SMS only
    "no_consent": ("R3", lambda ctx: book(ctx, consents={}), {"info", "confirmation", "reminder", "feedback"}),
    "channel_unavailable_in_region": ("R6", lambda ctx: book(ctx, phone=MOBILE,
                                                             consents={"whatsapp": True, "email": True},
                                                             regions=WHATSAPP_NOT_IN_DE),
                                      {"info", "confirmation", "reminder"}),
    "no_address": ("R1", lambda ctx: book(ctx, email=None), {"info", "confirmation", "reminder", "feedback"}),
    "invalid_number": ("R5", lambda ctx: book(ctx, phone="12", consents={"sms": True, "email": True}),
                       {"info", "confirmation", "reminder"}),
    "number_cannot_receive": ("R5", lambda ctx: book(ctx, phone="030 1234567", consents={"sms": True, "email": True}),
                              {"info", "confirmation", "reminder"}),
    "no_reachable_channel": ("R1", lambda ctx: book(ctx, email=None, phone="030 1234567",
                                                    consents={"sms": True, "email": True}),
                             {"info", "confirmation", "reminder"}),  # feedback goes by email only: no_address
    "no_provider": ("R27", lambda ctx: book(ctx, phone=MOBILE, consents={"sms": True, "email": True},
                                            regions=NO_SMS_PROVIDER),
                    {"info", "confirmation", "reminder"}),
}
WHATSAPP_NOT_IN_DE = {"whatsapp": ["DE"]}
NO_SMS_PROVIDER = {WITHOUT_PROVIDER: ["sms"]}  # what a deployment without Twilio settings plans with
REPLAN_REGIONS = {"channel_unavailable_in_region": WHATSAPP_NOT_IN_DE, "no_provider": NO_SMS_PROVIDER}


def counted(reason: str, kind: str) -> float:
    return REGISTRY.get_sample_value("notifier_not_planned_total", {"reason": reason, "kind": kind}) or 0.0


@pytest.mark.parametrize("reason", [pytest.param(reason, id=f"{req}-{reason}")
                                    for reason, (req, _, _) in sorted(SCENARIOS.items())])
def test_N1_N3_each_not_planned_reason_is_said_once_on_the_timeline_in_the_booking_and_the_metric(api, reason):
    """Made to happen through events: one timeline entry with the reason, the same in the booking
    endpoint, each kind counted once; planning the same state again (a replan, a state sweep)
    writes nothing more and counts nothing more."""
    ctx, client = api
    _, make, kinds = SCENARIOS[reason]
    before = {kind: counted(reason, kind) for kind in kinds}
    make(ctx)

    def entries():
        timeline = timeline_of(ctx.store, TENANT, "b1")
        said = [e for e in timeline if e["kind"] == "message.not_planned"]
        return timeline, said, [e["detail"] for e in said if e["detail"]["reason"] == reason]

    timeline, said, on_timeline = entries()
    assert len(on_timeline) == 1, [(e["kind"], e["detail"]) for e in timeline]
    answer = client.get(f"/api/tenants/{TENANT}/bookings/b1")
    assert answer.status_code == 200
    in_booking = [n for n in answer.json()["not_planned"] if n["reason"] == reason]
    assert len(in_booking) == 1
    assert set(on_timeline[0]["kinds"]) == set(in_booking[0]["kinds"]) == kinds
    assert in_booking[0]["since"] is not None
    assert {kind: counted(reason, kind) - before[kind] for kind in kinds} == dict.fromkeys(kinds, 1)

    # the same state planned again, at the time of the last event
    last = max(e["at"] for e in timeline)
    regions = REPLAN_REGIONS.get(reason)
    replan_booking(ctx.store, TENANT, "b1", now=last, regions=regions)
    sweep_states(ctx.store, now=last, regions=regions)
    _, said_again, on_timeline_again = entries()
    assert len(said_again) == len(said) and len(on_timeline_again) == 1
    assert [n for n in client.get(f"/api/tenants/{TENANT}/bookings/b1").json()["not_planned"]
            if n["reason"] == reason] == in_booking
    assert {kind: counted(reason, kind) - before[kind] for kind in kinds} == dict.fromkeys(kinds, 1)


def test_R5_a_landline_gets_no_sms_and_email_goes_where_consented(api, email):
    """The two cases of the issue: an Italian tenant's customer writing a German mobile without
    its prefix (an Italian landline), a German tenant's customer writing an Italian mobile
    without its prefix (a German landline). Both consented to SMS and email: the reason is on the
    timeline and in the booking, and once the messages are due only email goes out."""
    ctx, client = api
    sms = ctx.channels[Channel.SMS] = FakeChannel("sms")
    rome = event("tenant.settings_updated", {"channels": ["email", "sms"], "home_region": "IT",
                                             "timezone": "Europe/Rome"}, tenant=TENANT, revision=1)
    book(ctx, booking_id="de", phone="347 1234567", consents={"sms": True, "email": True})
    assert apply_events(ctx.store, [json.dumps(rome)], now=START, source="test").applied == 1
    book(ctx, booking_id="it", cid="c2", phone="0151 2345678", consents={"sms": True, "email": True})
    for booking_id in ("de", "it"):
        state = client.get(f"/api/tenants/{TENANT}/bookings/{booking_id}").json()
        customer_messages = [m for m in state["messages"] if m["recipient"] == "customer"]
        assert customer_messages and {m["channel"] for m in customer_messages} == {"email"}, booking_id
        [reason] = state["not_planned"]
        assert reason["reason"] == "number_cannot_receive" and reason["channels"] == ["sms"]
        [said] = [e["detail"] for e in timeline_of(ctx.store, TENANT, booking_id) if e["kind"] == "message.not_planned"]
        assert said["reason"] == "number_cannot_receive" and said["channels"] == ["sms"]
        assert {"info", "confirmation", "reminder"} <= set(said["kinds"])
    with ctx.store.transaction() as tx:
        assert tx.customer(TENANT, "c1").phone == "+493471234567"  # stored as E.164 all the same (R5)
        assert tx.customer(TENANT, "c2").phone == "+3901512345678"
    ctx.clock.set(VISIT + timedelta(hours=3))  # every message before and after the visit is due
    run_due(ctx)
    assert sms.sent == []
    to_customer = [m for m in email.sent if m.to == "kunde@example.org"]
    assert {m.idempotency_key.split("/")[1] for m in to_customer} == {"de", "it"}


def test_R35_the_history_of_a_workflow_booking_lists_its_statuses_newest_first(api):
    ctx, client = api
    body = event("booking.created", {"booking_id": "w1", "customer": customer(), "resource": RESOURCE,
                                     "starts_at": VISIT.isoformat(), "ends_at": (VISIT + timedelta(hours=1)).isoformat(),
                                     "status": {"id": "s1", "name": "Anfrage", "kind": "start"}}, tenant=TENANT)
    apply_events(ctx.store, [json.dumps(body)], now=START, source="test")
    for revision, (name, kind, minutes) in enumerate([("Geprüft", "none", 10), ("Bestätigt", "confirmation", 20)],
                                                     start=2):
        later(ctx, "booking.status_changed", {"status": {"id": f"s{revision}", "name": name, "kind": kind}},
              revision=revision, at=START + timedelta(minutes=minutes), booking_id="w1")
    state = client.get(f"/api/tenants/{TENANT}/bookings/w1").json()
    assert [(s["status"], s["kind"]) for s in state["status_history"]] == [
        ("Bestätigt", "confirmation"), ("Geprüft", "none"), ("Anfrage", "start")]
    assert state["workflow_status"]["name"] == "Bestätigt" and state["approved_at"] is not None
    kinds = {m["kind"]: m["state"] for m in state["messages"]}
    assert kinds["request_received"] == "withdrawn" and kinds["request_accepted"] == "planned"


def test_R31_a_status_carries_its_description_position_and_colour(api):
    """The contract refused a status's description, position and colour: such events were dead letters."""
    ctx, client = api
    start = {"id": "s1", "name": "Anfrage", "kind": "start", "description": "Online angefragt", "position": 1,
             "colour": "#F5A623"}
    body = event("booking.created", {"booking_id": "w1", "customer": customer(), "resource": RESOURCE,
                                     "starts_at": VISIT.isoformat(), "ends_at": (VISIT + timedelta(hours=1)).isoformat(),
                                     "status": start}, tenant=TENANT)
    assert apply_events(ctx.store, [json.dumps(body)], now=START, source="test").applied == 1
    checked = {"id": "s2", "name": "Geprüft", "kind": "none", "description": "Unterlagen liegen vor", "position": 2,
               "colour": "#4A90E2"}
    later(ctx, "booking.status_changed", {"status": checked}, revision=2, at=START + timedelta(minutes=5),
          booking_id="w1")
    state = client.get(f"/api/tenants/{TENANT}/bookings/w1").json()
    assert state["workflow_status"] == checked
    assert [(s["status"], s["description"], s["position"], s["colour"]) for s in state["status_history"]] == [
        ("Geprüft", "Unterlagen liegen vor", 2, "#4A90E2"), ("Anfrage", "Online angefragt", 1, "#F5A623")]
    wrong = event("booking.status_changed", {"booking_id": "w1", "status": dict(checked, colour="blue")},
                  tenant=TENANT, revision=3)
    report = apply_events(ctx.store, [json.dumps(wrong)], now=START, source="test")
    assert report.dead == 1 and "data.status.colour" in report.dead_reasons[0]


def test_the_booking_lists_withdrawn_and_planned_messages_with_their_states(api):
    ctx, client = api
    book(ctx)
    later(ctx, "booking.rescheduled", {"starts_at": (VISIT + timedelta(days=3)).isoformat(),
                                       "ends_at": (VISIT + timedelta(days=3, hours=1)).isoformat()}, revision=2,
          at=START + timedelta(hours=1))
    state = client.get(f"/api/tenants/{TENANT}/bookings/b1").json()
    states = {(m["kind"], m["state"]) for m in state["messages"]}
    assert ("reminder", "withdrawn") in states and ("reminder", "planned") in states
    [gone] = [m for m in state["messages"] if m["kind"] == "reminder" and m["state"] == "withdrawn"]
    assert gone["channel"] == "email" and gone["withdrawn_at"] and gone["due_at"]
    assert state["markers"]["unconfirmed"] is True and state["status"] == "active"


def test_an_unknown_booking_is_a_404(api):
    _, client = api
    assert client.get(f"/api/tenants/{TENANT}/bookings/nope").status_code == 404


def test_booking_show_prints_the_same_for_a_person_and_refuses_an_unknown_booking(api, tmp_path):
    ctx, _ = api
    book(ctx, consents={})
    env = settings_env(ctx.settings)
    shown = CliRunner().invoke(main, ["booking", "show", TENANT, "b1"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "booking b1 of praxis-test: active" in shown.output
    assert "no_consent: info, confirmation, reminder, feedback" in shown.output.replace("\n  ", "\n")
    as_json = CliRunner().invoke(main, ["booking", "show", TENANT, "b1", "--json"], env=env)
    assert json.loads(as_json.output)["not_planned"][0]["reason"] == "no_consent"
    unknown = CliRunner().invoke(main, ["booking", "show", TENANT, "nope"], env=env)
    assert unknown.exit_code == 1 and "no booking 'nope'" in unknown.output
