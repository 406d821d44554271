"""The customer's links (R11, R14, R23, N4): a GET shows, a POST acts; links are signed, scoped
to one booking and one action, expire, and a used or stale link says so and changes nothing."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from notifier.services import apply_events, publish_outbox, timeline_of
from notifier.store import schema as t
from notifier.web.app import create_app
from tests.conftest import START, created, customer, event

TENANT = "clinic-full"
VISIT = START + timedelta(days=3, hours=3)  # Friday 10:00 in Berlin


@pytest.fixture
def web(ctx):
    booking = created("b1", tenant=TENANT, starts_at=VISIT, cust=customer("c1"),
                      resource={"id": "dr-weiss", "name": "Dr. Weiss", "type": "specialist"})
    apply_events(ctx.store, [json.dumps(booking)], now=START, source="test")
    return TestClient(create_app(ctx))


def link(ctx, action, booking_id="b1", starts_at=VISIT, issued_at=None):
    """Issued at the app's (simulated) clock, as dispatch issues them, unless `issued_at` says when."""
    return "/l/" + ctx.links.token(TENANT, booking_id, action, starts_at, issued_at=issued_at or ctx.clock.now())


def booking_row(ctx):
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(t.bookings).where(t.bookings.c.id == "b1")).one()


def outbound(ctx):
    sent = []
    publish_outbox(ctx.store, lambda type_, tenant, payload: sent.append((type_, payload["booking_id"])),
                   now=ctx.clock.now())
    return sent


def test_N4_a_get_shows_the_visit_and_changes_nothing(ctx, web):
    page = web.get(link(ctx, "confirm"))
    assert page.status_code == 200
    assert "Freitag, 4. Dezember 2026, 10:00" in page.text and "Dr. Weiss" in page.text  # German, local time
    assert 'id="confirm"' in page.text and 'method="post"' in page.text
    assert booking_row(ctx).confirmed_at is None and outbound(ctx) == []


def test_R11_confirming_withdraws_the_reminders_to_confirm_and_tells_the_booking_system(ctx, web):
    page = web.post(link(ctx, "confirm"))
    assert page.status_code == 200 and "Ihr Termin ist bestätigt" in page.text
    assert booking_row(ctx).confirmed_at == START
    with ctx.store.engine.connect() as conn:  # withdrawn before any attempt: no row left to send
        left = conn.execute(select(t.messages.c.kind)
                            .where(t.messages.c.kind.in_(["confirmation", "activity_unconfirmed"]))).all()
    assert left == []
    withdrawn = {e["detail"]["kind"] for e in timeline_of(ctx.store, TENANT, "b1") if e["kind"] == "message.withdrawn"}
    assert withdrawn == {"confirmation", "activity_unconfirmed"}
    assert outbound(ctx) == [("booking.confirmed_by_customer", "b1")]
    again = web.post(link(ctx, "confirm"))  # a replayed link says so and does nothing more
    assert "bereits erledigt" in again.text and outbound(ctx) == []


def test_R14_cancelling_inside_the_window_frees_the_slot_and_tells_the_staff(ctx, web):
    page = web.post(link(ctx, "cancel"))
    assert page.status_code == 200 and "Ihr Termin ist abgesagt" in page.text
    row = booking_row(ctx)
    assert (row.status, row.cancelled_by) == ("cancelled", "customer")
    assert sorted(outbound(ctx)) == [("booking.cancelled_by_customer", "b1"), ("slot.released", "b1")]
    with ctx.store.engine.connect() as conn:
        planned = conn.execute(select(t.messages.c.kind).where(t.messages.c.state == "planned")).scalars().all()
    assert planned == ["staff_cancelled"]
    assert "slot.released" in [e["kind"] for e in timeline_of(ctx.store, TENANT, "b1")]


def test_R11_R14_R27_the_confirmation_requests_link_cancels_under_the_defaults(ctx, web):
    """The request goes a day before the visit; a cancel window of 24 h closed as it arrived (409
    ten minutes later). The default window closes 2 h before the visit."""
    with ctx.store.engine.connect() as conn:
        [asked_at] = conn.execute(select(t.messages.c.due_at).where(t.messages.c.kind == "confirmation")).scalars()
    assert asked_at == VISIT - timedelta(days=1)
    ctx.clock.set(asked_at + timedelta(minutes=10))
    page = web.post(link(ctx, "cancel"))
    assert page.status_code == 200 and "Ihr Termin ist abgesagt" in page.text
    assert booking_row(ctx).cancelled_by == "customer"


def test_R23_cancelling_outside_the_window_is_refused(ctx, web):
    ctx.clock.set(VISIT - timedelta(hours=1))  # the window closes 2 hours before
    page = web.post(link(ctx, "cancel"))
    assert page.status_code == 409 and "nicht mehr möglich" in page.text
    assert booking_row(ctx).status == "active" and outbound(ctx) == []


def test_N4_tampered_cross_booking_and_stale_links_are_refused(ctx, web):
    token = link(ctx, "confirm")
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    assert web.post(forged).status_code == 400 and "ungültig" not in web.post(forged).text  # no tenant: English
    assert "not valid" in web.post(forged).text
    other = created("b2", tenant=TENANT, starts_at=VISIT, cust=customer("c2"),
                    resource={"id": "dr-weiss", "name": "Dr. Weiss", "type": "specialist"})
    apply_events(ctx.store, [json.dumps(other)], now=START, source="test")
    # a token acts on its own booking only: b2's cancel link leaves b1 as it was
    assert web.post(link(ctx, "cancel", booking_id="b2")).status_code == 200
    assert booking_row(ctx).status == "active" and booking_row(ctx).confirmed_at is None
    moved = event("booking.rescheduled", {"booking_id": "b1", "starts_at": (VISIT + timedelta(days=1)).isoformat(),
                                          "ends_at": (VISIT + timedelta(days=1, hours=1)).isoformat()},
                  tenant=TENANT, revision=2)
    apply_events(ctx.store, [json.dumps(moved)], now=START, source="test")
    stale = web.post(token)  # made for the old time
    assert stale.status_code == 409 and "verlegt" in stale.text and booking_row(ctx).confirmed_at is None
    assert web.post(link(ctx, "confirm", starts_at=VISIT + timedelta(days=1))).status_code == 200


def test_N4_an_expired_link_is_refused(ctx, web):
    old = link(ctx, "confirm", issued_at=ctx.clock.now() - timedelta(seconds=ctx.links.max_age_s + 60))
    page = web.post(old)
    assert page.status_code == 400 and "expired" in page.text and booking_row(ctx).confirmed_at is None


def test_workers_starting_at_once_agree_on_one_development_secret(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from notifier.links import link_secret

    with ThreadPoolExecutor(16) as pool:
        secrets = set(pool.map(lambda _: link_secret("", tmp_path), range(64)))
    assert len(secrets) == 1 and len(secrets.pop()) >= 32
    assert [p.name for p in tmp_path.iterdir()] == ["link-secret"]  # no spare files left behind
