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
    INFO = "info"  # R10 new-booking info
    REMINDER = "reminder"  # R15


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
    workflow_status: Mapping[str, str] | None = None  # {id, name, kind} (R30-R35)
    confirmed_at: datetime | None = None
    visit_outcome: str | None = None  # arrived | no_show
    revision: int = 0

    def moved(self, **changes: Any) -> "Booking":
        return replace(self, **changes)


# --- settings ---------------------------------------------------------------------------

@dataclass(frozen=True)
class InfoSettings:
    """R10: new-booking info, sent `delay_s` after the booking was made."""

    enabled: bool = True
    channels: tuple[Channel, ...] = (Channel.WHATSAPP, Channel.SMS, Channel.EMAIL)
    delay_s: int = 0


@dataclass(frozen=True)
class ReminderSettings:
    """R15: a reminder at a time of day on the visit's day ("morning") or an offset before."""

    enabled: bool = True
    channels: tuple[Channel, ...] = (Channel.WHATSAPP, Channel.SMS, Channel.EMAIL)
    offset_s: int = -1  # -1: morning of the day (as Bitrix24's reminderDelay); else seconds before
    morning_at: time = time(8, 0)


@dataclass(frozen=True)
class NotificationSettings:
    info: InfoSettings = InfoSettings()
    reminder: ReminderSettings = ReminderSettings()
    # one message per kind: the first channel of the list the customer can be reached on;
    # "all" sends on every reachable channel
    channel_policy: str = "first"

    @classmethod
    def from_layers(cls, *layers: Mapping[str, Any] | None) -> "NotificationSettings":
        """Merge tenant defaults and resource overrides (later layers win), key by key."""
        merged: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for layer in layers:
            for key, value in (layer or {}).items():
                if isinstance(value, Mapping):
                    merged.setdefault(key, {}).update(value)
                else:
                    top[key] = value
        return cls(
            info=_kind(InfoSettings, merged.get("info", {})),
            reminder=_kind(ReminderSettings, merged.get("reminder", {})),
            channel_policy=str(top.get("channel_policy", "first")),
        )


def _kind(cls: type, values: Mapping[str, Any]) -> Any:
    known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
    if "channels" in known:
        known["channels"] = tuple(Channel(c) for c in known["channels"])
    if "morning_at" in known and isinstance(known["morning_at"], str):
        known["morning_at"] = time.fromisoformat(known["morning_at"])
    for key in ("delay_s", "offset_s"):
        if key in known:
            known[key] = int(known[key])
    if "enabled" in known:
        known["enabled"] = bool(known["enabled"])
    return cls(**known)
