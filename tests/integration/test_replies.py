"""Issue 23 (R3, R11, R14, N5): customers answer by message, end to end on PostgreSQL.

The web app is served by uvicorn on a loopback port; the loopback providers post customers'
messages to its webhooks signed as Twilio and Meta sign them, and refuse (as Twilio does) to send
to a number that texted STOP. Messages go out through the real adapters to those providers and
to a fake mail channel; the staff webhook is a loopback HTTP server."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select

from notifier.bootstrap import build_channels
from notifier.channels.fake import FakeChannel
from notifier.domain.model import Channel
from notifier.fake_providers import FakeProviders
from notifier.services import apply_events, timeline_of
from notifier.store import schema as t
from tests.conftest import START, created, customer, event, make_context, make_settings
from tests.integration.test_browser_links import serve
from tests.unit.test_services import run_due

PUBLIC = "https://notifier.example.org"
NUMBER = "+393471234567"  # the customer's
OURS = "+4930123456"  # the platform's Twilio number
VISIT = START + timedelta(days=3, hours=6)


class StaffHook:
    """The booking system's staff webhook: records every POST."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/staff"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class World:
    def __init__(self, ctx: Any, providers: FakeProviders, mail: FakeChannel, url: str, staff: StaffHook) -> None:
        self.ctx, self.providers, self.mail, self.url, self.staff = ctx, providers, mail, url, staff

    def sms(self, body: str, **kw: Any) -> int:
        return self.providers.reply_sms(f"{self.url}/inbound/twilio", signed_url=f"{PUBLIC}/inbound/twilio",
                                        sender=NUMBER, to=OURS, body=body, **kw)

    def whatsapp(self, body: str, **kw: Any) -> int:
        return self.providers.reply_whatsapp(f"{self.url}/callbacks/meta", sender=NUMBER, body=body, **kw)

    def book(self, booking_id: str, consents: dict[str, bool], starts_at=VISIT, language: str = "it") -> None:
        booking = created(booking_id, tenant="studio-roma", starts_at=starts_at,
                          resource={"id": "giulia", "name": "Giulia", "type": "specialist"},
                          cust=customer("c1", language=language, email="cliente@example.org", phone=NUMBER,
                                        consents=consents))
        assert apply_events(self.ctx.store, [json.dumps(booking)], now=self.ctx.clock.now(),
                            source="test").applied == 1

    def messages(self, booking_id: str) -> dict[str, tuple[str, str]]:
        m = t.messages.c
        with self.ctx.store.engine.connect() as conn:
            rows = conn.execute(select(m.kind, m.channel, m.state).where(m.booking_id == booking_id)).all()
        return {r.kind: (r.channel, r.state) for r in rows}

    def due_of(self, booking_id: str, kind: str) -> Any:
        m = t.messages.c
        with self.ctx.store.engine.connect() as conn:
            return conn.execute(select(m.due_at).where(m.booking_id == booking_id, m.kind == kind)).scalar_one()

    def outbox(self, type_: str) -> list[dict[str, Any]]:
        o = t.outbox.c
        with self.ctx.store.engine.connect() as conn:
            return [r.payload for r in conn.execute(select(o.payload).where(o.type == type_).order_by(o.id))]

    def timeline(self, booking_id: str) -> list[dict[str, Any]]:
        return timeline_of(self.ctx.store, "studio-roma", booking_id)

    def run_due(self) -> dict[str, int]:
        return run_due(self.ctx)


@pytest.fixture
def world(tmp_path, pg_url, clock) -> Iterator[World]:
    from notifier.web.app import create_app

    staff = StaffHook()
    with FakeProviders(clock=lambda: clock.now()) as providers:
        settings = make_settings(tmp_path, database_url=pg_url, twilio_account_sid=providers.account_sid,
                                 twilio_auth_token=providers.auth_token, twilio_from=OURS,
                                 twilio_api_url=providers.url, meta_token=providers.meta_token,
                                 meta_phone_number_id="1055", meta_api_url=providers.url,
                                 meta_app_secret=providers.meta_app_secret, public_url=PUBLIC,
                                 staff_webhook_url=staff.url, webhook_secret="staff-secret-0123456789")
        mail = FakeChannel("email")
        ctx = make_context(settings, channels={**build_channels(settings), Channel.EMAIL: mail})
        setup = event("tenant.settings_updated", {"channels": ["email", "sms", "whatsapp"], "settings": {
            "info": {"channels": ["whatsapp", "sms", "email"], "delay_s": 0},
            "confirmation": {"channels": ["whatsapp", "sms", "email"]},
            "reminder": {"channels": ["whatsapp", "sms", "email"], "offset_s": 7200},
            "quiet_hours": {"enabled": False}}}, tenant="studio-roma")
        assert apply_events(ctx.store, [json.dumps(setup)], now=START, source="test").applied == 1
        sock = socket.create_server(("127.0.0.1", 0))
        stop = serve(create_app(ctx), sock)
        try:
            yield World(ctx, providers, mail, f"http://127.0.0.1:{sock.getsockname()[1]}", staff)
        finally:
            stop()
            sock.close()
            ctx.close()
            staff.close()


# --- R3 opt-out and opt-in by reply ---------------------------------------------------------

def test_R3_stop_by_sms_withdraws_sms_the_reminder_goes_by_email_and_start_restores_it(world, clock):
    world.book("b1", {"sms": True, "email": True})
    assert world.run_due()["sent"] == 1  # the new-booking info, by SMS
    assert world.messages("b1")["reminder"] == ("sms", "planned")

    assert world.sms("Stop") == 200
    # the reminder is planned again on the next channel of its list the customer consented to
    assert world.messages("b1")["reminder"] == ("email", "planned")
    assert world.messages("b1")["confirmation"] == ("email", "planned")
    kinds = [e["kind"] for e in world.timeline("b1")]
    assert "customer.opted_out" in kinds
    [changed] = world.outbox("customer.consent_changed")
    assert changed["customer_id"] == "c1" and changed["channel"] == "sms" and changed["consent"] is False \
        and changed["via"] == "reply" and changed["keyword"] == "stop"
    assert world.sms("STOP") == 200  # again: nothing more
    assert len(world.outbox("customer.consent_changed")) == 1

    clock.set(world.due_of("b1", "reminder"))
    world.run_due()
    assert [m["to"] for m in world.providers.received] == [NUMBER]  # only the info before STOP
    assert any(m.to == "cliente@example.org" for m in world.mail.sent)
    # a booking made meanwhile: no SMS for it either; START gives SMS back
    world.book("b2", {"sms": True, "email": True}, starts_at=VISIT + timedelta(days=2))
    assert world.messages("b2")["reminder"] == ("email", "planned")
    assert world.sms("START") == 200
    assert world.messages("b2")["reminder"] == ("sms", "planned")
    assert world.outbox("customer.consent_changed")[-1]["consent"] is True
    assert "customer.opted_in" in [e["kind"] for e in world.timeline("b2")]
    clock.set(world.due_of("b2", "reminder"))
    assert world.run_due()["sent"] >= 1
    assert [m["to"] for m in world.providers.received].count(NUMBER) >= 2  # Twilio takes SMS again


def test_R3_a_customer_update_from_the_booking_system_keeps_the_opt_out(world):
    world.book("b1", {"sms": True, "email": True})
    assert world.sms("abmelden") == 200  # German
    again = event("customer.updated", {"customer": customer("c1", language="it", email="cliente@example.org",
                                                            phone=NUMBER, consents={"sms": True, "email": True})},
                  tenant="studio-roma", revision=5)
    assert apply_events(world.ctx.store, [json.dumps(again)], now=START, source="test").applied == 1
    assert world.messages("b1")["reminder"] == ("email", "planned")


def test_N5_R3_a_forged_inbound_webhook_is_refused_and_changes_nothing(world):
    world.book("b1", {"sms": True, "email": True})
    assert world.sms("STOP", sign_with="not-the-auth-token") == 403
    assert world.whatsapp("STOP", sign_with="not-the-app-secret") == 403
    assert world.messages("b1")["reminder"] == ("sms", "planned")
    with world.ctx.store.engine.connect() as conn:
        assert conn.execute(select(t.inbound_messages)).all() == []


# --- R11, R14 answers by message act as the page's buttons ---------------------------------------------

def booking_row(world: World, booking_id: str) -> Any:
    with world.ctx.store.engine.connect() as conn:
        return conn.execute(select(t.bookings).where(t.bookings.c.id == booking_id)).one()


def test_R14_an_sms_nein_to_the_confirmation_request_cancels_as_the_page_does(world, clock):
    world.book("b1", {"sms": True, "email": True}, language="de")
    clock.set(world.due_of("b1", "confirmation"))
    world.run_due()
    assert world.messages("b1")["confirmation"] == ("sms", "sent")

    assert world.sms("Nein.") == 200
    assert booking_row(world, "b1").status == "cancelled"
    assert "reminder" not in world.messages("b1")  # withdrawn (never attempted: deleted)
    [cancelled] = world.outbox("booking.cancelled_by_customer")
    assert cancelled["booking_id"] == "b1" and cancelled["via"] == "sms"
    [released] = world.outbox("slot.released")
    assert released["reason"] == "cancelled_by_customer"
    timeline = world.timeline("b1")
    assert [e["detail"]["via"] for e in timeline if e["kind"] == "booking.cancelled"] == ["sms"]
    assert [e["detail"]["outcome"] for e in timeline if e["kind"] == "customer.replied"] == ["cancelled"]
    assert world.sms("nein") == 200  # once more: done before, nothing more (the page's "already")
    assert len(world.outbox("booking.cancelled_by_customer")) == 1
    world.run_due()  # the staff hear of it, as when the customer cancels on the page (R14)
    assert [p["kind"] for p in world.staff.received] == ["staff_cancelled"]


def test_R11_a_whatsapp_quick_reply_confirm_confirms_as_the_page_does(world, clock):
    world.book("b1", {"whatsapp": True, "email": True}, language="de")
    clock.set(world.due_of("b1", "confirmation"))
    world.run_due()
    [request] = [m for m in world.providers.received if m.get("template") == "booking_confirm_v2"]
    assert [b.split(":")[0] for b in request["buttons"]] == ["confirm", "cancel"]

    assert world.whatsapp("Bestätigen", button_payload=request["buttons"][0], replied_to=request["id"]) == 204
    row = booking_row(world, "b1")
    assert row.status == "active" and row.confirmed_at == clock.now()
    [confirmed] = world.outbox("booking.confirmed_by_customer")
    assert confirmed["booking_id"] == "b1" and confirmed["via"] == "whatsapp"
    timeline = world.timeline("b1")
    assert [e["detail"]["via"] for e in timeline if e["kind"] == "booking.confirmed"] == ["whatsapp"]
    assert world.messages("b1").get("activity_unconfirmed", ("", "withdrawn"))[1] == "withdrawn"
    # a tap on cancel afterwards is an answer like the page's: inside the window it cancels
    assert world.whatsapp("Absagen", button_payload=request["buttons"][1], replied_to=request["id"]) == 204
    assert booking_row(world, "b1").status == "cancelled"


def test_R1_R14_an_answer_outside_the_cancel_window_and_an_unknown_reply_reach_the_staff(world, clock):
    world.book("b1", {"sms": True, "email": True}, language="de")
    assert world.run_due()["sent"] == 1  # the info, by SMS
    assert world.sms("Kann ich eine halbe Stunde später kommen?") == 200
    clock.set(VISIT - timedelta(minutes=30))  # inside the last two hours: the page no longer cancels
    assert world.sms("Nein") == 200
    assert booking_row(world, "b1").status == "active"
    world.run_due()
    replies = [p for p in world.staff.received if p["type"] == "customer.replied"]
    # both go in one batch, sent concurrently: in either order
    assert sorted((p["booking_id"], p["kind"], p["reply"]["text"], p["reply"].get("refused") or "")
                  for p in replies) == [("b1", "staff_reply", "Kann ich eine halbe Stunde später kommen?", ""),
                                        ("b1", "staff_reply", "Nein", "outside_window")]
    assert any("Kann ich eine halbe Stunde später kommen?" in p["body"] for p in replies)
    assert [e["detail"]["text"] for e in world.timeline("b1") if e["kind"] == "customer.replied"] == [
        "Kann ich eine halbe Stunde später kommen?", "Nein"]


def test_N5_a_message_from_a_number_no_customer_has_changes_nothing(world):
    world.book("b1", {"sms": True, "email": True})
    assert world.providers.reply_sms(f"{world.url}/inbound/twilio", signed_url=f"{PUBLIC}/inbound/twilio",
                                     sender="+393470000000", to=OURS, body="STOP") == 200
    assert world.messages("b1")["reminder"] == ("sms", "planned")
    with world.ctx.store.engine.connect() as conn:
        assert conn.execute(select(t.inbound_messages.c.outcome)).scalars().all() == ["unmatched"]


# --- R3 a provider's opt-out error counts as the customer's STOP ---------------------------------

def test_R3_twilio_21610_withdraws_sms_as_the_customers_stop_would(world, clock):
    world.providers.opted_out.add(NUMBER)  # they texted STOP to the number before notifier heard any
    world.book("b1", {"sms": True, "email": True})
    assert world.run_due()["failed"] == 1
    assert world.messages("b1")["info"] == ("sms", "failed")
    assert world.messages("b1")["reminder"] == ("email", "planned")
    [changed] = world.outbox("customer.consent_changed")
    assert (changed["channel"], changed["consent"], changed["via"]) == ("sms", False, "provider")


def test_R3_N5_whatsapp_131050_in_a_status_report_withdraws_whatsapp(world, clock):
    from notifier.web.app import meta_signature

    world.book("b1", {"whatsapp": True, "email": True})
    assert world.run_due()["sent"] == 1
    [info] = world.providers.received
    body = json.dumps({"object": "whatsapp_business_account", "entry": [{"changes": [{"value": {"statuses": [
        {"id": info["id"], "status": "failed", "timestamp": "1764576000", "errors": [
            {"code": 131050, "title": "User stopped marketing messages"}]}]}}]}]}).encode()
    import urllib.request

    answer = urllib.request.urlopen(urllib.request.Request(  # noqa: S310 - the test's loopback server
        f"{world.url}/callbacks/meta", data=body, method="POST", headers={
            "Content-Type": "application/json",
            "X-Hub-Signature-256": meta_signature(world.providers.meta_app_secret, body)}))
    assert answer.status == 204
    assert world.messages("b1")["info"] == ("whatsapp", "failed")
    assert world.messages("b1")["reminder"] == ("email", "planned")
    assert world.outbox("customer.consent_changed")[0]["via"] == "provider"
