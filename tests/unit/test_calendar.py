"""R22: the appointment card imports in the parsers calendars use (icalendar, vobject), and a
moved or cancelled booking updates the same calendar entry: same UID, higher SEQUENCE, the same
ORGANIZER and ATTENDEE."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from icalendar import Calendar

from notifier.channels.base import Attachment, Outgoing
from notifier.channels.email import SMTPChannel
from notifier.domain.model import Booking, BookingStatus, Customer, Resource, Tenant
from notifier.rendering.calendar import calendar_card

BERLIN = ZoneInfo("Europe/Berlin")
TENANT = Tenant(id="salon", name="Salon", company={"name": "Salon Linde", "address": "Hauptstr. 1, Berlin"})
RESOURCE = Resource(id="anna", tenant_id="salon", name="Anna Weber")
CUSTOMER = Customer(id="c", tenant_id="salon", name="Erika Mustermann", email="erika@example.org", language="de")
ORGANIZER = "Salon Linde <termine@linde.example>"
STARTS = datetime(2026, 3, 29, 7, 30, tzinfo=UTC)  # 09:30 in Berlin, the day summer time begins
BOOKING = Booking(id="b1", tenant_id="salon", customer_id="c", resource_id="anna", starts_at=STARTS,
                  ends_at=STARTS + timedelta(hours=1), created_at=STARTS - timedelta(days=3),
                  scheduled_at=STARTS - timedelta(days=3), revision=1)


def card(booking):
    data, method = calendar_card(booking, RESOURCE, TENANT, CUSTOMER, zone=BERLIN, organizer=ORGANIZER,
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
    data, method = calendar_card(BOOKING, RESOURCE, TENANT, CUSTOMER, zone=BERLIN, organizer=ORGANIZER, stamp=STARTS)
    mail = SMTPChannel(host="127.0.0.1", port=1, mail_from="n@example.org").build(Outgoing(
        message_id=1, idempotency_key="salon/b1/info/customer", to="k@example.org", text="Hallo", subject="Termin",
        attachments=(Attachment("termin.ics", f"text/calendar; method={method}", data),)))
    # as calendars mail an invitation: an alternative of the text that Gmail and Outlook apply, and a file
    [alternative] = [p for p in mail.walk() if p.get_content_type() == "multipart/alternative"]
    [part] = [p for p in alternative.iter_parts() if p.get_content_type() == "text/calendar"]
    assert part.get_param("method") == "REQUEST" and part.get_content_disposition() is None
    assert Calendar.from_ical(part.get_content()).walk("VEVENT")
    [file] = [p for p in mail.walk() if p.get_filename() == "termin.ics"]
    assert file.get_content_type() == "application/ics" and file.get_content() == data


def test_R22_the_card_names_organizer_attendee_and_the_visit_and_imports_in_a_second_parser():
    """What Google and Outlook need to apply a later card to the entry they hold: the company as
    ORGANIZER under the address its mail comes from, the customer as ATTENDEE; a title that names
    the visit and the company; a VTIMEZONE of the visit's days, not of 1970 to 2037. vobject, the
    parser CalDAV servers use, reads it to the same instant."""
    import vobject

    service = replace(BOOKING, service="Haarschnitt")
    for booking in (service, replace(service, status=BookingStatus.CANCELLED, revision=2)):
        data, method = calendar_card(booking, RESOURCE, TENANT, CUSTOMER, zone=BERLIN, organizer=ORGANIZER,
                                     stamp=STARTS)
        cal = Calendar.from_ical(data)
        assert Calendar.from_ical(cal.to_ical()).to_ical() == cal.to_ical()  # a lossless round trip
        [event] = cal.walk("VEVENT")
        assert str(event["ORGANIZER"]) == "mailto:termine@linde.example"
        assert event["ORGANIZER"].params["CN"] == "Salon Linde"
        assert str(event["ATTENDEE"]) == "mailto:erika@example.org"
        assert event["ATTENDEE"].params["CN"] == "Erika Mustermann"
        assert event["ATTENDEE"].params["RSVP"] == "FALSE"  # nothing to answer: the link does that
        assert str(event["SUMMARY"]) == "Haarschnitt, Salon Linde"
        [zone] = cal.walk("VTIMEZONE")
        observances = zone.walk("STANDARD") + zone.walk("DAYLIGHT")
        assert len(observances) <= 3, "the transitions around the visit, not every one since 1970"
        assert {o.decoded("DTSTART").year for o in observances} == {2026}

        [parsed] = vobject.readComponents(data.decode())
        assert parsed.method.value == method
        assert parsed.vevent.dtstart.value == STARTS and parsed.vevent.dtstart.value.utcoffset() == timedelta(hours=2)
        assert parsed.vevent.organizer.value == "mailto:termine@linde.example"
        assert parsed.vevent.attendee.value == "mailto:erika@example.org"
        assert parsed.vevent.uid.value == f"booking-salon-{BOOKING.id}@notifier"
    assert method == "CANCEL" and parsed.vevent.status.value == "CANCELLED"


def test_R22_a_customer_without_email_gets_a_card_without_attendee():
    data, _ = calendar_card(BOOKING, RESOURCE, TENANT, replace(CUSTOMER, email=None), zone=BERLIN,
                            organizer=ORGANIZER, stamp=STARTS)
    [event] = Calendar.from_ical(data).walk("VEVENT")
    assert "ATTENDEE" not in event and str(event["ORGANIZER"]) == "mailto:termine@linde.example"
