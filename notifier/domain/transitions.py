"""How events change a booking and its customer: pure functions, no I/O.

Each returns the new state and the timeline entries the change deserves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from notifier.domain import events as ev
from notifier.domain.model import Booking, BookingStatus, Channel, Customer, Resource


@dataclass(frozen=True)
class Note:
    """A timeline entry to record: what happened, with details for people and the API."""

    kind: str
    detail: dict[str, Any]


def customer_from(data: ev.CustomerData, tenant_id: str, revision: int, phone_e164: str | None) -> Customer:
    consents = frozenset(
        c for c, on in ((Channel.EMAIL, data.consents.email), (Channel.SMS, data.consents.sms),
                        (Channel.WHATSAPP, data.consents.whatsapp)) if on
    )
    return Customer(
        id=data.id,
        tenant_id=tenant_id,
        name=data.name,
        phone=phone_e164,
        email=data.email,
        language=data.language,
        consents=consents,
        privacy_accepted=data.privacy_accepted,
        created_via_online_booking=data.created_via_online_booking,
        revision=revision,
    )


def resource_from(data: ev.ResourceData, tenant_id: str, existing: Resource | None) -> Resource:
    if existing is not None:
        return replace(existing, name=data.name, type=data.type)
    return Resource(id=data.id, tenant_id=tenant_id, name=data.name, type=data.type)


def booking_created(event: ev.BookingCreatedEvent) -> tuple[Booking, list[Note]]:
    data = event.data
    occurred = ev.utc(event.occurred_at)
    booking = Booking(
        id=data.booking_id,
        tenant_id=event.tenant_id,
        customer_id=data.customer.id,
        resource_id=data.resource.id,
        starts_at=ev.utc(data.starts_at),
        ends_at=ev.utc(data.ends_at),
        created_at=occurred,
        scheduled_at=occurred,
        source=data.source,
        service=data.service,
        revision=event.revision,
    )
    note = Note("booking.created", {"starts_at": booking.starts_at.isoformat(), "resource_id": booking.resource_id,
                                    "source": booking.source})
    return booking, [note]


def booking_rescheduled(booking: Booking, event: ev.BookingRescheduledEvent) -> tuple[Booking, list[Note]]:
    data = event.data
    moved = replace(
        booking,
        starts_at=ev.utc(data.starts_at),
        ends_at=ev.utc(data.ends_at),
        resource_id=data.resource.id if data.resource else booking.resource_id,
        scheduled_at=ev.utc(event.occurred_at),
        revision=event.revision,
    )
    note = Note("booking.rescheduled", {"from": booking.starts_at.isoformat(), "to": moved.starts_at.isoformat(),
                                        "resource_id": moved.resource_id})
    return moved, [note]


def booking_cancelled(booking: Booking, event: ev.BookingCancelledEvent) -> tuple[Booking, list[Note]]:
    cancelled = replace(booking, status=BookingStatus.CANCELLED, revision=event.revision)
    return cancelled, [Note("booking.cancelled", {"by": event.data.by, "reason": event.data.reason})]


def booking_touched(booking: Booking, event: ev.Event, note: Note) -> tuple[Booking, list[Note]]:
    """An event this slice records on the timeline without changing the plan."""
    return replace(booking, revision=event.revision), [note]


def noted_at(note: Note, at: datetime) -> dict[str, Any]:
    return {"kind": note.kind, "at": at, "detail": note.detail}
