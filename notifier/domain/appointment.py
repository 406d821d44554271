"""What the customer's page says about a booking and offers now (R11, R14, R19, R23).

A pure function of the booking, its settings and the moment: the page shows it when opened,
and the same function decides whether the button pressed may still act, so the page never
offers what the POST would refuse (except when time or the booking moved in between).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from notifier.domain.model import Booking, BookingStatus, NotificationSettings
from notifier.domain.planning import booking_flags


class Status(StrEnum):
    REQUESTED = "requested"  # an online request the business has not accepted yet (R23, R32)
    AWAITING = "awaiting"  # waiting for the customer's confirmation (R11, the clock marker of R12)
    BOOKED = "booked"  # booked; no confirmation is asked for
    CONFIRMED = "confirmed"  # the customer confirmed (by link or at the booking system)
    MOVED = "moved"  # moved since it was booked, and not confirmed since
    STARTED = "started"  # under way
    OVER = "over"  # the visit has ended
    CANCELLED = "cancelled"  # by the customer, the staff, a workflow status (R34) or the release (R18)
    DECLINED = "declined"  # a request the business turned down (R23)


@dataclass(frozen=True)
class Appointment:
    status: Status
    may_confirm: bool
    may_cancel: bool
    cancel_until: datetime | None  # when cancelling by link closes (closed); None: the tenant does not allow it
    calendar: bool  # worth adding to a calendar: booked or accepted, not begun
    expires_at: datetime  # the link stops answering then


def appointment(booking: Booking, settings: NotificationSettings, now: datetime, *,
                valid_after_visit_s: int) -> Appointment:
    active = booking.status is BookingStatus.ACTIVE
    pending = booking.needs_approval and booking.approved_at is None
    unconfirmed = booking_flags(booking, settings, now).unconfirmed  # the planner's clock marker (R12)
    moved = booking.scheduled_at > booking.created_at and (booking.confirmed_at is None
                                                           or booking.confirmed_at < booking.scheduled_at)
    if not active:
        status = Status.DECLINED if pending and booking.cancelled_by != "customer" else Status.CANCELLED
    elif now >= booking.ends_at:
        status = Status.OVER
    elif now >= booking.starts_at:
        status = Status.STARTED
    elif pending:
        status = Status.REQUESTED
    elif moved:
        status = Status.MOVED
    elif booking.confirmed_at is not None:
        status = Status.CONFIRMED
    elif unconfirmed:
        status = Status.AWAITING
    else:
        status = Status.BOOKED
    rules = settings.cancellation
    cancel_until = booking.starts_at - timedelta(seconds=rules.window_s) if rules.customer_may_cancel else None
    upcoming = active and now < booking.starts_at
    return Appointment(
        status=status,
        may_confirm=unconfirmed,
        may_cancel=upcoming and cancel_until is not None and now <= cancel_until,
        cancel_until=cancel_until,
        calendar=upcoming and not pending,
        expires_at=booking.ends_at + timedelta(seconds=valid_after_visit_s),
    )
