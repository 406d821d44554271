"""Issue 6, acceptance 2 (N5, N2, R20): provider status callbacks on PostgreSQL: forged or
missing signatures are refused with 403; replayed out of order they end in the right status,
each status once on the timeline."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from notifier.bootstrap import build_channels
from notifier.fake_providers import FakeProviders
from notifier.store import schema as t
from notifier.web.app import meta_signature, twilio_signature
from tests.conftest import api_client, make_context, make_settings
from tests.integration.test_providers import book, info_row, run_due

PUBLIC = "https://notifier.example.org"


@pytest.fixture
def sent(tmp_path, pg_url, clock):
    with FakeProviders() as providers:
        settings = make_settings(tmp_path, database_url=pg_url, twilio_account_sid=providers.account_sid,
                                 twilio_auth_token=providers.auth_token, twilio_from="+4930123456",
                                 twilio_api_url=providers.url, public_url=PUBLIC, meta_app_secret="app-secret-1234")
        ctx = make_context(settings, channels=build_channels(settings))
        book(ctx, "+39 347 123 4567")
        clock.set(info_row(ctx).due_at)
        assert run_due(ctx)["sent"] == 1

        yield ctx, api_client(ctx), info_row(ctx)
        ctx.close()


def twilio_post(client, ctx, form: dict[str, str], signature: str | None = "valid"):
    headers = {}
    if signature == "valid":
        headers["X-Twilio-Signature"] = twilio_signature(ctx.settings.twilio_auth_token, PUBLIC + "/callbacks/twilio",
                                                         form)
    elif signature:
        headers["X-Twilio-Signature"] = signature
    return client.post("/callbacks/twilio", data=form, headers=headers)


def state_and_timeline(ctx, message_id):
    with ctx.store.engine.connect() as conn:
        state = conn.execute(select(t.messages.c.state).where(t.messages.c.id == message_id)).scalar_one()
        kinds = conn.execute(select(t.timeline.c.kind).where(t.timeline.c.message_id == message_id)
                             .order_by(t.timeline.c.id)).scalars().all()
    return state, kinds


def test_N5_forged_or_missing_twilio_signatures_are_refused(sent):
    ctx, client, row = sent
    form = {"MessageSid": row.provider_message_id, "MessageStatus": "delivered"}
    assert twilio_post(client, ctx, form, signature=None).status_code == 403
    assert twilio_post(client, ctx, form, signature="AAAAforged=").status_code == 403
    tampered = dict(form, MessageStatus="read")
    signed_for_other = twilio_signature(ctx.settings.twilio_auth_token, PUBLIC + "/callbacks/twilio", form)
    assert twilio_post(client, ctx, tampered, signature=signed_for_other).status_code == 403
    assert state_and_timeline(ctx, row.id)[0] == "sent"


def test_N5_callbacks_out_of_order_and_repeated_end_in_the_right_status(sent):
    ctx, client, row = sent
    for status in ("read", "delivered", "sent", "read", "delivered"):
        response = twilio_post(client, ctx, {"MessageSid": row.provider_message_id, "MessageStatus": status})
        assert response.status_code == 204
    state, kinds = state_and_timeline(ctx, row.id)
    assert state == "read"
    assert kinds.count("message.read") == 1 and kinds.count("message.delivered") == 0  # late news is ignored


def test_N5_meta_callbacks_need_the_app_secret_signature(sent):
    ctx, client, row = sent
    body = json.dumps({"object": "whatsapp_business_account", "entry": [{"changes": [{"value": {"statuses": [
        {"id": row.provider_message_id, "status": "delivered", "timestamp": "1764576000"}]}}]}]}).encode()
    assert client.post("/callbacks/meta", content=body).status_code == 403
    assert client.post("/callbacks/meta", content=body,
                       headers={"X-Hub-Signature-256": meta_signature("wrong-secret", body)}).status_code == 403
    signed = {"X-Hub-Signature-256": meta_signature("app-secret-1234", body)}
    # the message went out through Twilio: a Meta callback cannot move it (ids are per provider, issue 15)
    foreign = client.post("/callbacks/meta", content=body, headers=signed)
    assert foreign.status_code == 409 and state_and_timeline(ctx, row.id)[0] == "sent"
    with ctx.store.engine.begin() as conn:  # as if Meta had sent it
        conn.execute(t.messages.update().where(t.messages.c.id == row.id).values(provider="meta"))
    good = client.post("/callbacks/meta", content=body, headers=signed)
    assert good.status_code == 204 and state_and_timeline(ctx, row.id)[0] == "delivered"
    timeline = client.get(f"/api/tenants/studio-roma/bookings/{row.booking_id}/timeline").json()
    assert [e["kind"] for e in timeline][-1] == "message.delivered"


def test_N2_a_report_on_a_copy_we_never_heard_of_keeps_the_message_it_names(sent):
    """Issue 17: Twilio posts to the StatusCallback URL the message was sent with, which names
    it (`?message=`); Meta returns the message's biz_opaque_callback_data. A report whose copy
    no message has recorded (its answer was lost) is kept with that name, for dispatch to find."""
    ctx, client, row = sent
    url = f"{PUBLIC}/callbacks/twilio?message={row.id}"
    form = {"MessageSid": "SMlost", "MessageStatus": "sent"}
    answer = client.post(f"/callbacks/twilio?message={row.id}", data=form,
                         headers={"X-Twilio-Signature": twilio_signature(ctx.settings.twilio_auth_token, url, form)})
    assert answer.status_code == 204
    statuses = [{"id": "wamid.lost", "status": "delivered", "timestamp": "1764576000",
                 "biz_opaque_callback_data": str(row.id)},
                {"id": "wamid.junk", "status": "sent", "timestamp": "1764576000",
                 "biz_opaque_callback_data": "12; DROP TABLE messages"}]  # not one of our names: kept without
    body = json.dumps({"object": "whatsapp_business_account",
                       "entry": [{"changes": [{"value": {"statuses": statuses}}]}]}).encode()
    answer = client.post("/callbacks/meta", content=body,
                         headers={"X-Hub-Signature-256": meta_signature("app-secret-1234", body)})
    assert answer.status_code == 204
    p = t.pending_statuses.c
    with ctx.store.engine.connect() as conn:
        kept = conn.execute(select(p.provider, p.provider_message_id, p.message_id).order_by(p.id)).all()
    assert [tuple(k) for k in kept] == [("twilio", "SMlost", row.id), ("meta", "wamid.lost", row.id),
                                        ("meta", "wamid.junk", None)]
