"""The model: tenants, resources, customers, bookings and their notification settings.

Plain frozen dataclasses, built from and turned back into mappings by the store; the
notification settings are a typed, bounded pydantic model, the one every surface that accepts
settings validates against (events, tenant files). Times are aware datetimes in UTC; zones
are IANA names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time
from enum import StrEnum
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    Strict,
    ValidationError,
    model_validator,
)

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
    STAFF_REPLY = "staff_reply"  # R1 the customer's message that means nothing we know (customer.replied)
    ACTIVITY_UNCONFIRMED = "activity_unconfirmed"  # R13 call the customer who has not confirmed
    ACTIVITY_LATE = "activity_late"  # R17 call the customer who has not come

    @property
    def to_staff(self) -> bool:
        return self.value.startswith(("staff_", "activity_"))

    @property
    def after_visit_allowed(self) -> bool:
        """Customer kinds that make sense once the visit has begun (everything else is dropped)."""
        return self in (Kind.LATE, Kind.FEEDBACK, Kind.CANCELLATION, Kind.REQUEST_REJECTED)


# R22: the kinds whose email carries the appointment card (new, changed or cancelled)
CARD_KINDS = frozenset({Kind.INFO, Kind.REQUEST_ACCEPTED, Kind.CHANGE, Kind.CANCELLATION})


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
    webhook_url: str | None = None  # staff notices and activities; from the operator's tenant file only
    message_events: bool = False  # message.sent / delivered / read / failed / withdrawn on the outbound queue
    # its own mail_from, reply_to, sms_from or sms_messaging_service (else the settings'), and its
    # Twilio WhatsApp Content SIDs (whatsapp_content: template -> language -> SID); tenant file only
    sender: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Resource:
    id: str
    tenant_id: str
    name: str
    type: str = "specialist"
    timezone: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    revision: int = 0


# phonenumbers' number types (lower case) that can take an SMS or a WhatsApp message: a mobile,
# or a number whose numbering plan cannot tell fixed line from mobile (the USA, Canada...)
RECEIVING_PHONE_TYPES = frozenset({"mobile", "fixed_line_or_mobile"})
INVALID_PHONE = "invalid"  # `Customer.phone_type` of a number given but not valid (R5)


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
    # the number's type as its numbering plan says ("mobile", "fixed_line", ...; phonenumbers'
    # names in lower case), INVALID_PHONE for a number given but not valid, None: not known
    phone_type: str | None = None
    # channels the customer withdrew by replying STOP (or a provider's opt-out error), R3: theirs,
    # not the booking system's, so a later customer.updated keeps them; START restores the channel
    opted_out: frozenset[Channel] = frozenset()

    @property
    def phone_receives_messages(self) -> bool:
        """The number can take SMS and WhatsApp (a landline cannot); an unknown type is not refused."""
        return bool(self.phone) and (self.phone_type is None or self.phone_type in RECEIVING_PHONE_TYPES)

    def newer_than(self, other: "Customer | None") -> bool:
        """Whole-state updates: the higher revision wins, then the later snapshot."""
        if other is None:
            return True
        mine = (self.revision, self.snapshot_at or _EPOCH)
        theirs = (other.revision, other.snapshot_at or _EPOCH)
        return mine > theirs


class NotPlanned(NamedTuple):
    """A message kind switched on that planning left out for a booking, and why.

    `reason` is one of `planning.NOT_PLANNED_REASONS`; `channels` the channels it concerned;
    `why` (for `no_reachable_channel`) each channel's own reason."""

    kind: Kind
    reason: str
    channels: tuple[Channel, ...] = ()
    why: tuple[tuple[Channel, str], ...] = ()


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
    # {id, name, kind} and, where given, description, position, colour (R30-R35)
    workflow_status: Mapping[str, Any] | None = None
    confirmed_at: datetime | None = None
    visit_outcome: str | None = None  # arrived | no_show
    revision: int = 0
    # the planner's board (R12, R16, R18): when each marker lit up, None while off
    red_since: datetime | None = None  # counts in the red counter (R12)
    late_since: datetime | None = None  # the orange "late" marker, lit with the follow-up message (R16)
    late_counter_since: datetime | None = None  # counts in the late counter (R16; may light later)
    released_at: datetime | None = None
    received_at: datetime | None = None  # when notifier first applied it (None: as `created_at`)
    # the booking system's choices for this booking when it was made (salon seed): the appointment
    # card with its email messages (R22; None, as stored before the choice existed: sent), reminders (R15)
    send_card: bool | None = None
    reminders: bool = True
    # what planning left out, as last recorded on the timeline (each entry is written once)
    not_planned: tuple[NotPlanned, ...] = ()

    def moved(self, **changes: Any) -> "Booking":
        return replace(self, **changes)


# --- settings ---------------------------------------------------------------------------
# Per kind, a superset of Bitrix24's resource-type fields (R26); tenant defaults, resource
# overrides, merged key by key (`NotificationSettings.from_layers`). Times are seconds; "offset"
# is before the visit, "delay" after its reference.
#
# One model, used wherever settings come in: `resource.updated` and `tenant.settings_updated`
# events, `config/tenants/*.yaml` (`notifier tenants load`, `init`). Unknown keys, wrong types
# (a string for a number, 1.5 for a count, "yes" for a flag) and numbers out of their bounds are
# refused with the key path and the reason (N3): a value the planner could not use must never
# reach the store, where it would fail every later event of the tenant. To add a setting, add
# the field (with its bounds) to its section: validation, the event schema and the docs follow.

CUSTOMER_DEFAULT = (Channel.WHATSAPP, Channel.SMS, Channel.EMAIL)
MAX_SPAN_S = 366 * 86_400  # no delay or offset is longer than a year: beyond, a typo or an attack


def _clock_time(value: Any) -> Any:
    """A time of day as "HH:MM" (YAML: quote it; unquoted 10:30 is read as a number)."""
    if isinstance(value, time):
        return value
    if not isinstance(value, str) or len(value) != 5 or value[2] != ":" or not value.replace(":", "").isdigit():
        raise ValueError('a time of day must be text "HH:MM" (in YAML, quoted)')
    try:
        return time.fromisoformat(value)
    except ValueError:
        raise ValueError(f'{value!r} is not a time of day "HH:MM"') from None


def _only(*allowed: Channel) -> Any:
    def check(channels: tuple[Channel, ...]) -> tuple[Channel, ...]:
        wrong = [c.value for c in channels if c not in allowed]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} not allowed here (one of: {', '.join(c.value for c in allowed)})")
        return channels
    return AfterValidator(check)


Seconds = Annotated[int, Strict(), Field(ge=0, le=MAX_SPAN_S)]
Count = Annotated[int, Strict(), Field(ge=0, le=10)]
Flag = Annotated[bool, Strict()]
ClockTime = Annotated[time, BeforeValidator(_clock_time), PlainSerializer(lambda t: t.strftime("%H:%M"), when_used="json")]
CustomerChannels = Annotated[tuple[Channel, ...], Field(min_length=1, max_length=3),
                             _only(Channel.WHATSAPP, Channel.SMS, Channel.EMAIL)]


def _customer_pairs(pairs: dict[Channel, Channel]) -> dict[Channel, Channel]:
    wrong = sorted({c.value for pair in pairs.items() for c in pair if not c.to_customer})
    if wrong:
        raise ValueError(f"{', '.join(wrong)} not allowed here (customer channels only)")
    return pairs


Policy = Literal["first", "all"]  # one message on the first reachable channel of the list, or one on each


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InfoSettings(_Section):
    """R10: new-booking info, `delay_s` after the booking was made (Bitrix24 infoDelay)."""

    enabled: Flag = True
    channels: CustomerChannels = CUSTOMER_DEFAULT
    channel_policy: Policy = "first"
    delay_s: Seconds = 0


class ConfirmationSettings(_Section):
    """R11-R13: the request to confirm, its repetitions, the red counter, the staff activity."""

    enabled: Flag = True
    channels: CustomerChannels = CUSTOMER_DEFAULT
    channel_policy: Policy = "first"
    offset_s: Seconds = 86_400  # confirmationDelay; whole days count on the local calendar
    repetitions: Count = 0  # confirmationRepetitions
    repetition_interval_s: Annotated[int, Strict(), Field(ge=60, le=MAX_SPAN_S)] = 3_600
    counter_offset_s: Seconds = 7_200  # confirmationCounterDelay: red counter from this long before
    activity_enabled: Flag = True  # R13
    activity_offset_s: Seconds = 10_800  # 3 hours before


class ReminderSettings(_Section):
    """R15: at a time of day on the visit's day ("morning") or an offset before (reminderDelay)."""

    enabled: Flag = True
    channels: CustomerChannels = CUSTOMER_DEFAULT
    channel_policy: Policy = "first"
    # -1: morning of the day (as Bitrix24's reminderDelay); else seconds before
    offset_s: Annotated[int, Strict(), Field(ge=-1, le=MAX_SPAN_S)] = -1
    morning_at: ClockTime = time(8, 0)


class LateSettings(_Section):
    """R16-R18: follow-up to the customer, late marker and counter, staff activity, auto-release."""

    enabled: Flag = True
    channels: CustomerChannels = CUSTOMER_DEFAULT
    channel_policy: Policy = "first"
    delay_s: Seconds = 300  # delayedDelay: 5 or 10 minutes after the start; the orange "late" marker
    # delayedCounterDelay: the late counter may light later than the marker, but before the release
    # (R27): Bitrix24's 7200 s came after the slot was released at 1800 s, so it never lit
    counter_delay_s: Seconds = 600
    activity_enabled: Flag = True  # R17
    activity_delay_s: Seconds = 900
    release_enabled: Flag = True  # R18
    release_delay_s: Seconds = 1_800


class ChangeSettings(_Section):
    """R20: notice of a moved visit."""

    enabled: Flag = True
    channels: CustomerChannels = (Channel.EMAIL, Channel.SMS)
    channel_policy: Policy = "all"  # R20, R27: on every channel the customer consented to


class CancellationSettings(_Section):
    """R14, R19, R23, R34: who hears of a cancellation, and until when customers may cancel."""

    enabled: Flag = True
    channels: CustomerChannels = (Channel.EMAIL, Channel.SMS)
    channel_policy: Policy = "all"
    inform_customer_on_staff_cancel: Flag = False  # R19 default: not informed
    inform_staff_on_customer_cancel: Flag = True  # R14
    customer_may_cancel: Flag = True  # R23: the link may cancel
    # R11, R23, R27: ... until this long before the visit. Closes after the confirmation request
    # (a day before), so the request's link can cancel; 24 h would close with the request's arrival
    window_s: Seconds = 7_200


class RequestSettings(_Section):
    """R23, R32, R33: online requests that need approval."""

    enabled: Flag = True
    channels: CustomerChannels = (Channel.EMAIL,)  # "request received" (email only, as the seed)
    accepted_channels: CustomerChannels = (Channel.EMAIL, Channel.SMS)
    rejected_channels: CustomerChannels = (Channel.EMAIL, Channel.SMS)
    channel_policy: Policy = "all"  # R23, R27: the answer goes on every consented channel


class FeedbackSettings(_Section):
    """R25: ask for feedback `delay_s` after the visit ended."""

    enabled: Flag = True
    channels: CustomerChannels = (Channel.EMAIL,)
    channel_policy: Policy = "first"
    delay_s: Seconds = 7_200


def _staff_email(value: Any) -> Any:
    """One email address, as mail systems read it (syntax only, never DNS)."""
    from email_validator import EmailNotValidError, validate_email

    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 254:
        raise ValueError("expected one email address")
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not one email address: {exc}") from None


class StaffSettings(_Section):
    """Notices for the staff (R1, R23, R33): on or off per kind, and where they go. `staff` is the
    booking system's webhook; `email` goes to the booked resource's `email` (its own settings),
    else the tenant's (a branch's address), else the company's `email` detail; never to a
    customer. With no address anywhere, no staff email is planned."""

    enabled: Flag = True
    channels: Annotated[tuple[Channel, ...], Field(min_length=1, max_length=2),
                        _only(Channel.STAFF, Channel.EMAIL)] = (Channel.STAFF, Channel.EMAIL)
    email: Annotated[str | None, BeforeValidator(_staff_email)] = None
    new_request: Flag = True
    confirmed: Flag = True
    cancelled: Flag = True
    released: Flag = True


class QuietHours(_Section):
    """Customer messages wait for the morning (none of the anchors has this; ours)."""

    enabled: Flag = True
    start: ClockTime = time(21, 0)
    end: ClockTime = time(8, 0)


SECTIONS: dict[str, type[_Section]] = {
    "info": InfoSettings, "confirmation": ConfirmationSettings, "reminder": ReminderSettings,
    "late": LateSettings, "change": ChangeSettings, "cancellation": CancellationSettings,
    "request": RequestSettings, "feedback": FeedbackSettings, "staff": StaffSettings, "quiet_hours": QuietHours,
}


class NotificationSettings(BaseModel):
    """A resource's settings: the tenant's defaults with the resource's overrides (R26, R43).
    Validating a partial mapping fills in the defaults; `overrides` gives back only what was set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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
    # the default `channel_policy` of every section that does not set its own (None: each section's
    # own default: "first", but "all" for change notices, cancellations and answers to requests)
    channel_policy: Policy | None = None
    # a customer message that failed for good on one channel goes out once more on another,
    # where the customer consented: {"whatsapp": "sms"} (none of the anchors has this)
    fallback: Annotated[dict[Channel, Channel], Field(max_length=3), AfterValidator(_customer_pairs)] = Field(
        default_factory=dict)
    # channels not offered in the tenant's region (R6): set by the platform, never by a tenant
    _unavailable: frozenset[Channel] = PrivateAttr(default=frozenset())
    # channels this installation has no provider configured for: never chosen when planning
    _without_provider: frozenset[Channel] = PrivateAttr(default=frozenset())
    # kinds the tenant switched on and the resource's own settings switched off (R24, R41)
    _off_for_resource: frozenset[Kind] = PrivateAttr(default=frozenset())

    # read from the private dict itself: `self._x` goes through BaseModel.__getattr__, Python code
    # that planning would run for every booking
    @property
    def unavailable(self) -> frozenset[Channel]:
        return self.__pydantic_private__["_unavailable"]  # type: ignore[index]

    @property
    def without_provider(self) -> frozenset[Channel]:
        return self.__pydantic_private__["_without_provider"]  # type: ignore[index]

    @property
    def off_for_resource(self) -> frozenset[Kind]:
        return self.__pydantic_private__["_off_for_resource"]  # type: ignore[index]

    def overrides(self) -> dict[str, Any]:
        """What was given, as stored (JSON types): the mapping the store keeps for a layer."""
        return self.model_dump(mode="json", exclude_unset=True)

    @classmethod
    def from_layers(cls, *layers: Mapping[str, Any] | None, unavailable: frozenset[Channel] = frozenset(),
                    without_provider: frozenset[Channel] = frozenset()) -> "NotificationSettings":
        """Merge tenant defaults and resource overrides (later layers win), key by key. A
        tenant's own keys (`TenantSettings`) are not a resource's concern and are left out.
        `unavailable` (R6) and `without_provider` are the platform's, never a tenant's."""
        merged: dict[str, Any] = {}
        for layer in layers:
            for key, value in (layer or {}).items():
                if key in TENANT_ONLY:
                    continue
                if key in SECTIONS and isinstance(value, Mapping):
                    merged[key] = {**merged.get(key, {}), **value}
                else:
                    merged[key] = value
        policy = merged.get("channel_policy")
        if isinstance(policy, str):  # the tenant-wide policy, under each section's own
            for name, section in SECTIONS.items():
                if "channel_policy" in section.model_fields and isinstance(merged.get(name, {}), Mapping):
                    merged[name] = {"channel_policy": policy, **merged.get(name, {})}
        settings = cls.model_validate(merged)
        settings._unavailable = frozenset(unavailable)
        settings._without_provider = frozenset(without_provider)
        if len(layers) > 1 and any(layers[1:]):  # what the first layer (the tenant's) switched on
            tenant = cls.from_layers(layers[0])
            settings._off_for_resource = frozenset(
                kind for (name, switch), kind in SWITCHES.items()
                if getattr(getattr(tenant, name), switch) and not getattr(getattr(settings, name), switch))
        return settings


# the on/off switch of each kind a resource may turn off (section, field)
SWITCHES: dict[tuple[str, str], Kind] = {
    ("info", "enabled"): Kind.INFO, ("confirmation", "enabled"): Kind.CONFIRMATION,
    ("confirmation", "activity_enabled"): Kind.ACTIVITY_UNCONFIRMED, ("reminder", "enabled"): Kind.REMINDER,
    ("late", "enabled"): Kind.LATE, ("late", "activity_enabled"): Kind.ACTIVITY_LATE,
    ("change", "enabled"): Kind.CHANGE, ("cancellation", "enabled"): Kind.CANCELLATION,
    ("feedback", "enabled"): Kind.FEEDBACK,
}


class TenantSettings(NotificationSettings):
    """A tenant's defaults: a resource's settings, and what only a tenant has. Where the tenant's
    staff notices go is not among them: `webhook_url` is the operator's, at the top of the
    tenant's file (`domain.config.TenantConfig`), and an event that names one is refused."""

    @model_validator(mode="before")
    @classmethod
    def _no_webhook_url(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "webhook_url" in data:
            raise ValueError("webhook_url is set by the operator at the top of the tenant's file, not in "
                             "settings and not by events")
        return data


WebhookUrl = Annotated[str, Field(max_length=2000, pattern=r"^https?://[^\s\x00-\x1f\x7f]+$")]


TENANT_ONLY = frozenset(TenantSettings.model_fields) - frozenset(NotificationSettings.model_fields)


def validation_problems(exc: ValidationError, *, limit: int = 5, show_input: bool = False) -> list[str]:
    """One line per problem: the key path and the reason (N3); `show_input`: and what was given
    (not for events, whose values may be personal data, N7)."""
    out = []
    for error in exc.errors()[:limit]:
        path = ".".join(str(part) for part in error.get("loc", ())) or "<top>"
        kind, message = error.get("type", ""), str(error.get("msg", "")).removeprefix("Value error, ")
        if kind == "extra_forbidden":
            message = "unknown key"
        elif show_input and kind not in ("missing", "value_error") and "input" in error:
            given = repr(error["input"])
            message += f" (got {given[:60]}{'...' if len(given) > 60 else ''})"
        out.append(f"{path}: {message}")
    if len(exc.errors()) > limit:
        out.append(f"... and {len(exc.errors()) - limit} more")
    return out
