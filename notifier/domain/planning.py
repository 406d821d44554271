"""Planning: which messages and staff activities a booking needs, and when.

`plan_booking` is a pure function of the booking, its customer, resource, tenant, their
settings, `now` and the keys of what was already sent. Each planned message carries a
deterministic `key`: the same state always plans the same keys, so replanning is a diff
(`diff_plan`) against what the store holds, never a second send. Keys of messages about a
particular start time carry that time, so moving a visit plans new ones and withdraws the
old ones (R21).

What planning leaves out is part of its answer: `plan_booking` returns a `Plan`, the messages
and, for each kind switched on that this booking will not get, a `NotPlanned` with a
machine-readable reason (`NOT_PLANNED_REASONS`), so the timeline can say why a message never came.

`booking_flags` tells the time-dependent states the planner's board shows (unconfirmed,
red counter, the orange "late" marker, the late counter, release due) and `next_flag_change` when
they next change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from operator import itemgetter
from typing import NamedTuple, Protocol
from zoneinfo import ZoneInfo

from notifier.domain.model import (
    CARD_KINDS,
    INVALID_PHONE,
    RECEIVING_PHONE_TYPES,
    Booking,
    BookingStatus,
    Channel,
    Customer,
    Kind,
    MessageState,
    NotificationSettings,
    NotPlanned,
    Resource,
    Tenant,
)

DAY_S = 86_400


class PlannedMessage(NamedTuple):  # not a frozen dataclass: an ingester makes tens of thousands a second
    key: str  # unique per booking; stable for the same state
    kind: Kind
    channel: Channel
    due_at: datetime  # UTC
    recipient: str = "customer"  # or "staff"


class Plan(NamedTuple):
    messages: tuple[PlannedMessage, ...]  # in due order
    not_planned: tuple[NotPlanned, ...] = ()  # kinds switched on that this booking will not get, and why


# --- why a kind is not planned (the timeline's `message.not_planned` entries) ---------------------
INSIDE_LEAD_TIME = "inside_lead_time"  # its time falls before the booking was made or moved, or after the start
QUIET_HOURS_AFTER_VISIT = "quiet_hours_after_visit"  # quiet hours would hold it until the visit began
VISIT_STARTED = "visit_started"  # the booking was made or moved after its visit began
PRIVACY_NOT_ACCEPTED = "privacy_not_accepted"  # R4: an online customer who has not accepted the policy
NO_SHOW = "no_show"  # feedback for a visit the customer did not come to
SWITCHED_OFF_FOR_RESOURCE = "switched_off_for_resource"  # on for the tenant, off for this resource
SWITCHED_OFF_FOR_BOOKING = "switched_off_for_booking"  # on for the resource, off for this booking (its choice)
# no channel of the kind reaches the customer: one reason for all of them ...
CHANNEL_SWITCHED_OFF = "channel_switched_off"  # R2: SMS / WhatsApp not switched on by the tenant
CHANNEL_UNAVAILABLE_IN_REGION = "channel_unavailable_in_region"  # R6
NO_PROVIDER = "no_provider"  # no provider configured for the channel
NO_CONSENT = "no_consent"  # R3
OPTED_OUT = "opted_out"  # R3: the customer replied STOP on the channel (or its provider says so)
NO_ADDRESS = "no_address"  # no email address / phone number
INVALID_NUMBER = "invalid_number"  # R5: the number given is not valid
NUMBER_CANNOT_RECEIVE = "number_cannot_receive"  # a landline (or pager, toll-free...) takes no SMS / WhatsApp
NO_REACHABLE_CHANNEL = "no_reachable_channel"  # ... or different reasons per channel (`NotPlanned.why`)
NOT_PLANNED_REASONS = (INSIDE_LEAD_TIME, QUIET_HOURS_AFTER_VISIT, VISIT_STARTED, PRIVACY_NOT_ACCEPTED, NO_SHOW,
                       SWITCHED_OFF_FOR_RESOURCE, SWITCHED_OFF_FOR_BOOKING, CHANNEL_SWITCHED_OFF,
                       CHANNEL_UNAVAILABLE_IN_REGION, NO_PROVIDER, NO_CONSENT, OPTED_OUT, NO_ADDRESS, INVALID_NUMBER,
                       NUMBER_CANNOT_RECEIVE, NO_REACHABLE_CHANNEL)
# a channel the customer consented to but cannot be reached on for one of these is recorded even
# when the kind goes out on another channel: their number, the region or the installation is at fault
PASSED_OVER = frozenset({CHANNEL_UNAVAILABLE_IN_REGION, NO_PROVIDER, INVALID_NUMBER, NUMBER_CANNOT_RECEIVE})
_NOT_WANTED = frozenset({CHANNEL_SWITCHED_OFF, NO_CONSENT, OPTED_OUT})  # channels nobody asked for


class StoredMessage(Protocol):
    """What planning needs to know of a message the store holds (`ExistingMessage`, or a
    store's own record of it, so an ingester need not copy each one it loaded)."""

    @property
    def key(self) -> str: ...
    @property
    def state(self) -> MessageState: ...
    @property
    def due_at(self) -> datetime: ...
    @property
    def channel(self) -> Channel: ...
    @property
    def manual(self) -> bool: ...  # an operator's resend or withdrawal: left alone


_BY_DUE_THEN_KEY = itemgetter(3, 0)  # (due_at, key) of a PlannedMessage, in C


@dataclass(frozen=True, slots=True)
class ExistingMessage:
    key: str
    state: MessageState
    due_at: datetime
    channel: Channel
    manual: bool = False


@dataclass(frozen=True)
class PlanDiff:
    add: tuple[PlannedMessage, ...] = ()
    update: tuple[PlannedMessage, ...] = ()  # unsent: new due time or channel, or revived
    withdraw: tuple[str, ...] = ()  # keys of unsent messages that no longer apply

    @property
    def empty(self) -> bool:
        return not (self.add or self.update or self.withdraw)


_AFTER_VISIT_ALLOWED = frozenset(kind for kind in Kind if kind.after_visit_allowed)
SENT_STATES = frozenset({MessageState.SENDING, MessageState.SENT, MessageState.DELIVERED, MessageState.READ})
FALLBACK = "fallback"


# --- time ------------------------------------------------------------------------------------

def zone_of(tenant: Tenant, resource: Resource | None) -> ZoneInfo:
    return ZoneInfo((resource.timezone if resource and resource.timezone else None) or tenant.timezone)


# The time functions below are pure and asked the same questions over and over (visits start on
# the hour, offsets are settings): each keeps its recent answers.

@lru_cache(maxsize=16_384)
def local_days_before(starts_at: datetime, offset_s: int, zone: ZoneInfo) -> datetime:
    """`offset_s` before `starts_at`, whole days counted on the local calendar (DST-safe).

    "One day before a 09:00 visit" is 09:00 local the day before, even when that day
    is 23 or 25 hours long; the remainder below a day is plain elapsed time.
    """
    days, rest_s = divmod(offset_s, DAY_S)
    local = starts_at.astimezone(zone)
    wall = local.replace(tzinfo=None) - timedelta(days=days)
    return _localize(wall, zone) - timedelta(seconds=rest_s)


@lru_cache(maxsize=16_384)
def local_time_on_day(starts_at: datetime, at: time, zone: ZoneInfo) -> datetime:
    """The given local wall time on the local day of `starts_at`, in UTC."""
    day = starts_at.astimezone(zone).date()
    return _localize(datetime.combine(day, at), zone)


def _localize(wall: datetime, zone: ZoneInfo) -> datetime:
    """Wall time to UTC; a time skipped by DST moves forward, an ambiguous one takes the first."""
    aware = wall.replace(tzinfo=zone, fold=0)
    roundtrip = aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if roundtrip != wall:  # in the spring gap: the first valid instant after it
        aware = wall.replace(tzinfo=zone, fold=1)
    return aware.astimezone(UTC)


@lru_cache(maxsize=16_384)  # the zone conversion is most of a plan's date arithmetic; due times repeat
def in_quiet_hours(moment: datetime, start: time, end: time, zone: ZoneInfo) -> bool:
    local = moment.astimezone(zone).time()
    if start <= end:
        return start <= local < end
    return local >= start or local < end


@lru_cache(maxsize=16_384)
def after_quiet_hours(moment: datetime, start: time, end: time, zone: ZoneInfo) -> datetime:
    """`moment`, or the end of the quiet hours it falls in (local time, DST-safe)."""
    if not in_quiet_hours(moment, start, end, zone):
        return moment
    local = moment.astimezone(zone)
    day = local.date() if local.time() < end else local.date() + timedelta(days=1)
    return _localize(datetime.combine(day, end), zone)


@lru_cache(maxsize=16_384)
def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%MZ")


# --- channels ----------------------------------------------------------------------------------

def channel_refusal(channel: Channel, tenant: Tenant, customer: Customer, settings: NotificationSettings
                    ) -> str | None:
    """Why the customer cannot be reached on `channel` (None: they can). Switched on by the
    tenant (R2; email always is), consented (R3), offered in the tenant's region (R6), a
    provider configured, an address; SMS and WhatsApp need a number that can take them (R5)."""
    if channel is not Channel.EMAIL and channel not in tenant.channels:
        return CHANNEL_SWITCHED_OFF
    if channel not in customer.consents:
        return NO_CONSENT
    if channel in customer.opted_out:
        return OPTED_OUT
    if channel in settings.unavailable:
        return CHANNEL_UNAVAILABLE_IN_REGION
    if channel in settings.without_provider:
        return NO_PROVIDER
    if channel is Channel.EMAIL:
        return None if customer.email else NO_ADDRESS
    if not customer.phone:
        return INVALID_NUMBER if customer.phone_type == INVALID_PHONE else NO_ADDRESS
    return None if customer.phone_receives_messages else NUMBER_CANNOT_RECEIVE


def staff_email(tenant: Tenant, settings: NotificationSettings) -> str | None:
    """Where staff notices by email go (R1, R23, R33): the booked resource's address (its settings'
    `staff.email`), else the tenant's, else the company's `email` detail. Never a customer's."""
    return settings.staff.email or str(tenant.company.get("email") or "").strip() or None


def reachable_channels(tenant: Tenant, customer: Customer, settings: NotificationSettings) -> frozenset[Channel]:
    """Customer channels we may use: those `channel_refusal` has nothing against (the same
    rules, spelled out for speed: this runs for every plan)."""
    out = []
    consents = customer.consents - customer.opted_out if customer.opted_out else customer.consents
    off = settings.unavailable | settings.without_provider if settings.without_provider \
        else settings.unavailable
    if Channel.EMAIL in consents and customer.email and Channel.EMAIL not in off:
        out.append(Channel.EMAIL)  # email is always available to the tenant (R2)
    if customer.phone and (customer.phone_type is None or customer.phone_type in RECEIVING_PHONE_TYPES):
        for channel in (Channel.SMS, Channel.WHATSAPP):
            if channel in tenant.channels and channel in consents and channel not in off:
                out.append(channel)
    return frozenset(out)


@lru_cache(maxsize=1024)  # a handful of distinct (channels, reachable, policy) sets; asked per message
def _pick(channels: tuple[Channel, ...], reachable: frozenset[Channel], policy: str) -> tuple[tuple[str, Channel], ...]:
    """(slot, channel) pairs: under "first" one slot for the kind, under "all" one per channel."""
    usable = [c for c in channels if c in reachable]
    if not usable:
        return ()
    if policy == "all":
        return tuple((c.value, c) for c in usable)
    return (("customer", usable[0]),)


# --- the plan ----------------------------------------------------------------------------------

class _Plan:
    __slots__ = ("booking", "tenant", "customer", "zone", "settings", "now", "reachable", "failed", "messages",
                 "left_out", "passed_over")

    def __init__(self, booking: Booking, tenant: Tenant, customer: Customer, zone: ZoneInfo,
                 settings: NotificationSettings, now: datetime, failed: frozenset[str] = frozenset()) -> None:
        self.booking, self.tenant, self.customer, self.zone, self.settings, self.now = (
            booking, tenant, customer, zone, settings, now)
        self.reachable = reachable = reachable_channels(tenant, customer, settings)
        self.failed = failed
        self.messages: list[PlannedMessage] = []
        self.left_out: list[NotPlanned] = []
        # consented channels the customer cannot be reached on through no choice of theirs or the
        # tenant's (`PASSED_OVER`), recorded for every kind that wanted them; most customers have none
        self.passed_over: dict[Channel, str] = _NONE_PASSED_OVER
        if not customer.consents <= reachable:
            self.passed_over = {c: why for c in customer.consents - reachable
                                if (why := channel_refusal(c, tenant, customer, settings)) in PASSED_OVER}

    def customer_message(self, kind: Kind, channels: tuple[Channel, ...], due_at: datetime, anchor: str = "",
                         policy: str = "first") -> None:
        picks = _pick(channels, self.reachable, policy)
        if not picks:
            self.unreachable(kind, channels)
            return
        starts = self.booking.starts_at
        planned_at = self.after_quiet(kind, due_at)
        if kind not in _AFTER_VISIT_ALLOWED:  # a message about a visit is useless once the visit has begun
            if due_at >= starts:
                self.left_out.append(NotPlanned(kind, self._too_late(), channels))
                return
            if planned_at >= starts:
                self.left_out.append(NotPlanned(kind, QUIET_HOURS_AFTER_VISIT, channels))
                return
            if self.now >= starts:
                if self.passed_over:  # what was said while it was planned still holds
                    self._passed_over(kind, channels, picks, policy)
                if entered_after_start(self.booking):
                    self.left_out.append(NotPlanned(kind, VISIT_STARTED, channels))
                return  # otherwise it had its time, and was planned then
        if self.passed_over:
            self._passed_over(kind, channels, picks, policy)
        due_at = planned_at
        for slot, channel in picks:
            key = kind + "/" + slot + ("/" + anchor if anchor else "")  # str enums: their values
            self.messages.append(PlannedMessage(key, kind, channel, due_at))  # positional: the hot path
            if key in self.failed:
                backup = self.settings.fallback.get(channel)
                if backup in self.reachable and backup is not channel:
                    # failed for good on its channel: once more on the fallback, as soon as possible
                    self.messages.append(PlannedMessage(key=f"{key}/{FALLBACK}", kind=kind, channel=backup,
                                                        due_at=max(due_at, self.now)))

    def after_quiet(self, kind: Kind, due_at: datetime) -> datetime:
        """When a customer message due at `due_at` may go: after the quiet hours (the late
        follow-up cannot wait for the morning)."""
        quiet = self.settings.quiet_hours
        if quiet.enabled and kind is not Kind.LATE:
            return after_quiet_hours(due_at, quiet.start, quiet.end, self.zone)
        return due_at

    def not_planned(self, kind: Kind, reason: str, channels: tuple[Channel, ...], policy: str = "first") -> None:
        """`kind` is left out for `reason`; a kind that could reach the customer on none of its
        channels says that instead (more time or another setting would not change it)."""
        if reason == INSIDE_LEAD_TIME:
            reason = self._too_late()
        if kind.to_staff or _pick(channels, self.reachable, policy):
            self.left_out.append(NotPlanned(kind, reason, channels))
        else:
            self.unreachable(kind, channels)

    def _too_late(self) -> str:
        """Inside the lead time, or made (or moved) once the visit had begun."""
        return VISIT_STARTED if entered_after_start(self.booking) else INSIDE_LEAD_TIME

    def unreachable(self, kind: Kind, channels: tuple[Channel, ...]) -> None:
        """No channel of the kind reaches the customer. The reason is that of the channels they
        consented to and the tenant offers (else of all): one reason, or `no_reachable_channel`
        with each channel's own."""
        why = tuple((c, channel_refusal(c, self.tenant, self.customer, self.settings) or NO_REACHABLE_CHANNEL)
                    for c in channels)
        wanted = tuple(w for w in why if w[1] not in _NOT_WANTED) or why
        reasons = {reason for _, reason in wanted}
        if len(reasons) == 1:
            self.left_out.append(NotPlanned(kind, reasons.pop(), tuple(c for c, _ in wanted)))
        else:
            self.left_out.append(NotPlanned(kind, NO_REACHABLE_CHANNEL, channels, why))

    def _passed_over(self, kind: Kind, channels: tuple[Channel, ...], picks: tuple[tuple[str, Channel], ...],
                     policy: str) -> None:
        chosen = picks[0][1] if policy != "all" else None
        for channel in channels:
            if channel is chosen:
                break  # under "first", channels after the chosen one were never wanted
            reason = self.passed_over.get(channel)
            if reason is not None:
                self.left_out.append(NotPlanned(kind, reason, (channel,)))

    def staff(self, kind: Kind, due_at: datetime, anchor: str = "") -> None:
        staff = self.settings.staff
        if not staff.enabled:
            return
        for channel in (Channel.ACTIVITY,) if kind.startswith("activity_") else staff.channels:
            if channel is Channel.EMAIL and not staff_email(self.tenant, self.settings):
                continue  # no staff address anywhere: the webhook alone
            key = kind + "/" + channel + ("/" + anchor if anchor else "")
            self.messages.append(PlannedMessage(key, kind, channel, due_at, "staff"))

    def switched_off(self, kind: Kind, channels: tuple[Channel, ...]) -> None:
        """A kind off in the settings: recorded only when the tenant has it on and the resource not."""
        if kind in self.settings.off_for_resource:
            self.left_out.append(NotPlanned(kind, SWITCHED_OFF_FOR_RESOURCE, channels))


_ACTIVITY = (Channel.ACTIVITY,)
_NONE_PASSED_OVER: dict[Channel, str] = {}  # shared, never changed


def plan_booking(
    booking: Booking,
    customer: Customer,
    resource: Resource,
    tenant: Tenant,
    settings: NotificationSettings,
    *,
    now: datetime,
    sent: frozenset[str] = frozenset(),
    failed: frozenset[str] = frozenset(),
    card_sent: bool = False,
) -> Plan:
    """Every message and staff activity this booking needs, in due order, and the kinds switched
    on that it will not get, with the reason (the same state gives the same answer).

    `sent`: keys of messages already handed to a provider (for R21); `failed`: keys that
    failed for good (for the fallback channel); `card_sent`: an email with the appointment card
    went out (`card_sent_in`; R22: a cancellation takes it back)."""
    plan = _Plan(booking, tenant, customer, zone_of(tenant, resource), settings, now, failed)
    if booking.status is BookingStatus.CANCELLED:
        _plan_cancellation(plan, booking, settings, card_sent)
    elif booking.needs_approval and booking.approved_at is None:
        _plan_request(plan, booking, settings)  # R23, R32: nothing else until it is accepted
    else:
        _plan_active(plan, booking, customer, settings, plan.zone, sent)
    messages = tuple(sorted(plan.messages, key=_BY_DUE_THEN_KEY))
    if not plan.left_out:
        return Plan(messages)
    # a kind with a message planned is not left out (one of its repetitions may be), but a channel
    # it could not use is still said (`PASSED_OVER`); each entry once
    planned = {m.kind for m in messages}
    return Plan(messages, tuple(dict.fromkeys(n for n in plan.left_out
                                              if n.kind not in planned or n.reason in PASSED_OVER)))


def _plan_request(plan: _Plan, booking: Booking, s: NotificationSettings) -> None:
    if s.request.enabled:
        plan.customer_message(Kind.REQUEST_RECEIVED, s.request.channels, booking.created_at,
                              policy=s.request.channel_policy)
    if s.staff.new_request:
        plan.staff(Kind.STAFF_NEW_REQUEST, booking.created_at)


def _plan_cancellation(plan: _Plan, booking: Booking, s: NotificationSettings, card_sent: bool) -> None:
    at = booking.cancelled_at or booking.scheduled_at
    by = booking.cancelled_by
    if by == "release":  # R18: the notice planned for this moment still goes out
        if s.late.release_enabled and s.staff.released:
            plan.staff(Kind.STAFF_RELEASED, booking.starts_at + timedelta(seconds=s.late.release_delay_s),
                       _stamp(booking.starts_at))
        return
    if by == "customer":
        if s.cancellation.inform_staff_on_customer_cancel and s.staff.cancelled:  # R14, R19
            plan.staff(Kind.STAFF_CANCELLED, at)
        if s.cancellation.enabled and Channel.EMAIL in plan.reachable and card_sent and booking.send_card is not False:
            # R22: the customer saw the page say it; the email's card (METHOD:CANCEL) takes the
            # visit out of the calendar an earlier card put it in (no card goes by SMS, nor to a
            # booking made without the card)
            plan.customer_message(Kind.CANCELLATION, (Channel.EMAIL,), at, policy="all")
        return
    if booking.needs_approval and booking.approved_at is None:
        # R23, R34: a request turned down, by a cancellation-kind status or by the staff cancelling
        # it, always tells the customer (with the reason): they are waiting for an answer
        if s.request.enabled:
            plan.customer_message(Kind.REQUEST_REJECTED, s.request.rejected_channels, at,
                                  policy=s.request.channel_policy)
        return
    if by == "workflow" or s.cancellation.inform_customer_on_staff_cancel:  # R34 (with the reason); R19
        if s.cancellation.enabled:
            plan.customer_message(Kind.CANCELLATION, s.cancellation.channels, at,
                                  policy=s.cancellation.channel_policy)
        else:
            plan.switched_off(Kind.CANCELLATION, s.cancellation.channels)


def _plan_active(plan: _Plan, booking: Booking, customer: Customer, s: NotificationSettings, zone: ZoneInfo,
                 sent: frozenset[str]) -> None:
    starts, anchor = booking.starts_at, _stamp(booking.starts_at)

    if booking.needs_approval:  # accepted (R23, R33): the confirmation instead of the info message
        assert booking.approved_at is not None
        if s.request.enabled:
            plan.customer_message(Kind.REQUEST_ACCEPTED, s.request.accepted_channels, booking.approved_at,
                                  policy=s.request.channel_policy)
        if s.staff.confirmed:
            plan.staff(Kind.STAFF_CONFIRMED, booking.approved_at)
    elif s.info.enabled:  # R10
        plan.customer_message(Kind.INFO, s.info.channels,
                              booking.created_at + timedelta(seconds=max(s.info.delay_s, 0)),
                              policy=s.info.channel_policy)
    else:
        plan.switched_off(Kind.INFO, s.info.channels)

    if booking.scheduled_at > booking.created_at:  # R20: the visit was moved
        if s.change.enabled:
            plan.customer_message(Kind.CHANGE, s.change.channels, booking.scheduled_at, anchor,
                                  s.change.channel_policy)
        else:
            plan.switched_off(Kind.CHANGE, s.change.channels)

    unconfirmed = booking.confirmed_at is None
    c = s.confirmation
    if c.enabled and unconfirmed:  # R11, with repetitions while unanswered
        first = local_days_before(starts, c.offset_s, zone)
        previous: datetime | None = None
        for i in range(max(c.repetitions, 0) + 1):
            due = first + timedelta(seconds=i * c.repetition_interval_s)
            if due < booking.scheduled_at:  # asking for one just booked or moved would be noise
                continue
            # a repetition keeps its interval after the one before, as that one really goes (quiet
            # hours may have pushed it to the morning): they never arrive together. One that cannot
            # go before the visit that way is dropped (`customer_message` drops what is due after the start)
            if previous is not None:
                due = max(due, previous + timedelta(seconds=c.repetition_interval_s))
            due = previous = plan.after_quiet(Kind.CONFIRMATION, due)
            plan.customer_message(Kind.CONFIRMATION, c.channels, due, f"{i}/{anchor}", c.channel_policy)
        if previous is None:
            plan.not_planned(Kind.CONFIRMATION, INSIDE_LEAD_TIME, c.channels, c.channel_policy)
        activity_at = starts - timedelta(seconds=c.activity_offset_s)
        if c.activity_enabled and s.staff.enabled:  # R13
            if activity_at >= booking.scheduled_at:
                plan.staff(Kind.ACTIVITY_UNCONFIRMED, activity_at, anchor)
            else:
                plan.not_planned(Kind.ACTIVITY_UNCONFIRMED, INSIDE_LEAD_TIME, _ACTIVITY)
        elif not c.activity_enabled:
            plan.switched_off(Kind.ACTIVITY_UNCONFIRMED, _ACTIVITY)
    elif unconfirmed:
        plan.switched_off(Kind.CONFIRMATION, c.channels)

    r = s.reminder
    # R4: a customer who came through online booking gets reminders only after accepting privacy
    privacy_ok = customer.privacy_accepted or not customer.created_via_online_booking
    if not r.enabled:
        plan.switched_off(Kind.REMINDER, r.channels)
    elif not booking.reminders:  # switched off for this booking when it was made
        plan.not_planned(Kind.REMINDER, SWITCHED_OFF_FOR_BOOKING, r.channels, r.channel_policy)
    elif not privacy_ok:
        plan.not_planned(Kind.REMINDER, PRIVACY_NOT_ACCEPTED, r.channels, r.channel_policy)
    else:  # R15
        if r.offset_s < 0:
            due = local_time_on_day(starts, r.morning_at, zone)
        else:
            due = local_days_before(starts, r.offset_s, zone)
        if due >= booking.scheduled_at:
            plan.customer_message(Kind.REMINDER, r.channels, due, anchor, r.channel_policy)
        elif any(k.startswith("reminder/") and not k.endswith(anchor) for k in sent):
            # R21: moved after the reminder went out: remind again, now
            plan.customer_message(Kind.REMINDER, r.channels, booking.scheduled_at, anchor, r.channel_policy)
        else:
            plan.not_planned(Kind.REMINDER, INSIDE_LEAD_TIME, r.channels, r.channel_policy)

    late = s.late
    # R16-R18 are about a visit that began and was not marked: planned from its start (the state
    # sweep wakes every active booking then, `next_flag_change`), withdrawn when it is marked. Most
    # visits are marked on time, so planning them with the booking wrote three messages a booking,
    # and moved them again with every reschedule, for nothing.
    if late_path_applies(booking) and plan.now >= starts:
        if late.enabled:
            plan.customer_message(Kind.LATE, late.channels, starts + timedelta(seconds=late.delay_s), anchor,
                                  late.channel_policy)
        else:
            plan.switched_off(Kind.LATE, late.channels)
        if late.activity_enabled:
            plan.staff(Kind.ACTIVITY_LATE, starts + timedelta(seconds=late.activity_delay_s), anchor)
        else:
            plan.switched_off(Kind.ACTIVITY_LATE, _ACTIVITY)
        if late.release_enabled and s.staff.released:
            plan.staff(Kind.STAFF_RELEASED, starts + timedelta(seconds=late.release_delay_s), anchor)

    f = s.feedback
    if not f.enabled:  # R25
        plan.switched_off(Kind.FEEDBACK, f.channels)
    elif booking.visit_outcome == "no_show":
        plan.not_planned(Kind.FEEDBACK, NO_SHOW, f.channels, f.channel_policy)
    else:
        plan.customer_message(Kind.FEEDBACK, f.channels, booking.ends_at + timedelta(seconds=f.delay_s), anchor,
                              f.channel_policy)


def entered_after_start(booking: Booking) -> bool:
    """The booking was made, moved or first received once its visit had begun."""
    starts = booking.starts_at
    return booking.scheduled_at >= starts or (booking.received_at or booking.created_at) >= starts


def late_path_applies(booking: Booking) -> bool:
    """R16-R18 are about a visit the business expected: one notifier knew of, at its time, before
    it began. A booking entered after its start (a walk-in recorded afterwards, an import, events
    published days late) is not late, and its slot is not released."""
    if booking.visit_outcome is not None:
        return False
    starts = booking.starts_at
    return booking.scheduled_at < starts and (booking.received_at or booking.created_at) < starts


def diff_plan(existing: Iterable[StoredMessage], planned: Iterable[PlannedMessage]) -> PlanDiff:
    """What to change so the store matches the plan; sent messages are never touched, nor those
    an operator made (a resend) or withdrew: their state is the operator's decision."""
    have = {m.key: m for m in existing}
    want = {m.key: m for m in planned}
    add, update, withdraw = [], [], []
    for key, message in want.items():
        old = have.get(key)
        if old is None:
            add.append(message)
        elif not old.manual and old.state in (MessageState.PLANNED, MessageState.WITHDRAWN) and (
            old.state is MessageState.WITHDRAWN or old.due_at != message.due_at or old.channel != message.channel
        ):
            update.append(message)
    for key, old in have.items():
        if key not in want and not old.manual and old.state in (MessageState.PLANNED, MessageState.QUEUED):
            withdraw.append(key)
    return PlanDiff(add=tuple(add), update=tuple(update), withdraw=tuple(sorted(withdraw)))


def sent_keys(existing: Iterable[StoredMessage]) -> frozenset[str]:
    """The planner's messages handed to a provider (an operator's resend is not one of the plan's)."""
    return frozenset(m.key for m in existing if m.state in SENT_STATES and not m.manual)


def card_sent_in(existing: Iterable[StoredMessage]) -> bool:
    """Whether an email of the booking carried the appointment card to the customer (R22)."""
    return any(m.state in SENT_STATES and m.channel is Channel.EMAIL and m.key.split("/", 1)[0] in CARD_KINDS
               for m in existing)


def failed_keys(existing: Iterable[StoredMessage]) -> frozenset[str]:
    return frozenset(m.key for m in existing if m.state is MessageState.FAILED and not m.manual)


# --- time-dependent states (R12, R16, R18) -------------------------------------------------------

class BookingFlags(NamedTuple):
    unconfirmed: bool  # the clock marker: the customer has not confirmed (R12)
    red: bool  # counts in the red counter: unconfirmed, and the visit is near (R12)
    late: bool  # the orange "late" marker: started, not marked arrived, follow-up due (R16)
    late_counter: bool  # counts in the late counter (R16; may light later than the marker)
    release_due: bool  # the slot should be released (R18)


def booking_flags(booking: Booking, settings: NotificationSettings, now: datetime) -> BookingFlags:
    active = booking.status is BookingStatus.ACTIVE and not (booking.needs_approval and booking.approved_at is None)
    c, late = settings.confirmation, settings.late
    starts = booking.starts_at
    unconfirmed = active and c.enabled and booking.confirmed_at is None and now < starts
    red = unconfirmed and now >= starts - timedelta(seconds=c.counter_offset_s)
    unmarked = active and late_path_applies(booking)
    return BookingFlags(
        unconfirmed=unconfirmed,
        red=red,
        late=unmarked and now >= starts + timedelta(seconds=late.delay_s),
        late_counter=unmarked and now >= starts + timedelta(seconds=late.counter_delay_s),
        release_due=unmarked and late.release_enabled and now >= starts + timedelta(seconds=late.release_delay_s),
    )


def next_flag_change(booking: Booking, settings: NotificationSettings, now: datetime) -> datetime | None:
    """The next moment `booking_flags` changes without an event, for the state sweep."""
    c, late, starts = settings.confirmation, settings.late, booking.starts_at
    moments = [starts - timedelta(seconds=c.counter_offset_s)]
    if late_path_applies(booking):
        moments += [starts, starts + timedelta(seconds=late.delay_s), starts + timedelta(seconds=late.counter_delay_s),
                    starts + timedelta(seconds=late.release_delay_s)]
    later = [m for m in moments if m > now]
    return min(later) if later else None


def apply_flags(booking: Booking, settings: NotificationSettings, now: datetime) -> tuple[Booking, list[tuple[str, dict]]]:
    """Bring the booking's markers to what `booking_flags` says at `now`; a due release cancels
    it (R18). Returns the new booking and what changed, as (timeline kind, detail)."""
    flags = booking_flags(booking, settings, now)
    if (flags.red == (booking.red_since is not None) and flags.late == (booking.late_since is not None)
            and flags.late_counter == (booking.late_counter_since is not None) and not flags.release_due):
        return booking, []  # most events: no marker changes
    c, late, starts = settings.confirmation, settings.late, booking.starts_at
    lit = {"red_since": (flags.red, starts - timedelta(seconds=c.counter_offset_s)),
           "late_since": (flags.late, starts + timedelta(seconds=late.delay_s)),
           "late_counter_since": (flags.late_counter, starts + timedelta(seconds=late.counter_delay_s))}
    changes: dict = {}
    notes: list[tuple[str, dict]] = []
    for name, (on, since) in lit.items():
        current = getattr(booking, name)
        if on and current is None:
            changes[name] = since  # the moment it lit, not when a sweep noticed
            notes.append((f"marker.{name.removesuffix('_since')}.on", {"since": since.isoformat()}))
        elif not on and current is not None:
            changes[name] = None
            notes.append((f"marker.{name.removesuffix('_since')}.off", {}))
    if flags.release_due and booking.released_at is None:
        changes.update(status=BookingStatus.CANCELLED, cancelled_by="release", cancelled_at=now, released_at=now,
                       late_since=None, late_counter_since=None, red_since=None)
        notes.append(("slot.released", {"reason": "not marked arrived", "starts_at": starts.isoformat(),
                                        "resource_id": booking.resource_id}))
    return (replace(booking, **changes) if changes else booking), notes
