"""How events change a booking and its customer: pure functions, no I/O.

Each returns the new state and the timeline entries the change deserves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from notifier.domain import events as ev
from notifier.domain.model import Booking, BookingStatus, Channel, Customer, Resource, Tenant


@dataclass(frozen=True)
class Note:
    """A timeline entry to record: what happened, with details for people and the API."""

    kind: str
    detail: dict[str, Any]


def customer_from(data: ev.CustomerData, tenant_id: str, revision: int, phone_e164: str | None,
                  snapshot_at: datetime | None = None, *, phone_type: str | None = None) -> Customer:
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
        snapshot_at=snapshot_at,
        phone_type=phone_type,
    )


def resource_from(data: ev.ResourceData, tenant_id: str) -> Resource:
    """A resource first met in a booking event; `resource.updated` owns it afterwards."""
    return Resource(id=data.id, tenant_id=tenant_id, name=data.name, type=data.type)


def resource_updated(event: ev.ResourceUpdatedEvent) -> Resource:
    data = event.data
    return Resource(id=data.resource.id, tenant_id=event.tenant_id, name=data.resource.name,
                    type=data.resource.type, timezone=data.timezone, settings=data.settings.overrides(),
                    revision=event.revision)


def tenant_updated(tenant: Tenant, event: ev.TenantSettingsUpdatedEvent) -> Tenant:
    data = event.data
    changes: dict[str, Any] = {"revision": event.revision}
    for name in ("name", "timezone", "home_region", "language"):
        value = getattr(data, name)
        if value is not None:
            changes[name] = value
    if data.settings is not None:
        changes["settings"] = data.settings.overrides()
    if data.company is not None:
        changes["company"] = merged_company(tenant.company, data.company)
    if data.channels is not None:
        changes["channels"] = frozenset(Channel(c) for c in data.channels) | {Channel.EMAIL}
    return replace(tenant, **changes)


def merged_company(company: Mapping[str, str], update: Mapping[str, str]) -> dict[str, str]:
    """Company details change field by field; an empty value removes the field (R42)."""
    merged = {**company, **update}
    return {key: value for key, value in merged.items() if value.strip()}


def booking_created(event: ev.BookingCreatedEvent, received_at: datetime | None = None) -> tuple[Booking, list[Note]]:
    """`received_at`: when notifier applies it (a booking received after its start is not late, R16)."""
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
        needs_approval=data.needs_approval or (data.status is not None and data.status.kind in ("start", "none")),
        approved_at=occurred if data.status is not None and data.status.kind == "confirmation" else None,
        workflow_status=data.status.attributes() if data.status else None,
        revision=event.revision,
        received_at=received_at,
        send_card=data.send_card,
        reminders=data.reminders,
    )
    detail: dict[str, Any] = {"starts_at": booking.starts_at.isoformat(), "resource_id": booking.resource_id,
                              "source": booking.source}
    if data.status is not None:  # the workflow status it starts in, the first of its history (R32, R35)
        detail.update(status=data.status.name, status_kind=data.status.kind, **_shown(data.status))
    return booking, [Note("booking.created", detail)]


def _shown(status: ev.WorkflowStatus) -> dict[str, Any]:
    """How a status looks in the history (R31): its description, position and colour, where given."""
    return {k: v for k, v in (("description", status.description), ("position", status.position),
                              ("colour", status.colour)) if v is not None}


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
    cancelled = replace(booking, status=BookingStatus.CANCELLED, cancelled_by=event.data.by,
                        cancelled_at=ev.utc(event.occurred_at), cancel_reason=event.data.reason,
                        revision=event.revision)
    return cancelled, [Note("booking.cancelled", {"by": event.data.by, "reason": event.data.reason})]


def booking_status_changed(booking: Booking, event: ev.BookingStatusChangedEvent) -> tuple[Booking, list[Note]]:
    status = event.data.status
    at = ev.utc(event.occurred_at)
    changes: dict[str, Any] = {"workflow_status": status.attributes(), "revision": event.revision}
    if status.kind == "cancellation" and booking.status is BookingStatus.ACTIVE:  # R34: it cancels, with reason
        changes.update(status=BookingStatus.CANCELLED, cancelled_by="workflow", cancelled_at=at,
                       cancel_reason=event.data.reason)
    elif status.kind == "confirmation" and booking.approved_at is None:  # R33
        changes.update(approved_at=at, needs_approval=True)
    elif status.kind == "start" and booking.approved_at is None:  # R32: under a workflow from now on
        changes.update(needs_approval=True)
    note = Note("booking.status_changed", {"status": status.name, "kind": status.kind, "reason": event.data.reason,
                                           **_shown(status)})
    return replace(booking, **changes), [note]


def booking_confirmed(booking: Booking, event: ev.BookingConfirmedEvent) -> tuple[Booking, list[Note]]:
    confirmed = replace(booking, confirmed_at=booking.confirmed_at or ev.utc(event.occurred_at),
                        revision=event.revision)
    return confirmed, [Note("booking.confirmed", {"via": event.data.via})]


def visit_marked(booking: Booking, event: ev.VisitMarkedEvent) -> tuple[Booking, list[Note]]:
    return replace(booking, visit_outcome=event.data.outcome, revision=event.revision), [
        Note("booking.visit_marked", {"outcome": event.data.outcome})]


def apply_to_booking(booking: Booking, event: ev.Event) -> tuple[Booking, list[Note]]:
    """The transition for any booking event but `booking.created` (routing table by type)."""
    transition = {
        ev.BookingRescheduledEvent: booking_rescheduled,
        ev.BookingCancelledEvent: booking_cancelled,
        ev.BookingStatusChangedEvent: booking_status_changed,
        ev.BookingConfirmedEvent: booking_confirmed,
        ev.VisitMarkedEvent: visit_marked,
    }[type(event)]
    return transition(booking, event)


def noted_at(note: Note, at: datetime) -> dict[str, Any]:
    return {"kind": note.kind, "at": at, "detail": note.detail}


def confirmed_by_customer(booking: Booking, now: datetime, *, via: str = "link") -> tuple[Booking, list[Note]]:
    """R11: the customer used the confirmation link (or answered by message, R11, R14: `via` the
    channel). The booking system's revision is theirs to count."""
    return replace(booking, confirmed_at=booking.confirmed_at or now), [Note("booking.confirmed", {"via": via})]


def cancelled_by_customer(booking: Booking, now: datetime, *, reason: str | None = None,
                          via: str = "link") -> tuple[Booking, list[Note]]:
    """R14: the customer cancelled on the page (or by message, R11, R14), with a reason if they gave
    one: the staff hears of it, the slot is free again."""
    cancelled = replace(booking, status=BookingStatus.CANCELLED, cancelled_by="customer", cancelled_at=now,
                        cancel_reason=reason)
    detail = {"by": "customer", "via": via} | ({"reason": reason} if reason else {})
    return cancelled, [Note("booking.cancelled", detail),
                       Note("slot.released", {"starts_at": booking.starts_at.isoformat(),
                                              "resource_id": booking.resource_id})]
