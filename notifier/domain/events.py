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

import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from notifier.domain.model import NotificationSettings, TenantSettings, validation_problems

SCHEMA_VERSION = 1

Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")]

# What the store cannot hold, or a header or a line must not carry, is refused here with its
# position (N3): C0 control characters (NUL fails PostgreSQL's text type; CR and LF split mail
# headers and SMS lines), DEL, and lone surrogates (not UTF-8 at all). Free text (a reason, an
# address) may hold tabs and line breaks.
_NOT_IN_LINE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_NOT_IN_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")


def _refuse(pattern: re.Pattern[str]) -> AfterValidator:
    def check(value: str) -> str:
        found = pattern.search(value)
        if found:
            raise ValueError(f"control character U+{ord(found.group()):04X} at position {found.start()} not allowed")
        return value
    return AfterValidator(check)


Line = Annotated[str, _refuse(_NOT_IN_LINE)]  # a name, a phone number: one line
Text = Annotated[str, _refuse(_NOT_IN_TEXT)]  # free text: tabs and line breaks allowed


@lru_cache(maxsize=65_536)
def _one_address(value: str) -> str:
    """Exactly one email address, as mail systems read it (no list, no display name)."""
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not one email address: {exc}") from None


@lru_cache(maxsize=1024)
def _zone(value: str) -> str:
    """An IANA time zone this system knows (planning and rendering need it)."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Berlin)") from None
    return value


Email = Annotated[str, Field(max_length=254), _refuse(_NOT_IN_LINE), AfterValidator(_one_address)]
Zone = Annotated[str, Field(max_length=64), _refuse(_NOT_IN_LINE), AfterValidator(_zone)]
# company details for templates (R42): name, address, phone, ... merged key by key
Company = Annotated[dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")],
                         Annotated[Text, Field(max_length=500)]], Field(max_length=30)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Consents(_Strict):
    """What the customer agreed to be contacted on (R3). Absent means no consent."""

    email: bool = False
    sms: bool = False
    whatsapp: bool = False


class CustomerData(_Strict):
    id: Id
    name: Annotated[Line, Field(max_length=200)]
    phone: Annotated[Line, Field(max_length=40)] | None = None
    email: Email | None = None
    language: str = Field(default="en", pattern=r"^[a-z]{2}$")
    consents: Consents = Consents()
    privacy_accepted: bool = False
    created_via_online_booking: bool = False


class ResourceData(_Strict):
    id: Id
    name: Annotated[Line, Field(max_length=200)]
    type: Literal["specialist", "equipment"] = "specialist"


class WorkflowStatus(_Strict):
    """R31: a status of the tenant's workflow as its booking system defines it: a name, what it
    means, where it stands in the list, its colour on the board, and its kind."""

    id: Id
    name: Annotated[Line, Field(max_length=100)]
    kind: Literal["start", "confirmation", "cancellation", "none"] = "none"
    description: Annotated[Text, Field(max_length=500)] | None = None
    position: Annotated[int, Field(ge=0, le=10_000)] | None = None  # its place in the workflow's list
    colour: Annotated[str, Field(pattern=r"^#[0-9A-Fa-f]{6}$")] | None = None  # on the planner's board

    def attributes(self) -> dict[str, Any]:
        """As a booking keeps it: {id, name, kind} and the attributes given."""
        return self.model_dump(exclude_none=True)


class BookingCreated(_Strict):
    booking_id: Id
    customer: CustomerData
    resource: ResourceData
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    source: Literal["staff", "online"] = "staff"
    service: Annotated[Line, Field(max_length=200)] | None = None
    # an online request the business accepts or rejects later (R23); under a status workflow
    # (R30-R32) the booking starts in its start status: pass it here
    needs_approval: bool = False
    status: WorkflowStatus | None = None
    # what the person booking chose for this booking (salon seed): the appointment card with the
    # email messages (R22; false: none, nor its updates), and reminders (R15; false: none)
    send_card: bool = True
    reminders: bool = True

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
    reason: Annotated[Text, Field(max_length=500)] | None = None


class BookingStatusChanged(_Strict):
    booking_id: Id
    status: WorkflowStatus
    reason: Annotated[Text, Field(max_length=500)] | None = None

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
    timezone: Zone | None = None
    # per-resource overrides of the tenant's notification settings (R26, R41); replaces the old ones
    settings: NotificationSettings = NotificationSettings()


class TenantSettingsUpdated(_Strict):
    """New tenant defaults (R43): every field given replaces the stored one; `company` is merged
    key by key (an empty value removes a key)."""

    name: Annotated[Line, Field(max_length=200)] | None = None
    timezone: Zone | None = None
    home_region: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    language: str | None = Field(default=None, pattern=r"^[a-z]{2}$")
    channels: list[Literal["email", "sms", "whatsapp"]] | None = None
    company: Company | None = None
    settings: TenantSettings | None = None


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
    except ValidationError as exc:
        raise InvalidEvent("; ".join(validation_problems(exc, limit=3))) from None
    except ValueError as exc:
        raise InvalidEvent(str(exc)) from None


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
