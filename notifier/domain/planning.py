"""Planning: which messages a booking needs, and when.

`plan_booking` is a pure function of the booking, its customer, resource, tenant,
their settings and `now`. Each planned message carries a deterministic `key`: the
same state always plans the same keys, so replanning is a diff (`diff_plan`)
against what the store already holds, never a second send.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from notifier.domain.model import (
    Booking,
    BookingStatus,
    Channel,
    Customer,
    Kind,
    MessageState,
    NotificationSettings,
    Resource,
    Tenant,
)

DAY_S = 86_400


@dataclass(frozen=True, order=True)
class PlannedMessage:
    key: str  # unique per booking; stable for the same state
    kind: Kind
    channel: Channel
    due_at: datetime  # UTC
    recipient: str = "customer"


@dataclass(frozen=True)
class ExistingMessage:
    key: str
    state: MessageState
    due_at: datetime
    channel: Channel


@dataclass(frozen=True)
class PlanDiff:
    add: tuple[PlannedMessage, ...] = ()
    update: tuple[PlannedMessage, ...] = ()  # unsent: new due time or channel, or revived
    withdraw: tuple[str, ...] = ()  # keys of unsent messages that no longer apply

    @property
    def empty(self) -> bool:
        return not (self.add or self.update or self.withdraw)


def zone_of(tenant: Tenant, resource: Resource | None) -> ZoneInfo:
    return ZoneInfo((resource.timezone if resource and resource.timezone else None) or tenant.timezone)


def reachable_channels(tenant: Tenant, customer: Customer) -> frozenset[Channel]:
    """Customer channels we may use: switched on by the tenant (R2), consented (R3), with an address."""
    out = set()
    if Channel.EMAIL in customer.consents and customer.email:
        out.add(Channel.EMAIL)  # email is always available to the tenant (R2)
    for channel in (Channel.SMS, Channel.WHATSAPP):
        if channel in tenant.channels and channel in customer.consents and customer.phone:
            out.add(channel)
    return frozenset(out)


def local_days_before(starts_at: datetime, offset_s: int, zone: ZoneInfo) -> datetime:
    """`offset_s` before `starts_at`, whole days counted on the local calendar (DST-safe).

    "One day before a 09:00 visit" is 09:00 local the day before, even when that day
    is 23 or 25 hours long; the remainder below a day is plain elapsed time.
    """
    days, rest_s = divmod(offset_s, DAY_S)
    local = starts_at.astimezone(zone)
    wall = local.replace(tzinfo=None) - timedelta(days=days)
    return _localize(wall, zone) - timedelta(seconds=rest_s)


def local_time_on_day(starts_at: datetime, at: "datetime.time", zone: ZoneInfo) -> datetime:  # type: ignore[name-defined]
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


def _pick(channels: Iterable[Channel], reachable: frozenset[Channel], policy: str) -> list[tuple[str, Channel]]:
    """(slot, channel) pairs: under "first" one slot for the kind, under "all" one per channel."""
    usable = [c for c in channels if c in reachable]
    if not usable:
        return []
    if policy == "all":
        return [(c.value, c) for c in usable]
    return [("customer", usable[0])]


def plan_booking(
    booking: Booking,
    customer: Customer,
    resource: Resource,
    tenant: Tenant,
    settings: NotificationSettings,
    *,
    now: datetime,
) -> tuple[PlannedMessage, ...]:
    """Every message this booking needs from `now` on, in due order."""
    if booking.status is BookingStatus.CANCELLED:
        return ()
    zone = zone_of(tenant, resource)
    reachable = reachable_channels(tenant, customer)
    planned: list[PlannedMessage] = []

    def add(kind: Kind, channels: Iterable[Channel], due_at: datetime, anchor: str = "") -> None:
        # a customer message about a visit is useless once the visit has begun
        if due_at >= booking.starts_at or now >= booking.starts_at:
            return
        for slot, channel in _pick(channels, reachable, settings.channel_policy):
            key = f"{kind.value}/{slot}" + (f"/{anchor}" if anchor else "")
            planned.append(PlannedMessage(key=key, kind=kind, channel=channel, due_at=due_at))

    info = settings.info
    if info.enabled:
        add(Kind.INFO, info.channels, booking.created_at + timedelta(seconds=max(info.delay_s, 0)))

    reminder = settings.reminder
    # R4: a customer who came through online booking gets reminders only after accepting privacy
    privacy_ok = customer.privacy_accepted or not customer.created_via_online_booking
    if reminder.enabled and privacy_ok:
        if reminder.offset_s < 0:
            due = local_time_on_day(booking.starts_at, reminder.morning_at, zone)
        else:
            due = local_days_before(booking.starts_at, reminder.offset_s, zone)
        # a reminder whose time had passed when the visit was set would only echo the info message
        if due >= booking.scheduled_at:
            add(Kind.REMINDER, reminder.channels, due, anchor=_stamp(booking.starts_at))

    return tuple(sorted(planned, key=lambda m: (m.due_at, m.key)))


def diff_plan(existing: Iterable[ExistingMessage], planned: Iterable[PlannedMessage]) -> PlanDiff:
    """What to change so the store matches the plan; sent messages are never touched."""
    have = {m.key: m for m in existing}
    want = {m.key: m for m in planned}
    add, update, withdraw = [], [], []
    for key, message in want.items():
        old = have.get(key)
        if old is None:
            add.append(message)
        elif old.state in (MessageState.PLANNED, MessageState.WITHDRAWN) and (
            old.state is MessageState.WITHDRAWN or old.due_at != message.due_at or old.channel != message.channel
        ):
            update.append(message)
    for key, old in have.items():
        if key not in want and old.state in (MessageState.PLANNED, MessageState.QUEUED):
            withdraw.append(key)
    return PlanDiff(add=tuple(add), update=tuple(update), withdraw=tuple(sorted(withdraw)))


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%MZ")
