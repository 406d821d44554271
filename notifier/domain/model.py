"""The model: tenants, resources, customers, bookings and their notification settings.

Plain frozen dataclasses, built from and turned back into mappings by the store.
Times are aware datetimes in UTC; zones are IANA names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time
from enum import StrEnum
from typing import Any

_EPOCH = datetime.min.replace(tzinfo=UTC)


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"
    WHATSAPP = "whatsapp"
    STAFF = "staff"  # notification to the staff (webhook or email)
    ACTIVITY = "activity"  # follow-up activity for the responsible staff member

    @property
    def to_customer(self) -> bool:
        return self in (Channel.EMAIL, Channel.SMS, Channel.WHATSAPP)


CUSTOMER_CHANNELS = (Channel.WHATSAPP, Channel.SMS, Channel.EMAIL)


class Kind(StrEnum):
    # to the customer
    INFO = "info"  # R10 new-booking info
    CONFIRMATION = "confirmation"  # R11 confirmation request with the signed link, repeated
    REMINDER = "reminder"  # R15, R21
    LATE = "late"  # R16 late follow-up
    CHANGE = "change"  # R20 change notice (email with an updated card)
    CANCELLATION = "cancellation"  # R19, R34 cancellation notice (with the reason)
    REQUEST_RECEIVED = "request_received"  # R23, R32 an online request arrived (not a confirmation)
    REQUEST_ACCEPTED = "request_accepted"  # R23, R33 the request was accepted: the confirmation
    REQUEST_REJECTED = "request_rejected"  # R23 the request was rejected
    FEEDBACK = "feedback"  # R25
    # to the staff
    STAFF_NEW_REQUEST = "staff_new_request"  # R23 "new request" to the provider
    STAFF_CONFIRMED = "staff_confirmed"  # R33 notice to the resource / branch / company
    STAFF_CANCELLED = "staff_cancelled"  # R14, R19 the customer cancelled
    STAFF_RELEASED = "staff_released"  # R18 the slot was released automatically
    ACTIVITY_UNCONFIRMED = "activity_unconfirmed"  # R13 call the customer who has not confirmed
    ACTIVITY_LATE = "activity_late"  # R17 call the customer who has not come

    @property
    def to_staff(self) -> bool:
        return self.value.startswith(("staff_", "activity_"))

    @property
    def after_visit_allowed(self) -> bool:
        """Customer kinds that make sense once the visit has begun (everything else is dropped)."""
        return self in (Kind.LATE, Kind.FEEDBACK, Kind.CANCELLATION, Kind.REQUEST_REJECTED)


class MessageState(StrEnum):
    PLANNED = "planned"  # waiting for its due time
    QUEUED = "queued"  # claimed by a sweep, handed to a dispatch task (lease)
    SENDING = "sending"  # claimed by a worker for the provider call (lease)
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    WITHDRAWN = "withdrawn"  # planned, then no longer applicable

    @property
    def settled(self) -> bool:
        """Past the point of no return: replanning leaves it alone."""
        return self not in (MessageState.PLANNED, MessageState.QUEUED)


class BookingStatus(StrEnum):
    ACTIVE = "active"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    timezone: str = "Europe/Berlin"
    home_region: str = "DE"
    language: str = "de"
    channels: frozenset[Channel] = frozenset({Channel.EMAIL})
    company: Mapping[str, str] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    revision: int = 0


@dataclass(frozen=True)
class Resource:
    id: str
    tenant_id: str
    name: str
    type: str = "specialist"
    timezone: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    revision: int = 0


@dataclass(frozen=True)
class Customer:
    id: str
    tenant_id: str
    name: str
    phone: str | None = None
    email: str | None = None
    language: str = "en"
    consents: frozenset[Channel] = frozenset()
    privacy_accepted: bool = False
    created_via_online_booking: bool = False
    revision: int = 0  # of the last customer.updated applied; 0 while only bookings told us
    snapshot_at: datetime | None = None  # when the booking system took the data we hold

    def newer_than(self, other: "Customer | None") -> bool:
        """Whole-state updates: the higher revision wins, then the later snapshot."""
        if other is None:
            return True
        mine = (self.revision, self.snapshot_at or _EPOCH)
        theirs = (other.revision, other.snapshot_at or _EPOCH)
        return mine > theirs


@dataclass(frozen=True)
class Booking:
    id: str
    tenant_id: str
    customer_id: str
    resource_id: str
    starts_at: datetime
    ends_at: datetime
    created_at: datetime
    scheduled_at: datetime  # when the current start time was set (creation or last move)
    source: str = "staff"
    service: str | None = None
    status: BookingStatus = BookingStatus.ACTIVE
    cancelled_by: str | None = None  # customer | staff | workflow
    cancelled_at: datetime | None = None
    cancel_reason: str | None = None
    needs_approval: bool = False  # an online request the business must accept (R23, R32)
    approved_at: datetime | None = None  # when it entered a confirmation-kind status (R33)
    workflow_status: Mapping[str, str] | None = None  # {id, name, kind} (R30-R35)
    confirmed_at: datetime | None = None
    visit_outcome: str | None = None  # arrived | no_show
    revision: int = 0
    # the planner's board (R12, R16, R18): when each marker lit up, None while off
    red_since: datetime | None = None
    late_since: datetime | None = None
    orange_since: datetime | None = None
    released_at: datetime | None = None

    def moved(self, **changes: Any) -> "Booking":
        return replace(self, **changes)


# --- settings ---------------------------------------------------------------------------
# Per kind, a superset of Bitrix24's resource-type fields (R26); tenant defaults, resource
# overrides. Times are seconds; "offset" is before the visit, "delay" after its reference.

CUSTOMER_DEFAULT = (Channel.WHATSAPP, Channel.SMS, Channel.EMAIL)


@dataclass(frozen=True)
class InfoSettings:
    """R10: new-booking info, `delay_s` after the booking was made (Bitrix24 infoDelay)."""

    enabled: bool = True
    channels: tuple[Channel, ...] = CUSTOMER_DEFAULT
    delay_s: int = 0


@dataclass(frozen=True)
class ConfirmationSettings:
    """R11-R13: the request to confirm, its repetitions, the red counter, the staff activity."""

    enabled: bool = True
    channels: tuple[Channel, ...] = CUSTOMER_DEFAULT
    offset_s: int = 86_400  # confirmationDelay; whole days count on the local calendar
    repetitions: int = 0  # confirmationRepetitions
    repetition_interval_s: int = 3_600  # confirmationRepetitionsInterval
    counter_offset_s: int = 7_200  # confirmationCounterDelay: red counter from this long before
    activity_enabled: bool = True  # R13
    activity_offset_s: int = 10_800  # 3 hours before


@dataclass(frozen=True)
class ReminderSettings:
    """R15: at a time of day on the visit's day ("morning") or an offset before (reminderDelay)."""

    enabled: bool = True
    channels: tuple[Channel, ...] = CUSTOMER_DEFAULT
    offset_s: int = -1  # -1: morning of the day (as Bitrix24's reminderDelay); else seconds before
    morning_at: time = time(8, 0)


@dataclass(frozen=True)
class LateSettings:
    """R16-R18: follow-up to the customer, orange counter, staff activity, auto-release."""

    enabled: bool = True
    channels: tuple[Channel, ...] = CUSTOMER_DEFAULT
    delay_s: int = 300  # delayedDelay: 5 or 10 minutes after the start
    counter_delay_s: int = 7_200  # delayedCounterDelay: the orange counter may light later
    activity_enabled: bool = True  # R17
    activity_delay_s: int = 900
    release_enabled: bool = True  # R18
    release_delay_s: int = 1_800


@dataclass(frozen=True)
class ChangeSettings:
    """R20: notice of a moved visit."""

    enabled: bool = True
    channels: tuple[Channel, ...] = (Channel.EMAIL, Channel.SMS)


@dataclass(frozen=True)
class CancellationSettings:
    """R14, R19, R23, R34: who hears of a cancellation, and until when customers may cancel."""

    enabled: bool = True
    channels: tuple[Channel, ...] = (Channel.EMAIL, Channel.SMS)
    inform_customer_on_staff_cancel: bool = False  # R19 default: not informed
    inform_staff_on_customer_cancel: bool = True  # R14
    customer_may_cancel: bool = True  # R23: the link may cancel
    window_s: int = 86_400  # R23: ... until this long before the visit


@dataclass(frozen=True)
class RequestSettings:
    """R23, R32, R33: online requests that need approval."""

    enabled: bool = True
    channels: tuple[Channel, ...] = (Channel.EMAIL,)
    accepted_channels: tuple[Channel, ...] = (Channel.EMAIL, Channel.SMS)


@dataclass(frozen=True)
class FeedbackSettings:
    """R25: ask for feedback `delay_s` after the visit ended."""

    enabled: bool = True
    channels: tuple[Channel, ...] = (Channel.EMAIL,)
    delay_s: int = 7_200


@dataclass(frozen=True)
class StaffSettings:
    """Notices and activities for the staff (R1): on or off per kind."""

    enabled: bool = True
    channels: tuple[Channel, ...] = (Channel.STAFF,)
    new_request: bool = True
    confirmed: bool = True
    cancelled: bool = True
    released: bool = True


@dataclass(frozen=True)
class QuietHours:
    """Customer messages wait for the morning (none of the anchors has this; ours)."""

    enabled: bool = True
    start: time = time(21, 0)
    end: time = time(8, 0)


SECTIONS: dict[str, type] = {  # `fallback` is a mapping of its own, read separately
    "info": InfoSettings, "confirmation": ConfirmationSettings, "reminder": ReminderSettings,
    "late": LateSettings, "change": ChangeSettings, "cancellation": CancellationSettings,
    "request": RequestSettings, "feedback": FeedbackSettings, "staff": StaffSettings, "quiet_hours": QuietHours,
}


@dataclass(frozen=True)
class NotificationSettings:
    info: InfoSettings = InfoSettings()
    confirmation: ConfirmationSettings = ConfirmationSettings()
    reminder: ReminderSettings = ReminderSettings()
    late: LateSettings = LateSettings()
    change: ChangeSettings = ChangeSettings()
    cancellation: CancellationSettings = CancellationSettings()
    request: RequestSettings = RequestSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    staff: StaffSettings = StaffSettings()
    quiet_hours: QuietHours = QuietHours()
    # one message per kind: the first channel of the list the customer can be reached on;
    # "all" sends on every reachable channel
    channel_policy: str = "first"
    # channels not offered in the tenant's region (R6); set by the platform, not the tenant
    unavailable: frozenset[Channel] = frozenset()
    # a customer message that failed for good on one channel goes out once more on another,
    # where the customer consented: {"whatsapp": "sms"} (none of the anchors has this)
    fallback: Mapping[Channel, Channel] = field(default_factory=dict)

    @classmethod
    def from_layers(cls, *layers: Mapping[str, Any] | None, unavailable: frozenset[Channel] = frozenset()
                    ) -> "NotificationSettings":
        """Merge tenant defaults and resource overrides (later layers win), key by key."""
        merged: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for layer in layers:
            for key, value in (layer or {}).items():
                if isinstance(value, Mapping):
                    merged.setdefault(key, {}).update(value)
                else:
                    top[key] = value
        sections = {name: _section(kind, merged.get(name, {})) for name, kind in SECTIONS.items()}
        fallback = {Channel(a): Channel(b) for a, b in merged.get("fallback", {}).items()}
        return cls(**sections, channel_policy=str(top.get("channel_policy", "first")), unavailable=unavailable,
                   fallback=fallback)


def _section(cls: type, values: Mapping[str, Any]) -> Any:
    fields = cls.__dataclass_fields__
    known: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            continue
        default = fields[key].default
        if key.endswith("channels"):
            known[key] = tuple(Channel(c) for c in value)
        elif isinstance(default, time):
            known[key] = value if isinstance(value, time) else time.fromisoformat(str(value))
        elif isinstance(default, bool):
            known[key] = bool(value)
        elif isinstance(default, int):
            known[key] = int(value)
        else:
            known[key] = value
    return cls(**known)
