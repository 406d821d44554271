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

from notifier.access import create_key
from notifier.cli import main
from notifier.services import apply_events, load_tenants, timeline_of
from notifier.web.app import create_app
from tests.conftest import START, customer, event, settings_env

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


# each reason: how to make it happen, and what the one entry with it must say
SCENARIOS = {
    "inside_lead_time": (lambda ctx: book(ctx, at=START + timedelta(hours=2), starts=START + timedelta(hours=2,
                                                                                                    minutes=30)),
                         {"confirmation", "reminder", "activity_unconfirmed"}),
    "quiet_hours_after_visit": (lambda ctx: book(ctx, at=START + timedelta(hours=15),  # 22:00, for 07:30
                                                 starts=START + timedelta(days=1, minutes=30)), {"info"}),
    "visit_started": (lambda ctx: book(ctx, at=VISIT + timedelta(minutes=20)),
                      {"info", "confirmation", "reminder", "activity_unconfirmed"}),
    "privacy_not_accepted": (lambda ctx: book(ctx, created_via_online_booking=True, privacy_accepted=False),
                             {"reminder"}),
    "no_show": (lambda ctx: (book(ctx), later(ctx, "booking.visit_marked", {"outcome": "no_show"}, revision=2,
                                              at=VISIT + timedelta(minutes=40))), {"feedback"}),
    "switched_off_for_resource": (lambda ctx: book(ctx, resource={"id": "room-2", "name": "Raum 2",
                                                                  "type": "equipment"}), {"feedback"}),
    "channel_switched_off": (lambda ctx: (email_only(ctx), book(ctx, phone=MOBILE, consents={"sms": True, "email": True}),
                                          later(ctx, "booking.rescheduled", {
                                              "starts_at": (VISIT + timedelta(days=1)).isoformat(),
                                              "ends_at": (VISIT + timedelta(days=1, hours=1)).isoformat()},
                                              revision=2, at=START + timedelta(hours=1))),
                             {"change"}),  # change notices by SMS only
    "no_consent": (lambda ctx: book(ctx, consents={}), {"info", "confirmation", "reminder", "feedback"}),
    "channel_unavailable_in_region": (lambda ctx: book(ctx, phone=MOBILE, consents={"whatsapp": True, "email": True},
                                                       regions={"whatsapp": ["DE"]}),
                                      {"info", "confirmation", "reminder"}),
    "no_address": (lambda ctx: book(ctx, email=None), {"info", "confirmation", "reminder", "feedback"}),
    "invalid_number": (lambda ctx: book(ctx, phone="12", consents={"sms": True, "email": True}),
                       {"info", "confirmation", "reminder"}),
    "number_cannot_receive": (lambda ctx: book(ctx, phone="030 1234567", consents={"sms": True, "email": True}),
                              {"info", "confirmation", "reminder"}),
    "no_reachable_channel": (lambda ctx: book(ctx, email=None, phone="030 1234567",
                                              consents={"sms": True, "email": True}),
                             {"info", "confirmation", "reminder"}),  # feedback goes by email only: no_address
}


@pytest.mark.parametrize("reason", sorted(SCENARIOS))
def test_each_not_planned_reason_is_on_the_timeline_and_in_the_booking_once(api, reason):
    ctx, client = api
    make, kinds = SCENARIOS[reason]
    make(ctx)
    on_timeline = [e["detail"] for e in timeline_of(ctx.store, TENANT, "b1")
                   if e["kind"] == "message.not_planned" and e["detail"]["reason"] == reason]
    assert len(on_timeline) == 1, [(e["kind"], e["detail"]) for e in timeline_of(ctx.store, TENANT, "b1")]
    answer = client.get(f"/api/tenants/{TENANT}/bookings/b1")
    assert answer.status_code == 200
    in_booking = [n for n in answer.json()["not_planned"] if n["reason"] == reason]
    assert len(in_booking) == 1
    assert set(on_timeline[0]["kinds"]) == set(in_booking[0]["kinds"]) == kinds
    assert in_booking[0]["since"] is not None


def test_R5_a_landline_gets_no_sms_and_email_goes_where_consented(api):
    """The two cases of the issue: an Italian tenant's customer writing a German mobile without
    its prefix (an Italian landline), a German tenant's customer writing an Italian mobile
    without its prefix (a German landline)."""
    ctx, client = api
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
    with ctx.store.transaction() as tx:
        assert tx.customer(TENANT, "c1").phone == "+493471234567"  # stored as E.164 all the same (R5)
        assert tx.customer(TENANT, "c2").phone == "+3901512345678"


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
