"""The appointment card (R22): an iCalendar invitation customers add to their calendar.

One stable UID per booking, so a changed or cancelled booking updates the entry the customer
already has: SEQUENCE grows with the booking's revision, a cancellation is METHOD:CANCEL with
STATUS:CANCELLED. Times carry the tenant's zone (with its VTIMEZONE).
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from icalendar import Calendar, Event

from notifier.domain.model import Booking, BookingStatus, Resource, Tenant


def uid_of(booking: Booking) -> str:
    return f"booking-{booking.tenant_id}-{booking.id}@notifier"


def calendar_card(booking: Booking, resource: Resource, tenant: Tenant, *, zone: ZoneInfo, title: str,
                  stamp: datetime) -> tuple[bytes, str]:
    """(ICS bytes, METHOD) for the booking as it is now."""
    cancelled = booking.status is BookingStatus.CANCELLED
    method = "CANCEL" if cancelled else "REQUEST"
    cal = Calendar()
    cal.add("prodid", "-//notifier//appointment card//EN")
    cal.add("version", "2.0")
    cal.add("method", method)
    event = Event()
    event.add("uid", uid_of(booking))
    event.add("sequence", booking.revision)
    event.add("dtstamp", stamp)
    event.add("dtstart", booking.starts_at.astimezone(zone))
    event.add("dtend", booking.ends_at.astimezone(zone))
    event.add("summary", title)
    event.add("location", ", ".join(v for v in (tenant.company.get("name"), tenant.company.get("address")) if v))
    event.add("description", resource.name)
    event.add("status", "CANCELLED" if cancelled else "CONFIRMED")
    cal.add_component(event)
    cal.add_missing_timezones()
    return cal.to_ical(), method
