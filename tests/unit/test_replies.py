"""Issue 23 (R3, R11, R14): what a customer's message back means, read as a whole in de, it, ru, en."""

from __future__ import annotations

import pytest

from notifier.domain.replies import Intent, opted_out_by_error, read_reply


@pytest.mark.parametrize("text", ["STOP", "stop", " Stop. ", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT",
                                  "Stopp", "ABMELDEN", "disiscrivimi", "СТОП", "Отписаться!"])
def test_R3_opt_out_words(text):
    assert read_reply(text) is Intent.OPT_OUT


@pytest.mark.parametrize("text", ["START", "unstop", "Anmelden", "iscrivimi", "старт"])
def test_R3_opt_in_words(text):
    assert read_reply(text) is Intent.OPT_IN


@pytest.mark.parametrize("text", ["Ja", "ja!", "Yes", "OK", "Sì", "Si\u0300", "si", "Да", "да.", "Bestätigen"])
def test_R11_confirming_words(text):
    assert read_reply(text) is Intent.CONFIRM


@pytest.mark.parametrize("text", ["Nein", "nein.", "No", "Нет", "Annulla", "absagen"])
def test_R14_cancelling_words(text):
    assert read_reply(text) is Intent.CANCEL


@pytest.mark.parametrize("text", ["Ja, aber später", "Kann ich um 16 Uhr kommen?", "", None, "stop it", "neinnein"])
def test_R1_anything_else_means_nothing_known(text):
    assert read_reply(text) is None


def test_R11_R14_a_quick_reply_button_is_read_by_its_payload_whatever_its_label():
    assert read_reply("Termin bestätigen", button_payload="confirm:4711") is Intent.CONFIRM
    assert read_reply("Absagen", button_payload="cancel") is Intent.CANCEL
    assert read_reply("Ja", button_payload="something-else") is Intent.CONFIRM  # not ours: the words count


def test_R3_provider_errors_that_mean_the_customer_opted_out():
    assert opted_out_by_error("twilio 21610: the recipient unsubscribed (replied STOP)")
    assert opted_out_by_error("whatsapp 131050: User stopped marketing messages")
    assert opted_out_by_error("twilio 21610")
    assert not opted_out_by_error("twilio 21211: invalid 'To' number")
    assert not opted_out_by_error("whatsapp 1310500: ...") and not opted_out_by_error(None)


def test_N5_inbound_webhooks_refuse_unsigned_and_oversized_bodies(ctx):
    from tests.conftest import api_client

    client = api_client(ctx)
    form = {"MessageSid": "SM1", "From": "+4915123456789", "To": "+4930123456", "Body": "STOP"}
    assert client.post("/inbound/twilio", data=form).status_code == 403  # no auth token configured: none valid
    assert client.post("/inbound/twilio", data=form, headers={"X-Twilio-Signature": "forged="}).status_code == 403
    big = b"Body=" + b"x" * ctx.settings.max_body_bytes
    assert client.post("/inbound/twilio", content=big, headers={
        "Content-Type": "application/x-www-form-urlencoded"}).status_code == 413


# --- who a reply comes from (SQLite; the end-to-end tests are tests/integration/test_replies.py) ----

PHONE = "+393471234567"


def _book(ctx, tenant: str, booking_id: str) -> None:
    import json

    from notifier.services import apply_events
    from tests.conftest import START, created, customer

    booking = created(booking_id, tenant=tenant, cust=customer(f"c-{booking_id}", phone=PHONE,
                                                                consents={"sms": True, "email": True}))
    assert apply_events(ctx.store, [json.dumps(booking)], now=START, source="test").applied == 1


def _opted_out(ctx, tenant: str, customer_id: str) -> frozenset:
    with ctx.store.transaction() as tx:
        return tx.customer(tenant, customer_id).opted_out


def _sms(ctx, text: str, to: str, sid: str) -> str:
    from notifier.domain.model import Channel
    from notifier.inbound import Inbound, receive_reply

    return receive_reply(ctx.store, Inbound("twilio", Channel.SMS, sid, sender=PHONE, to=to, text=text),
                         now=ctx.clock.now(), valid_after_visit_s=3600).status


def test_R3_a_stop_to_a_tenants_own_number_is_that_tenants_and_the_shared_number_the_others(ctx):
    from dataclasses import replace

    from notifier.domain.model import Channel

    _book(ctx, "studio-roma", "r1")
    _book(ctx, "salon-berlin", "s1")
    with ctx.store.transaction() as tx:
        tx.save_tenant(replace(tx.tenant("studio-roma"), sender={"sms_from": "+390600000001"}), ctx.clock.now())
    assert _sms(ctx, "STOP", "+390600000001", "SM1") == "opted_out"
    assert _opted_out(ctx, "studio-roma", "c-r1") == {Channel.SMS}
    assert _opted_out(ctx, "salon-berlin", "c-s1") == frozenset()
    assert _sms(ctx, "STOP", "+390600000001", "SM1") == "duplicate"  # the same webhook again
    assert _sms(ctx, "Stopp", "+4930123456", "SM2") == "opted_out"  # the shared number: Berlin has none of its own
    assert _opted_out(ctx, "salon-berlin", "c-s1") == {Channel.SMS}
    # Twilio takes YES as an opt-in too: so does notifier, besides reading it as an answer
    _sms(ctx, "Yes", "+390600000001", "SM3")
    assert _opted_out(ctx, "studio-roma", "c-r1") == frozenset()
