"""The defaults walk (R27): a tenant that changed no notification setting, four bookings made two
days ahead, and a simulated clock run past the visits through each branch the requirements
describe: confirmed by the customer; cancelled from the confirmation request's link; moved after
the reminder; late, then released. Every message (kind, channel, local time), marker and counter
is asserted against the default the requirements give it. On SQLite, with fake channels."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from notifier.channels.fake import FakeChannel
from notifier.domain.model import Channel
from notifier.services import apply_events, load_tenants, publish_outbox, sweep_states, timeline_of
from notifier.store import schema as t
from notifier.web.app import create_app
from tests.conftest import START, customer, event, make_context, make_settings
from tests.unit.test_services import run_due

TENANT = "salon-defaults"
BERLIN = ZoneInfo("Europe/Berlin")
VISIT = START + timedelta(days=2, hours=3)  # Thursday 3 December 2026, 10:00 in Berlin; booked Tuesday 07:00
MOVED_TO = VISIT + timedelta(days=1, hours=5)  # Friday 15:00
RESOURCE = {"id": "anna", "name": "Anna Weber", "type": "specialist"}
# operator-level lines only (where the staff webhook goes, the company's details): no `settings`
TENANT_FILE = f"""id: {TENANT}
name: Salon Lindenblatt
timezone: Europe/Berlin
home_region: DE
language: de
channels: [email, sms]
webhook_url: https://crm.example/hooks/notifier
company: {{name: Salon Lindenblatt, address: "Kastanienallee 12, 10435 Berlin", phone: "+49 30 1234567",
          email: team@lindenblatt.example}}
resources:
  - {{id: anna, name: Anna Weber, type: specialist}}
"""


@pytest.fixture
def world(tmp_path: Path, clock) -> Iterator[tuple]:
    channels = {c: FakeChannel(c.value) for c in (Channel.EMAIL, Channel.SMS, Channel.STAFF, Channel.ACTIVITY)}
    ctx = make_context(make_settings(tmp_path, tenants_path=tmp_path / "none"), channels=channels)
    folder = tmp_path / "tenants"
    folder.mkdir()
    (folder / "t.yaml").write_text(TENANT_FILE)
    load_tenants(ctx.store, folder, now=START)
    for booking_id in ("confirmed", "cancelled", "moved", "late"):
        who = customer(f"c-{booking_id}", phone="0151 23456789", email=f"{booking_id}@example.org",
                       consents={"email": True, "sms": True})
        body = event("booking.created", {"booking_id": booking_id, "customer": who, "resource": RESOURCE,
                                         "starts_at": VISIT.isoformat(),
                                         "ends_at": (VISIT + timedelta(hours=1)).isoformat()}, tenant=TENANT)
        assert apply_events(ctx.store, [json.dumps(body)], now=START, source="test",
                            regions=ctx.unavailable).applied == 1
    yield ctx, channels, TestClient(create_app(ctx), follow_redirects=False)
    ctx.close()


def run_until(ctx, end: datetime) -> None:
    """Beat's two sweeps and the workers, at every moment something is due, up to `end`."""
    while True:
        now = ctx.clock.now()
        sweep_states(ctx.store, now=now, regions=ctx.unavailable)
        run_due(ctx)
        with ctx.store.engine.connect() as conn:
            m, b = t.messages.c, t.bookings.c
            due = conn.execute(select(func.min(m.due_at)).where(m.state == "planned", m.due_at > now)).scalar()
            check = conn.execute(select(func.min(b.next_check_at)).where(b.next_check_at > now)).scalar()
        upcoming = [moment for moment in (due, check) if moment is not None]
        nxt = min(upcoming).replace(tzinfo=START.tzinfo) if upcoming else None
        if nxt is None or nxt > end:
            if now < end:
                ctx.clock.set(end)
                continue
            return
        ctx.clock.set(nxt)


def local(moment: datetime) -> str:
    return moment.astimezone(BERLIN).strftime("%a %H:%M")


def sent(ctx, booking_id: str) -> list[tuple[str, str, str]]:
    """(kind, channel, local time) of every message that went out, in order."""
    with ctx.store.engine.connect() as conn:
        m = t.messages.c
        rows = conn.execute(select(m.kind, m.channel, m.sent_at).where(
            m.tenant_id == TENANT, m.booking_id == booking_id, m.state == "sent").order_by(m.sent_at, m.id)).all()
    return [(kind, channel, local(at.replace(tzinfo=START.tzinfo))) for kind, channel, at in rows]


def markers(ctx, booking_id: str) -> list[tuple[str, str]]:
    return [(e["kind"], local(datetime.fromisoformat(e["detail"]["since"])) if "since" in e["detail"] else "")
            for e in timeline_of(ctx.store, TENANT, booking_id) if e["kind"].startswith("marker.")]


def link(ctx, booking_id: str) -> str:
    return "/l/" + ctx.links.token(TENANT, booking_id)


def press(web, url: str, action: str, visit: datetime = VISIT):
    return web.post(f"{url}/{action}", data={"visit": visit.isoformat()})


def later(ctx, type_: str, booking_id: str, data: dict, revision: int) -> None:
    body = event(type_, {"booking_id": booking_id, **data}, tenant=TENANT, revision=revision, at=ctx.clock.now())
    assert apply_events(ctx.store, [json.dumps(body)], now=ctx.clock.now(), source="test",
                        regions=ctx.unavailable).applied == 1


def test_R27_the_defaults_walk_every_branch_past_the_visit(world):
    ctx, channels, web = world
    outbound: list[tuple[str, dict]] = []

    def collect() -> None:
        publish_outbox(ctx.store, lambda type_, tenant, payload: outbound.append((type_, payload)), now=ctx.clock.now())

    # Wednesday 10:10: the confirmation request (R11, a day before, on SMS: the first channel of
    # WhatsApp, SMS, email the customer can be reached on) came ten minutes ago; its page confirms
    # one booking and cancels another (R14: the 2-hour window is still open)
    run_until(ctx, VISIT - timedelta(days=1) + timedelta(minutes=10))
    assert press(web, link(ctx, "confirmed"), "confirm").status_code == 303
    assert press(web, link(ctx, "cancelled"), "cancel").status_code == 303
    collect()
    assert ("booking.confirmed_by_customer", "confirmed") in [(k, p["booking_id"]) for k, p in outbound]
    released = [p for k, p in outbound if k == "slot.released"]
    assert [(p["booking_id"], p["reason"]) for p in released] == [("cancelled", "cancelled_by_customer")]

    # Thursday 08:30: the morning reminder went (R15) and the staff moves one visit to Friday 15:00
    run_until(ctx, VISIT - timedelta(hours=1, minutes=30))
    later(ctx, "booking.rescheduled", "moved", {"starts_at": MOVED_TO.isoformat(),
                                                 "ends_at": (MOVED_TO + timedelta(hours=1)).isoformat()}, 2)
    later(ctx, "booking.visit_marked", "confirmed", {"outcome": "arrived"}, 2)

    # past Friday's visit: the late one is released at 10:30 on Thursday (R16-R18)
    run_until(ctx, MOVED_TO + timedelta(minutes=1))
    later(ctx, "booking.visit_marked", "moved", {"outcome": "arrived"}, 3)
    run_until(ctx, MOVED_TO + timedelta(hours=4))
    collect()

    # R10 info at once; R11 request a day before; R15 reminder at 08:00; R25 feedback 2 h after the end
    assert sent(ctx, "confirmed") == [("info", "sms", "Tue 08:00"), ("confirmation", "sms", "Wed 10:00"),
                                      ("reminder", "sms", "Thu 08:00"), ("feedback", "email", "Thu 13:00")]
    assert markers(ctx, "confirmed") == []  # confirmed: never red (R12)

    # R14: the staff hears at once, by webhook and by email to the company's address (R1, R27); the
    # customer got no card (the info went by SMS), so no cancelled card follows (R22)
    assert sorted(sent(ctx, "cancelled")) == sorted([
        ("info", "sms", "Tue 08:00"), ("confirmation", "sms", "Wed 10:00"),
        ("staff_cancelled", "email", "Wed 10:10"), ("staff_cancelled", "staff", "Wed 10:10")])
    staff_mail = [m for m in channels[Channel.EMAIL].sent if m.metadata["kind"] == "staff_cancelled"]
    assert [m.to for m in staff_mail] == ["team@lindenblatt.example"]

    # R20: the change notice on email and SMS (R27), the email with the updated card (R22); R21: a new
    # reminder for the new day; R11-R13 for the new time: request, the staff's call, the red counter
    assert sent(ctx, "moved") == [
        ("info", "sms", "Tue 08:00"), ("confirmation", "sms", "Wed 10:00"),
        ("activity_unconfirmed", "activity", "Thu 07:00"), ("reminder", "sms", "Thu 08:00"),
        ("change", "email", "Thu 08:30"), ("change", "sms", "Thu 08:30"), ("confirmation", "sms", "Thu 15:00"),
        ("reminder", "sms", "Fri 08:00"), ("activity_unconfirmed", "activity", "Fri 12:00"),
        ("feedback", "email", "Fri 18:00")]
    [change_mail] = [m for m in channels[Channel.EMAIL].sent if m.metadata["kind"] == "change"]
    assert [a.filename for a in change_mail.attachments] == ["termin.ics"]
    assert markers(ctx, "moved") == [("marker.red.on", "Thu 08:00"), ("marker.red.off", ""),  # moved away
                                     ("marker.red.on", "Fri 13:00"), ("marker.red.off", "")]  # marked arrived

    # R12 red 2 h before; R13 the staff's call 3 h before; R16 the follow-up and the orange "late"
    # marker at +5 min, the late counter at +10 min; R17 the staff's call at +15; R18 released at +30
    assert sent(ctx, "late") == [
        ("info", "sms", "Tue 08:00"), ("confirmation", "sms", "Wed 10:00"),
        ("activity_unconfirmed", "activity", "Thu 07:00"), ("reminder", "sms", "Thu 08:00"),
        ("late", "sms", "Thu 10:05"), ("activity_late", "activity", "Thu 10:15"),
        ("staff_released", "email", "Thu 10:30"), ("staff_released", "staff", "Thu 10:30")]
    assert markers(ctx, "late") == [
        ("marker.red.on", "Thu 08:00"), ("marker.red.off", ""), ("marker.late.on", "Thu 10:05"),
        ("marker.late_counter.on", "Thu 10:10")]  # the release takes the booking off the board
    assert "slot.released" in [e["kind"] for e in timeline_of(ctx.store, TENANT, "late")]
    counters = [(p["red"], p["late"], p["late_counter"]) for k, p in outbound
                if k == "counters.changed" and p["booking_id"] == "late"]
    assert counters == [(True, False, False), (False, False, False), (False, True, False), (False, True, True),
                        (False, False, False)]
    assert ("late", "not_marked_arrived") in [(p["booking_id"], p["reason"]) for k, p in outbound
                                              if k == "slot.released"]
