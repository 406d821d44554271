"""What planning leaves out reaches the timeline once per reason, and a metric (issue 19).
On the embedded store (SQLite) through the ingester's use case. R3, R5, R11, N3."""

from __future__ import annotations

import json
from datetime import timedelta

from prometheus_client import REGISTRY

from notifier.services import apply_events, sweep_states, timeline_of
from tests.conftest import START, created, customer, event

TENANT = "clinic-full"  # every kind at its default, email and SMS switched on
RESOURCE = {"id": "dr-weiss", "name": "Dr. Weiss", "type": "specialist"}


def apply(ctx, *events):
    return apply_events(ctx.store, [json.dumps(e) for e in events], now=ctx.clock.now(), source="test")


def not_planned(ctx, booking_id="b1"):
    return [e["detail"] for e in timeline_of(ctx.store, TENANT, booking_id) if e["kind"] == "message.not_planned"]


def kinds_planned(ctx, booking_id="b1"):
    return {e["detail"]["kind"] for e in timeline_of(ctx.store, TENANT, booking_id) if e["kind"] == "message.planned"}


def counted(reason: str, kind: str) -> float:
    return REGISTRY.get_sample_value("notifier_not_planned_total", {"reason": reason, "kind": kind}) or 0.0


def test_R11_a_booking_30_minutes_ahead_says_once_why_no_confirmation_and_replanning_adds_nothing(ctx):
    before = counted("inside_lead_time", "confirmation")
    booked = START + timedelta(hours=2)  # 09:00 in Berlin
    ctx.clock.set(booked)
    apply(ctx, created(tenant=TENANT, starts_at=booked + timedelta(minutes=30), resource=RESOURCE, at=booked))
    [entry] = not_planned(ctx)
    assert entry["reason"] == "inside_lead_time"
    assert set(entry["kinds"]) == {"confirmation", "reminder", "activity_unconfirmed"}
    assert "sms" in entry["channels"] and "email" in entry["channels"]
    assert "info" in kinds_planned(ctx)
    assert counted("inside_lead_time", "confirmation") == before + 1
    # the same state planned again (a customer update that changes nothing of the plan, a sweep)
    apply(ctx, event("customer.updated", {"customer": customer()}, tenant=TENANT, revision=1, at=booked))
    sweep_states(ctx.store, now=booked + timedelta(minutes=1))
    assert len(not_planned(ctx)) == 1
    assert counted("inside_lead_time", "confirmation") == before + 1


def test_R5_a_new_reason_is_written_when_the_state_changes(ctx):
    visit = START + timedelta(days=2, hours=4)
    apply(ctx, created(tenant=TENANT, starts_at=visit, resource=RESOURCE,
                       cust=customer(consents={"email": True, "sms": True}, phone="0151 23456789")))
    assert not_planned(ctx) == []
    # the customer now gives an Italian landline: SMS cannot go there, email still does
    apply(ctx, event("customer.updated", {"customer": customer(consents={"email": True, "sms": True},
                                                               phone="+39 06 6982 1234")},
                     tenant=TENANT, revision=1))
    [entry] = not_planned(ctx)
    assert entry["reason"] == "number_cannot_receive" and entry["channels"] == ["sms"]
