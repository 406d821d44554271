"""R22: the appointment card imports in a standard parser, and a moved or cancelled booking
updates the same calendar entry."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from icalendar import Calendar

from notifier.channels.base import Attachment, Outgoing
from notifier.channels.email import SMTPChannel
from notifier.domain.model import Booking, BookingStatus, Resource, Tenant
from notifier.rendering.calendar import calendar_card

BERLIN = ZoneInfo("Europe/Berlin")
TENANT = Tenant(id="salon", name="Salon", company={"name": "Salon Linde", "address": "Hauptstr. 1, Berlin"})
RESOURCE = Resource(id="anna", tenant_id="salon", name="Anna Weber")
STARTS = datetime(2026, 3, 29, 7, 30, tzinfo=UTC)  # 09:30 in Berlin, the day summer time begins
BOOKING = Booking(id="b1", tenant_id="salon", customer_id="c", resource_id="anna", starts_at=STARTS,
                  ends_at=STARTS + timedelta(hours=1), created_at=STARTS - timedelta(days=3),
                  scheduled_at=STARTS - timedelta(days=3), revision=1)


def card(booking):
    data, method = calendar_card(booking, RESOURCE, TENANT, zone=BERLIN, title="Termin bei Salon Linde",
                                 stamp=STARTS - timedelta(days=1))
    cal = Calendar.from_ical(data)
    [event] = cal.walk("VEVENT")
    return cal, event, method


def test_R22_the_card_parses_with_the_local_time_and_zone():
    cal, event, method = card(BOOKING)
    assert method == "REQUEST" and str(cal["METHOD"]) == "REQUEST"
    start = event.decoded("DTSTART")
    assert start.tzinfo is not None and start.utcoffset() == timedelta(hours=2) and start.hour == 9
    assert event.decoded("DTSTART") == STARTS
    assert cal.walk("VTIMEZONE"), "the zone travels with the card"
    assert "Salon Linde" in str(event["LOCATION"])


def test_R22_a_moved_booking_updates_the_same_entry_and_a_cancelled_one_removes_it():
    _, first, _ = card(BOOKING)
    moved = replace(BOOKING, starts_at=STARTS + timedelta(days=1), ends_at=STARTS + timedelta(days=1, hours=1),
                    revision=2)
    _, second, _ = card(moved)
    cancelled = replace(moved, status=BookingStatus.CANCELLED, revision=3)
    cal, third, method = card(cancelled)
    assert str(first["UID"]) == str(second["UID"]) == str(third["UID"])
    assert int(first["SEQUENCE"]) < int(second["SEQUENCE"]) < int(third["SEQUENCE"])
    assert method == "CANCEL" and str(third["STATUS"]) == "CANCELLED"


def test_R22_the_email_carries_the_card_as_text_calendar():
    data, method = calendar_card(BOOKING, RESOURCE, TENANT, zone=BERLIN, title="Termin", stamp=STARTS)
    mail = SMTPChannel(host="127.0.0.1", port=1, mail_from="n@example.org").build(Outgoing(
        message_id=1, idempotency_key="salon/b1/info/customer", to="k@example.org", text="Hallo", subject="Termin",
        attachments=(Attachment("termin.ics", f"text/calendar; method={method}", data),)))
    [part] = [p for p in mail.walk() if p.get_content_type() == "text/calendar"]
    assert part.get_param("method") == "REQUEST" and part.get_filename() == "termin.ics"
    assert Calendar.from_ical(part.get_content()).walk("VEVENT")
