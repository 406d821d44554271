"""Issue 6, acceptance 2 (R5, N2, P3): the retry policy against a loopback provider on PostgreSQL.

A provider that answers 503 twice then 201 gets exactly one message and three attempt rows;
a 429's Retry-After is honoured; an invalid number fails once, with the reason on the timeline."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from notifier.bootstrap import build_channels
from notifier.fake_providers import FakeProviders
from notifier.services import apply_events, timeline_of
from notifier.store import schema as t
from tests.conftest import START, created, customer, make_context, make_settings
from tests.unit.test_services import run_due

SMS_ONLY = {"email": False, "sms": True}


@pytest.fixture
def providers():
    with FakeProviders() as fake:
        yield fake


@pytest.fixture
def sms_ctx(tmp_path, pg_url, providers, clock):
    settings = make_settings(tmp_path, database_url=pg_url, twilio_account_sid=providers.account_sid,
                             twilio_auth_token=providers.auth_token, twilio_from="+4930123456",
                             twilio_api_url=providers.url, retry_base_s=60)
    ctx = make_context(settings, channels=build_channels(settings))
    with ctx.store.transaction() as tx:  # this tenant switched SMS on (R2)
        tenant = tx.tenant("studio-roma")
    assert "sms" in {c.value for c in tenant.channels}
    yield ctx
    ctx.close()


def book(ctx, phone: str, booking_id: str = "b1") -> None:
    event = created(booking_id, tenant="studio-roma", resource={"id": "giulia", "name": "Giulia", "type": "specialist"},
                    cust=customer(f"c-{booking_id}", language="it", email=None, phone=phone, consents=SMS_ONLY),
                    starts_at=START + timedelta(days=3, hours=6))
    report = apply_events(ctx.store, [json.dumps(event)], now=START, source="test")
    assert report.applied == 1


def info_row(ctx):
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(t.messages).where(t.messages.c.kind == "info")).one()


def attempts(ctx, message_id):
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(t.send_attempts.c.outcome, t.send_attempts.c.provider_code)
                            .where(t.send_attempts.c.message_id == message_id).order_by(t.send_attempts.c.id)).all()


def test_503_twice_then_success_delivers_exactly_once_with_three_attempts(sms_ctx, providers, clock):
    book(sms_ctx, "347 123 4567")  # an Italian number without its prefix: the tenant's home region (R5)
    clock.set(info_row(sms_ctx).due_at)
    providers.script(503, 503)
    assert run_due(sms_ctx)["retried"] == 1
    clock.set(info_row(sms_ctx).due_at)
    assert run_due(sms_ctx)["retried"] == 1
    clock.set(info_row(sms_ctx).due_at)
    assert run_due(sms_ctx)["sent"] == 1
    row = info_row(sms_ctx)
    assert row.state == "sent" and row.provider_message_id.startswith("SM")
    assert [(a.outcome, a.provider_code) for a in attempts(sms_ctx, row.id)] == [
        ("temporary", "503"), ("temporary", "503"), ("sent", "queued")]
    [sms] = providers.received
    assert sms["to"] == "+393471234567" and "Studio Test Roma" in sms["body"]
    assert sms["status_callback"].endswith(f"/callbacks/twilio?message={row.id}")  # its reports name the message


def test_429_retry_after_is_honoured(sms_ctx, providers, clock):
    book(sms_ctx, "+39 347 123 4567")
    due = info_row(sms_ctx).due_at
    clock.set(due)
    providers.script((429, {"Retry-After": "900"}))
    assert run_due(sms_ctx)["retried"] == 1
    assert info_row(sms_ctx).due_at >= due + timedelta(seconds=900)  # not before the provider allows
    clock.set(due + timedelta(seconds=899))
    assert run_due(sms_ctx) == {"sent": 0, "failed": 0, "retried": 0, "withdrawn": 0, "skipped": 0,
                                "reconciled": 0, "lost": 0}
    clock.set(info_row(sms_ctx).due_at)
    assert run_due(sms_ctx)["sent"] == 1 and len(providers.received) == 1


def test_an_invalid_number_fails_once_with_the_reason_on_the_timeline(sms_ctx, providers, clock):
    providers.invalid_numbers.add("+393471234567")
    book(sms_ctx, "+39 347 123 4567")
    clock.set(info_row(sms_ctx).due_at)
    assert run_due(sms_ctx)["failed"] == 1
    clock.set(info_row(sms_ctx).due_at + timedelta(days=1))
    assert run_due(sms_ctx)["failed"] == 0  # never retried
    [failed] = [e for e in timeline_of(sms_ctx.store, "studio-roma", "b1") if e["kind"] == "message.failed"]
    assert "21211" in failed["detail"]["reason"] and "invalid 'To' number" in failed["detail"]["reason"]
    assert providers.received == []


def test_whatsapp_that_fails_for_good_goes_out_as_sms_where_the_customer_consented(tmp_path, pg_url, providers,
                                                                                    clock):
    from tests.conftest import event

    settings = make_settings(tmp_path, database_url=pg_url, twilio_account_sid=providers.account_sid,
                             twilio_auth_token=providers.auth_token, twilio_from="+4930123456",
                             twilio_api_url=providers.url, meta_token=providers.meta_token,
                             meta_phone_number_id="1055", meta_api_url=providers.url)
    ctx = make_context(settings, channels=build_channels(settings))
    setup = event("tenant.settings_updated", {"channels": ["email", "sms", "whatsapp"], "settings": {
        "info": {"channels": ["whatsapp", "sms"], "delay_s": 0}, "fallback": {"whatsapp": "sms"},
        "quiet_hours": {"enabled": False}}}, tenant="studio-roma")
    booking = created("b1", tenant="studio-roma", resource={"id": "giulia", "name": "Giulia", "type": "specialist"},
                      cust=customer("c1", language="it", email=None, phone="+39 347 123 4567",
                                    consents={"whatsapp": True, "sms": True}),
                      starts_at=START + timedelta(days=3, hours=6))
    apply_events(ctx.store, [json.dumps(setup), json.dumps(booking)], now=START, source="test")
    providers.script((400, {}))  # Meta: the number has no WhatsApp account (a permanent 4xx)
    assert run_due(ctx)["failed"] == 1
    assert run_due(ctx)["sent"] == 1  # the fallback, planned by the replan after the failure
    [sms] = providers.received
    assert sms["provider"] == "twilio" and sms["to"] == "+393471234567"
    kinds = [(e["kind"], e["detail"].get("channel")) for e in timeline_of(ctx.store, "studio-roma", "b1")]
    assert ("message.failed", "whatsapp") in kinds and ("message.sent", "sms") in kinds
    ctx.close()
