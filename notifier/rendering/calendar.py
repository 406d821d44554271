"""The appointment card (R22): an iCalendar invitation customers add to their calendar.

Calendars apply a later card to the entry they already hold only when it is the same event from
the same organizer: one stable UID per booking, SEQUENCE growing with each change (`sequence_of`),
the ORGANIZER (the company, under the address its emails come from: RFC 6047 has the receiver
compare the two) and the ATTENDEE (the customer) on every card. A cancellation is METHOD:CANCEL
with STATUS:CANCELLED. Times carry the tenant's zone, with a VTIMEZONE that covers the days of
the visit only (not every transition since 1970).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from email.utils import parseaddr
from functools import lru_cache
from zoneinfo import ZoneInfo

from icalendar import Calendar, Event, Timezone, vCalAddress

from notifier.domain.model import Booking, BookingStatus, Customer, Resource, Tenant

PRODID = "-//notifier//appointment card//EN"


def uid_of(booking: Booking) -> str:
    return f"booking-{booking.tenant_id}-{booking.id}@notifier"


def sequence_of(booking: Booking) -> int:
    """SEQUENCE: two steps per revision of the booking system's, the second for a cancellation.
    A customer cancelling by link makes no new revision, and its card must still come after the
    one they hold; a revision after that comes after both."""
    return 2 * booking.revision + (booking.status is BookingStatus.CANCELLED)


def card_title(booking: Booking, resource: Resource, tenant: Tenant) -> str:
    """The calendar entry's title: what and where, as a person names it ("Haircut, Salon Linde")."""
    company = str(tenant.company.get("name") or tenant.name)
    return ", ".join(part for part in (booking.service or resource.name, company) if part)


@lru_cache(maxsize=256)
def _vtimezone(zone: str, first: date, last: date) -> Timezone:
    """The zone's observances from `first` to `last` (icalendar computes them from zoneinfo)."""
    return Timezone.from_tzid(zone, first_date=first, last_date=last)


def _address(mailbox: str, name: str) -> vCalAddress | None:
    address = parseaddr(mailbox)[1]
    if "@" not in address:
        return None
    cal_address = vCalAddress(f"mailto:{address}")
    if name.strip():
        cal_address.params["CN"] = name.strip()
    return cal_address


def calendar_card(booking: Booking, resource: Resource, tenant: Tenant, customer: Customer | None, *,
                  zone: ZoneInfo, organizer: str, stamp: datetime) -> tuple[bytes, str]:
    """(ICS bytes, METHOD) for the booking as it is now. `organizer` is the mailbox the tenant's
    emails come from ("Salon Linde <termine@linde.example>", `dispatch.sender_identity`)."""
    cancelled = booking.status is BookingStatus.CANCELLED
    method = "CANCEL" if cancelled else "REQUEST"
    company = str(tenant.company.get("name") or tenant.name)
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("method", method)
    starts, ends = booking.starts_at.astimezone(zone), booking.ends_at.astimezone(zone)
    cal.add_component(_vtimezone(zone.key, starts.date() - timedelta(days=1), ends.date() + timedelta(days=1)))
    event = Event()
    event.add("uid", uid_of(booking))
    event.add("sequence", sequence_of(booking))
    event.add("dtstamp", stamp)
    event.add("dtstart", starts)
    event.add("dtend", ends)
    event.add("summary", card_title(booking, resource, tenant))
    event.add("location", ", ".join(v for v in (company, tenant.company.get("address")) if v))
    event.add("description", resource.name)
    event.add("status", "CANCELLED" if cancelled else "CONFIRMED")
    event.add("transp", "OPAQUE")
    host = _address(organizer, company)
    if host is not None:
        event.add("organizer", host)
    guest = _address(customer.email, customer.name) if customer is not None and customer.email else None
    if guest is not None:
        # booked already: nothing to answer (a reply would go to the organizer's mailbox)
        guest.params.update({"CUTYPE": "INDIVIDUAL", "ROLE": "REQ-PARTICIPANT", "PARTSTAT": "ACCEPTED",
                             "RSVP": "FALSE"})
        event.add("attendee", guest)
    cal.add_component(event)
    return cal.to_ical(), method
