"""The event contract: what a booking system publishes to notifier (version 1).

Every event is one JSON object, an envelope around a typed ``data`` payload:

    {"schema_version": 1, "event_id": "...", "type": "booking.created",
     "occurred_at": "2026-11-24T09:00:00+01:00", "tenant_id": "salon-berlin",
     "revision": 1, "data": {...}}

``revision`` counts per aggregate (a booking; a customer, resource or tenant for their
own update events): the booking system increments it by one with every change it
publishes, so notifier applies a booking's events in order whatever order the broker
delivers them in, and recognises a stale one. Updates of customers, resources and
tenants carry their whole state: the highest revision wins.

Pure: pydantic and the standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

SCHEMA_VERSION = 1

Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Consents(_Strict):
    """What the customer agreed to be contacted on (R3). Absent means no consent."""

    email: bool = False
    sms: bool = False
    whatsapp: bool = False


class CustomerData(_Strict):
    id: Id
    name: str = Field(max_length=200)
    phone: str | None = Field(default=None, max_length=40)
    email: str | None = Field(default=None, max_length=254)
    language: str = Field(default="en", pattern=r"^[a-z]{2}$")
    consents: Consents = Consents()
    privacy_accepted: bool = False
    created_via_online_booking: bool = False


class ResourceData(_Strict):
    id: Id
    name: str = Field(max_length=200)
    type: Literal["specialist", "equipment"] = "specialist"


class WorkflowStatus(_Strict):
    id: Id
    name: str = Field(max_length=100)
    kind: Literal["start", "confirmation", "cancellation", "none"] = "none"


class BookingCreated(_Strict):
    booking_id: Id
    customer: CustomerData
    resource: ResourceData
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    source: Literal["staff", "online"] = "staff"
    service: str | None = Field(default=None, max_length=200)
    # an online request the business accepts or rejects later (R23); under a status workflow
    # (R30-R32) the booking starts in its start status: pass it here
    needs_approval: bool = False
    status: WorkflowStatus | None = None

    @model_validator(mode="after")
    def _ends_after_start(self) -> "BookingCreated":
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self


class BookingRescheduled(_Strict):
    booking_id: Id
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    resource: ResourceData | None = None

    @model_validator(mode="after")
    def _ends_after_start(self) -> "BookingRescheduled":
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self


class BookingCancelled(_Strict):
    booking_id: Id
    by: Literal["customer", "staff"]
    reason: str | None = Field(default=None, max_length=500)


class BookingStatusChanged(_Strict):
    booking_id: Id
    status: WorkflowStatus
    reason: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _cancellation_needs_reason(self) -> "BookingStatusChanged":
        if self.status.kind == "cancellation" and not (self.reason or "").strip():
            raise ValueError("a cancellation-kind status requires a reason (R34)")
        return self


class VisitMarked(_Strict):
    booking_id: Id
    outcome: Literal["arrived", "no_show"]


class CustomerUpdated(_Strict):
    customer: CustomerData


class BookingConfirmed(_Strict):
    """The customer confirmed outside notifier's link (by phone, at the desk, in an app)."""

    booking_id: Id
    via: Literal["phone", "desk", "app", "other"] = "other"


class ResourceUpdated(_Strict):
    resource: ResourceData
    timezone: str | None = Field(default=None, max_length=64)
    # per-resource overrides of the tenant's notification settings (R26, R41); replaces the old ones
    settings: dict[str, Any] = Field(default_factory=dict)


class TenantSettingsUpdated(_Strict):
    """New tenant defaults (R43): every field given replaces the stored one."""

    name: str | None = Field(default=None, max_length=200)
    timezone: str | None = Field(default=None, max_length=64)
    home_region: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    language: str | None = Field(default=None, pattern=r"^[a-z]{2}$")
    channels: list[Literal["email", "sms", "whatsapp"]] | None = None
    company: dict[str, str] | None = None
    settings: dict[str, Any] | None = None


class _Envelope(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: Id
    occurred_at: AwareDatetime
    tenant_id: Id
    revision: int = Field(ge=1, le=2**31 - 1)  # the store's INTEGER: a larger one would stop the batch (N3)


class BookingCreatedEvent(_Envelope):
    type: Literal["booking.created"]
    data: BookingCreated


class BookingRescheduledEvent(_Envelope):
    type: Literal["booking.rescheduled"]
    data: BookingRescheduled


class BookingCancelledEvent(_Envelope):
    type: Literal["booking.cancelled"]
    data: BookingCancelled


class BookingStatusChangedEvent(_Envelope):
    type: Literal["booking.status_changed"]
    data: BookingStatusChanged


class VisitMarkedEvent(_Envelope):
    type: Literal["booking.visit_marked"]
    data: VisitMarked


class CustomerUpdatedEvent(_Envelope):
    type: Literal["customer.updated"]
    data: CustomerUpdated


class BookingConfirmedEvent(_Envelope):
    type: Literal["booking.confirmed"]
    data: BookingConfirmed


class ResourceUpdatedEvent(_Envelope):
    type: Literal["resource.updated"]
    data: ResourceUpdated


class TenantSettingsUpdatedEvent(_Envelope):
    type: Literal["tenant.settings_updated"]
    data: TenantSettingsUpdated


Event = Annotated[
    BookingCreatedEvent
    | BookingRescheduledEvent
    | BookingCancelledEvent
    | BookingStatusChangedEvent
    | VisitMarkedEvent
    | BookingConfirmedEvent
    | CustomerUpdatedEvent
    | ResourceUpdatedEvent
    | TenantSettingsUpdatedEvent,
    Field(discriminator="type"),
]

EVENT_TYPES: tuple[str, ...] = tuple(
    member.model_fields["type"].annotation.__args__[0] for member in Event.__origin__.__args__  # type: ignore
)

_adapter: TypeAdapter[Event] = TypeAdapter(Event)


class InvalidEvent(ValueError):
    """The body is not a valid event; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_event(body: bytes | str) -> Event:
    """Parse one raw JSON body into a typed event, or raise `InvalidEvent`."""
    try:
        return _adapter.validate_json(body)
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        errors = getattr(exc, "errors", None)
        if callable(errors):
            first = errors()[:3]
            reason = "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', ())) or '<body>'}: {e.get('msg')}" for e in first
            )
        else:
            reason = str(exc)
        raise InvalidEvent(reason) from None


def aggregate_of(event: Event) -> tuple[str, str]:
    """The (kind, id) whose revision the event carries: a booking, customer, resource or tenant."""
    of = _AGGREGATE_OF.get(type(event))  # by exact type: an ingester asks several times per event
    return of(event) if of is not None else ("booking", event.data.booking_id)  # type: ignore[union-attr]


_AGGREGATE_OF: dict[type, Callable[[Any], tuple[str, str]]] = {
    CustomerUpdatedEvent: lambda e: ("customer", e.data.customer.id),
    ResourceUpdatedEvent: lambda e: ("resource", e.data.resource.id),
    TenantSettingsUpdatedEvent: lambda e: ("tenant", e.tenant_id),
}


def json_schema() -> dict:
    """The JSON Schema of the contract, as exported to docs/events.schema.json."""
    schema = _adapter.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"notifier event (schema_version {SCHEMA_VERSION})"
    return schema


def utc(moment: datetime) -> datetime:
    """Normalise an aware datetime to UTC (storage and comparison)."""

    return moment.astimezone(UTC)
