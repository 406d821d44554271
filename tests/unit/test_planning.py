"""Planning (pure), one table per requirement: R2-R6, R10-R21, R23, R25, R26, R30-R35, quiet hours, DST."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
from notifier.domain.planning import (
    ExistingMessage,
    booking_flags,
    card_sent_in,
    diff_plan,
    in_quiet_hours,
    local_days_before,
    next_flag_change,
    plan_booking,
)
from notifier.domain.workflow import StatusEntry, status_history

BERLIN = ZoneInfo("Europe/Berlin")
TENANT = Tenant(id="t", name="T", timezone="Europe/Berlin", channels=frozenset({Channel.EMAIL, Channel.SMS}))
RESOURCE = Resource(id="r", tenant_id="t", name="Anna")
CUSTOMER = Customer(id="c", tenant_id="t", name="Erika", email="e@example.org", phone="+4915123456789",
                    language="de", consents=frozenset({Channel.EMAIL}), privacy_accepted=True)


def at(y, mo, d, h, mi=0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=BERLIN).astimezone(UTC)


def booking(starts: datetime, created: datetime, **kw) -> Booking:
    return Booking(id="b", tenant_id="t", customer_id="c", resource_id="r", starts_at=starts,
                   ends_at=starts + timedelta(hours=1), created_at=created, scheduled_at=created, **kw)


VISIT = at(2026, 12, 3, 15)  # Thursday 15:00
BOOKED = at(2026, 12, 1, 10)  # Tuesday 10:00


def conf(**sections) -> NotificationSettings:
    """Default settings with some sections changed: conf(late={"delay_s": 600})."""
    return NotificationSettings.from_layers(sections)


def plan(b: Booking, s: NotificationSettings | None = None, *, customer: Customer = CUSTOMER,
         tenant: Tenant = TENANT, now: datetime | None = None, sent: frozenset[str] = frozenset(),
         failed: frozenset[str] = frozenset()):
    return plan_booking(b, customer, RESOURCE, tenant, s or NotificationSettings(), now=now or b.created_at,
                        sent=sent, failed=failed).messages


def of(planned, kind: Kind):
    return [m for m in planned if m.kind is kind]


def due(planned, kind: Kind) -> list[datetime]:
    return [m.due_at for m in of(planned, kind)]


def existing(planned, state=MessageState.PLANNED):
    return [ExistingMessage(key=m.key, state=state, due_at=m.due_at, channel=m.channel) for m in planned]


# --- R10 new-booking info ---------------------------------------------------------------------

@pytest.mark.parametrize("delay_s, expected", [(0, at(2026, 12, 1, 10)), (600, at(2026, 12, 1, 10, 10)),
                                               (3600, at(2026, 12, 1, 11))])
def test_R10_info_after_the_configured_delay(delay_s, expected):
    assert due(plan(booking(VISIT, BOOKED), conf(info={"delay_s": delay_s})), Kind.INFO) == [expected]


def test_R10_info_switched_off_or_after_the_visit_began_is_not_planned():
    assert not of(plan(booking(VISIT, BOOKED), conf(info={"enabled": False})), Kind.INFO)
    soon = booking(BOOKED + timedelta(minutes=30), BOOKED)
    assert not of(plan(soon, conf(info={"delay_s": 3600})), Kind.INFO)


# --- R11-R13 confirmation, red counter, staff activity -------------------------------------------

def test_R11_confirmation_request_a_day_before_with_repetitions_while_unanswered():
    s = conf(confirmation={"repetitions": 2, "repetition_interval_s": 7200})
    assert due(plan(booking(VISIT, BOOKED), s), Kind.CONFIRMATION) == [
        at(2026, 12, 2, 15), at(2026, 12, 2, 17), at(2026, 12, 2, 19)]
    confirmed = booking(VISIT, BOOKED, confirmed_at=at(2026, 12, 2, 16))
    assert not of(plan(confirmed, s), Kind.CONFIRMATION)


def test_R11_repetitions_never_arrive_together():
    """Quiet hours pushed all three requests for a 21:30 visit to 08:00 of the visit day: each now
    keeps its interval after the one before as it really goes, and one that cannot go before the
    visit that way is not planned."""
    s = conf(confirmation={"repetitions": 2, "repetition_interval_s": 3600})
    evening = booking(at(2026, 12, 3, 21, 30), BOOKED)
    assert due(plan(evening, s), Kind.CONFIRMATION) == [at(2026, 12, 3, 8), at(2026, 12, 3, 9), at(2026, 12, 3, 10)]
    # two hours before a 22:00 visit is 20:00; the next would be 21:00, quiet until 08:00 the day after
    # the visit: the two repetitions are dropped rather than sent together or after the visit
    s = conf(confirmation={"repetitions": 2, "repetition_interval_s": 3600, "offset_s": 7200})
    assert due(plan(booking(at(2026, 12, 3, 22), BOOKED), s), Kind.CONFIRMATION) == [at(2026, 12, 3, 20)]


def test_R11_no_confirmation_request_when_booked_after_its_time():
    assert not of(plan(booking(VISIT, at(2026, 12, 3, 9))), Kind.CONFIRMATION)


def test_R12_unconfirmed_from_booking_red_from_two_hours_before():
    b = booking(VISIT, BOOKED)
    s = NotificationSettings()
    assert booking_flags(b, s, at(2026, 12, 2, 9)).unconfirmed and not booking_flags(b, s, at(2026, 12, 2, 9)).red
    assert booking_flags(b, s, at(2026, 12, 3, 13)).red
    assert not booking_flags(replace(b, confirmed_at=at(2026, 12, 3, 13, 30)), s, at(2026, 12, 3, 14)).red
    assert next_flag_change(b, s, at(2026, 12, 2, 9)) == at(2026, 12, 3, 13)


def test_R13_staff_activity_three_hours_before_while_unconfirmed():
    b = booking(VISIT, BOOKED)
    [activity] = of(plan(b), Kind.ACTIVITY_UNCONFIRMED)
    assert (activity.due_at, activity.channel, activity.recipient) == (at(2026, 12, 3, 12), Channel.ACTIVITY,
                                                                       "staff")
    diff = diff_plan(existing(plan(b)), plan(replace(b, confirmed_at=at(2026, 12, 3, 9))))
    assert activity.key in diff.withdraw  # confirming withdraws it, and the confirmation requests


# --- R14, R19 cancellations ----------------------------------------------------------------------

def cancelled(by: str, **kw) -> Booking:
    return booking(VISIT, BOOKED, status=BookingStatus.CANCELLED, cancelled_by=by,
                   cancelled_at=at(2026, 12, 2, 11), **kw)


def test_R14_R22_customer_cancels_the_staff_is_told_at_once_and_the_card_is_withdrawn_by_email():
    """The page tells the customer; an email carries the card that takes the visit out of the
    calendar an earlier card put it in (METHOD:CANCEL). Only by email: no other channel carries a
    card; and only after a card went out."""
    def planned(card_sent, s=NotificationSettings()):
        return plan_booking(cancelled("customer"), CUSTOMER, RESOURCE, TENANT, s, now=at(2026, 12, 2, 11),
                            card_sent=card_sent).messages

    assert [(m.kind, m.channel, m.due_at, m.recipient) for m in planned(True)] == [
        (Kind.CANCELLATION, Channel.EMAIL, at(2026, 12, 2, 11), "customer"),
        (Kind.STAFF_CANCELLED, Channel.STAFF, at(2026, 12, 2, 11), "staff")]
    assert [m.kind for m in planned(False)] == [Kind.STAFF_CANCELLED]
    assert [m.kind for m in planned(True, conf(cancellation={"enabled": False}))] == [Kind.STAFF_CANCELLED]
    # a booking made without the card (R15, R22) had its emails go without one: nothing to take back
    no_card = replace(cancelled("customer"), send_card=False)
    assert [m.kind for m in plan_booking(no_card, CUSTOMER, RESOURCE, TENANT, NotificationSettings(),
                                         now=at(2026, 12, 2, 11), card_sent=True).messages] == [Kind.STAFF_CANCELLED]
    # what says a card went out: an email of a kind that carries one, handed to the provider
    info = ExistingMessage("info/customer", MessageState.SENT, at(2026, 12, 1, 9), Channel.EMAIL)
    assert card_sent_in([info]) and not card_sent_in([replace(info, channel=Channel.SMS)])
    assert not card_sent_in([replace(info, state=MessageState.PLANNED)])
    assert not card_sent_in([replace(info, key="confirmation/customer")])


@pytest.mark.parametrize("inform, expected", [(False, []), (True, [Kind.CANCELLATION])])
def test_R19_staff_cancels_the_customer_hears_only_if_the_tenant_wants(inform, expected):
    s = conf(cancellation={"inform_customer_on_staff_cancel": inform})
    assert [m.kind for m in plan(cancelled("staff"), s, now=at(2026, 12, 2, 11))] == expected


# --- R15, R21 reminders ----------------------------------------------------------------------------

def test_R15_morning_reminder_at_the_configured_local_time_or_an_offset_before():
    b = booking(VISIT, BOOKED)
    assert due(plan(b), Kind.REMINDER) == [at(2026, 12, 3, 8)]
    assert due(plan(b, conf(reminder={"morning_at": "09:30"})), Kind.REMINDER) == [at(2026, 12, 3, 9, 30)]
    assert due(plan(b, conf(reminder={"offset_s": 86_400})), Kind.REMINDER) == [at(2026, 12, 2, 15)]
    assert due(plan(b, conf(reminder={"offset_s": 7_200})), Kind.REMINDER) == [at(2026, 12, 3, 13)]


def test_R15_no_reminder_when_its_time_had_passed_when_booked():
    b = booking(at(2026, 12, 1, 15), BOOKED)  # booked at 10:00 for 15:00 the same day
    assert not of(plan(b), Kind.REMINDER) and of(plan(b), Kind.INFO)


def test_R21_moved_after_the_reminder_went_out_a_new_reminder_is_sent_now():
    b = booking(VISIT, BOOKED)
    [old] = of(plan(b), Kind.REMINDER)
    moved_at = at(2026, 12, 3, 9)  # the morning reminder went out at 08:00; at 09:00 the visit moves to 17:00
    moved = replace(b, starts_at=at(2026, 12, 3, 17), ends_at=at(2026, 12, 3, 18), scheduled_at=moved_at)
    new = of(plan(moved, now=moved_at, sent=frozenset({old.key})), Kind.REMINDER)
    assert [m.due_at for m in new] == [moved_at] and new[0].key != old.key
    # without a reminder sent before, a reminder whose time passed is not made up for
    assert not of(plan(moved, now=moved_at), Kind.REMINDER)


def test_R21_moving_withdraws_what_no_longer_applies_and_keeps_what_was_sent():
    b = booking(VISIT, BOOKED)
    first = plan(b)
    moved = replace(b, starts_at=VISIT + timedelta(days=1), ends_at=VISIT + timedelta(days=1, hours=1),
                    scheduled_at=at(2026, 12, 1, 12))
    state = existing(first)
    state = [replace(m, state=MessageState.SENT) if m.key.startswith("info/") else m for m in state]
    diff = diff_plan(state, plan(moved, now=at(2026, 12, 1, 12)))
    assert not any(k.startswith("info/") for k in diff.withdraw)
    assert {m.kind for m in diff.add} >= {Kind.REMINDER, Kind.CONFIRMATION, Kind.CHANGE}
    assert {k.split("/")[0] for k in diff.withdraw} >= {"reminder", "confirmation", "activity_unconfirmed"}


# --- R16-R18 late ------------------------------------------------------------------------------------

@pytest.mark.parametrize("delay_s", [300, 600])
def test_R16_late_follow_up_5_or_10_minutes_after_the_start(delay_s):
    b, s = booking(VISIT, BOOKED), conf(late={"delay_s": delay_s})
    [late] = of(plan(b, s, now=VISIT), Kind.LATE)  # the state sweep replans every booking at its start
    assert late.due_at == VISIT + timedelta(seconds=delay_s) and late.recipient == "customer"
    assert next_flag_change(b, s, VISIT - timedelta(minutes=1)) == VISIT  # the sweep wakes the booking then


def test_R16_R17_R18_the_late_path_is_planned_only_once_the_visit_began():
    """Planned ahead, the late path was withdrawn again for nearly every visit (marked on time) and
    moved with every reschedule: it is planned when the visit starts unmarked, not before."""
    b = booking(VISIT, BOOKED)
    late_path = {Kind.LATE, Kind.ACTIVITY_LATE, Kind.STAFF_RELEASED}
    assert not late_path & {m.kind for m in plan(b, now=VISIT - timedelta(minutes=1))}
    assert late_path <= {m.kind for m in plan(b, now=VISIT)}
    assert not late_path & {m.kind for m in plan(replace(b, visit_outcome="arrived"), now=VISIT)}


def test_R16_the_late_marker_and_the_late_counter_that_may_light_later():
    b = booking(VISIT, BOOKED)
    s = conf(late={"delay_s": 300, "counter_delay_s": 900})
    flags = booking_flags(b, s, VISIT + timedelta(minutes=6))
    assert flags.late and not flags.late_counter
    assert booking_flags(b, s, VISIT + timedelta(minutes=16)).late_counter
    assert not booking_flags(replace(b, visit_outcome="arrived"), s, VISIT + timedelta(minutes=16)).late


def test_R16_R18_a_booking_entered_after_its_start_is_not_late_and_keeps_its_slot():
    """A booking that notifier learns of after its visit began (a walk-in recorded afterwards, the
    events example published days later) got the no-show notice and lost its slot at once."""
    late_path = {Kind.LATE, Kind.ACTIVITY_LATE, Kind.STAFF_RELEASED}
    walk_in = booking(VISIT, VISIT + timedelta(minutes=10))  # recorded ten minutes into the visit
    published_late = replace(booking(VISIT, BOOKED), received_at=VISIT + timedelta(days=2))
    for b in (walk_in, published_late):
        now = VISIT + timedelta(hours=1)
        assert not late_path & {m.kind for m in plan(b, now=now)}
        flags = booking_flags(b, NotificationSettings(), now)
        assert not (flags.late or flags.late_counter or flags.release_due)
        assert next_flag_change(b, NotificationSettings(), VISIT - timedelta(hours=1)) is None
    on_time = replace(booking(VISIT, BOOKED), received_at=BOOKED)
    assert late_path <= {m.kind for m in plan(on_time, now=VISIT)}
    assert booking_flags(on_time, NotificationSettings(), VISIT + timedelta(minutes=31)).release_due


def test_R16_R17_R18_marking_the_visit_withdraws_the_late_path():
    b = booking(VISIT, BOOKED)
    first = plan(b, now=VISIT)
    assert due(first, Kind.ACTIVITY_LATE) == [VISIT + timedelta(minutes=15)]  # R17
    assert due(first, Kind.STAFF_RELEASED) == [VISIT + timedelta(minutes=30)]  # R18
    assert booking_flags(b, NotificationSettings(), VISIT + timedelta(minutes=30)).release_due
    diff = diff_plan(existing(first), plan(replace(b, visit_outcome="arrived"), now=VISIT + timedelta(minutes=2)))
    assert {"late", "activity_late", "staff_released"} <= {k.split("/")[0] for k in diff.withdraw}
    assert not any(m.kind in (Kind.LATE, Kind.ACTIVITY_LATE, Kind.STAFF_RELEASED) for m in diff.add)


# --- R20 change notice -----------------------------------------------------------------------------

def test_R20_R23_R27_change_notices_and_answers_to_requests_go_on_every_consented_channel():
    """One channel policy for every kind sent change notices and accepted requests by email only;
    the salon seed sends them by email and, where it is on, SMS. Other kinds still go once."""
    both = replace(CUSTOMER, consents=frozenset({Channel.SMS, Channel.EMAIL}))
    moved = replace(booking(VISIT, BOOKED), starts_at=VISIT + timedelta(days=1),
                    ends_at=VISIT + timedelta(days=1, hours=1), scheduled_at=at(2026, 12, 2, 9))
    planned = plan(moved, customer=both, now=at(2026, 12, 2, 9))
    assert sorted(m.channel for m in of(planned, Kind.CHANGE)) == [Channel.EMAIL, Channel.SMS]
    assert len(of(planned, Kind.CONFIRMATION)) == 1 and len(of(planned, Kind.REMINDER)) == 1
    accepted = booking(VISIT, BOOKED, needs_approval=True, approved_at=at(2026, 12, 1, 12))
    assert sorted(m.channel for m in of(plan(accepted, customer=both, now=at(2026, 12, 1, 12)),
                                        Kind.REQUEST_ACCEPTED)) == [Channel.EMAIL, Channel.SMS]
    rejected = cancelled("workflow", needs_approval=True, cancel_reason="Kein Termin frei")
    assert sorted(m.channel for m in plan(rejected, customer=both, now=at(2026, 12, 2, 11))) == [
        Channel.EMAIL, Channel.SMS]
    # a tenant-wide policy is the default of every kind that does not set its own
    one = conf(channel_policy="first", request={"channel_policy": "all"})
    assert [m.channel for m in of(plan(moved, one, customer=both, now=at(2026, 12, 2, 9)), Kind.CHANGE)] == [
        Channel.EMAIL]
    assert one.request.channel_policy == "all"


def test_R20_a_moved_visit_gets_a_change_notice_at_the_move():
    moved = replace(booking(VISIT, BOOKED), starts_at=VISIT + timedelta(days=1),
                    ends_at=VISIT + timedelta(days=1, hours=1), scheduled_at=at(2026, 12, 2, 9))
    [change] = of(plan(moved, now=at(2026, 12, 2, 9)), Kind.CHANGE)
    assert change.due_at == at(2026, 12, 2, 9)
    assert not of(plan(moved, conf(change={"enabled": False}), now=at(2026, 12, 2, 9)), Kind.CHANGE)
    assert not of(plan(booking(VISIT, BOOKED)), Kind.CHANGE)


# --- R23, R30-R34 requests and status workflows -------------------------------------------------------

def test_R23_R32_an_online_request_gets_request_received_and_nothing_else_until_accepted():
    b = booking(VISIT, BOOKED, source="online", needs_approval=True)
    assert sorted(m.kind for m in plan(b)) == sorted([Kind.REQUEST_RECEIVED, Kind.STAFF_NEW_REQUEST])


def test_R23_R33_accepting_sends_the_confirmation_and_tells_the_resource():
    accepted = booking(VISIT, BOOKED, source="online", needs_approval=True, approved_at=at(2026, 12, 1, 12))
    kinds = {m.kind for m in plan(accepted, now=at(2026, 12, 1, 12))}
    assert {Kind.REQUEST_ACCEPTED, Kind.STAFF_CONFIRMED, Kind.REMINDER} <= kinds
    assert Kind.INFO not in kinds and Kind.REQUEST_RECEIVED not in kinds


def test_R23_R34_rejection_and_workflow_cancellation_tell_the_customer():
    rejected = cancelled("workflow", needs_approval=True, cancel_reason="Kein Termin frei")
    assert [m.kind for m in plan(rejected, now=at(2026, 12, 2, 11))] == [Kind.REQUEST_REJECTED]
    after_accept = cancelled("workflow", needs_approval=True, approved_at=BOOKED, cancel_reason="Krank")
    assert [m.kind for m in plan(after_accept, now=at(2026, 12, 2, 11))] == [Kind.CANCELLATION]


def test_R23_the_staff_cancelling_a_pending_request_rejects_it_with_the_reason():
    """A request the staff cancel is a rejection: the customer waits for an answer, whatever
    `inform_customer_on_staff_cancel` says of cancelled visits (R19)."""
    from notifier.domain import events as ev
    from notifier.domain import transitions as tr

    both = replace(CUSTOMER, consents=frozenset({Channel.SMS, Channel.EMAIL}))
    pending = booking(VISIT, BOOKED, source="online", needs_approval=True)
    body = {"schema_version": 1, "event_id": "e2", "type": "booking.cancelled", "occurred_at": "2026-12-02T11:00:00Z",
            "tenant_id": "t", "revision": 2, "data": {"booking_id": "b", "by": "staff", "reason": "Kein Termin frei"}}
    rejected, _ = tr.apply_to_booking(pending, ev.parse_event(json.dumps(body)))
    planned = plan(rejected, customer=both, now=at(2026, 12, 2, 11))
    assert sorted((m.kind, m.channel) for m in planned) == [(Kind.REQUEST_REJECTED, Channel.EMAIL),
                                                           (Kind.REQUEST_REJECTED, Channel.SMS)]
    assert rejected.cancel_reason == "Kein Termin frei"
    accepted = replace(pending, approved_at=at(2026, 12, 1, 12))  # an accepted one is a cancelled visit (R19)
    assert not plan(tr.apply_to_booking(accepted, ev.parse_event(json.dumps(body)))[0], customer=both,
                    now=at(2026, 12, 2, 11))


def test_R35_status_history_is_listed_newest_first():
    entries = [StatusEntry(at=at(2026, 12, 1, 9), status="Anfrage", kind="start"),
               StatusEntry(at=at(2026, 12, 1, 11), status="Bestätigt", kind="confirmation"),
               StatusEntry(at=at(2026, 12, 1, 10), status="Geprüft", kind="none")]
    assert [e.status for e in status_history(entries)] == ["Bestätigt", "Geprüft", "Anfrage"]


# --- R25 feedback ----------------------------------------------------------------------------------

def test_R25_feedback_after_the_visit_but_not_for_a_no_show():
    b = booking(VISIT, BOOKED)
    assert due(plan(b), Kind.FEEDBACK) == [VISIT + timedelta(hours=3)]  # end 16:00 + 2 h
    assert not of(plan(replace(b, visit_outcome="no_show"), now=VISIT + timedelta(minutes=20)), Kind.FEEDBACK)
    late_evening = booking(at(2026, 12, 3, 19), BOOKED)  # ends 20:00, +2 h = 22:00: quiet, next morning
    assert due(plan(late_evening), Kind.FEEDBACK) == [at(2026, 12, 4, 8)]


# --- R26 settings --------------------------------------------------------------------------------------

def test_R26_resource_overrides_tenant_defaults_key_by_key():
    s = NotificationSettings.from_layers({"late": {"delay_s": 600, "release_enabled": False}},
                                         {"late": {"delay_s": 300}, "info": {"enabled": False}})
    assert (s.late.delay_s, s.late.release_enabled, s.info.enabled) == (300, False, False)
    assert s.confirmation.offset_s == 86_400 and s.confirmation.counter_offset_s == 7_200  # Bitrix24 defaults


# --- R2-R4, R6 channels, consent, privacy, regions ---------------------------------------------------

def test_R3_no_customer_message_without_consent_but_staff_notices_still_go():
    b = booking(VISIT, BOOKED)
    planned = plan(b, customer=replace(CUSTOMER, consents=frozenset()))
    assert planned and all(m.recipient == "staff" for m in planned)


def test_R2_sms_only_where_the_tenant_switched_it_on():
    both = replace(CUSTOMER, consents=frozenset({Channel.SMS, Channel.EMAIL}))
    s = conf(info={"channels": ["sms", "email"]})
    assert of(plan(booking(VISIT, BOOKED), s, customer=both), Kind.INFO)[0].channel is Channel.SMS
    email_only = replace(TENANT, channels=frozenset({Channel.EMAIL}))
    assert of(plan(booking(VISIT, BOOKED), s, customer=both, tenant=email_only), Kind.INFO)[0].channel \
        is Channel.EMAIL


def test_R6_a_channel_not_offered_in_the_tenants_region_is_not_used():
    both = replace(CUSTOMER, consents=frozenset({Channel.SMS, Channel.EMAIL}))
    s = NotificationSettings.from_layers({"info": {"channels": ["sms", "email"]}},
                                         unavailable=frozenset({Channel.SMS}))
    assert of(plan(booking(VISIT, BOOKED), s, customer=both), Kind.INFO)[0].channel is Channel.EMAIL


def test_R4_online_customer_without_privacy_acceptance_gets_no_reminder():
    online = replace(CUSTOMER, created_via_online_booking=True, privacy_accepted=False)
    assert not of(plan(booking(VISIT, BOOKED), customer=online), Kind.REMINDER)
    assert of(plan(booking(VISIT, BOOKED), customer=replace(online, privacy_accepted=True)), Kind.REMINDER)


# --- quiet hours ---------------------------------------------------------------------------------------

def test_quiet_hours_move_customer_messages_to_the_morning_or_drop_them():
    late_night = booking(at(2026, 12, 2, 15), at(2026, 12, 1, 23))
    assert due(plan(late_night), Kind.INFO) == [at(2026, 12, 2, 8)]
    early_visit = booking(at(2026, 12, 2, 7, 30), at(2026, 12, 1, 23))
    assert not of(plan(early_visit), Kind.INFO)  # the morning comes after the visit
    assert due(plan(late_night, conf(quiet_hours={"enabled": False})), Kind.INFO) == [at(2026, 12, 1, 23)]


def test_quiet_hours_do_not_hold_back_the_late_follow_up():
    evening = booking(at(2026, 12, 3, 21, 30), BOOKED)
    assert due(plan(evening, now=evening.starts_at), Kind.LATE) == [at(2026, 12, 3, 21, 35)]


# --- DST (issue 4, acceptance 3) -------------------------------------------------------------------------

@pytest.mark.parametrize("visit, day_before", [
    (at(2026, 3, 30, 9), at(2026, 3, 29, 9)),  # spring: 29 March has 23 hours
    (at(2026, 10, 26, 9), at(2026, 10, 25, 9)),  # autumn: 25 October has 25 hours
])
def test_one_day_before_and_the_morning_keep_local_time_across_dst(visit, day_before):
    b = booking(visit, visit - timedelta(days=5))
    assert local_days_before(visit, 86_400, BERLIN) == day_before
    assert due(plan(b), Kind.CONFIRMATION) == [day_before]
    assert due(plan(b), Kind.REMINDER) == [visit.astimezone(BERLIN).replace(hour=8).astimezone(UTC)]
    assert due(plan(b, conf(reminder={"offset_s": 86_400})), Kind.REMINDER) == [day_before]


# --- properties (issue 4, acceptance 2) ------------------------------------------------------------------

moments = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31))


@st.composite
def scenarios(draw):
    created = draw(moments).replace(tzinfo=BERLIN).astimezone(UTC)
    starts = created + timedelta(minutes=draw(st.integers(min_value=1, max_value=60 * 24 * 20)))
    b = booking(starts, created, confirmed_at=draw(st.sampled_from([None, created])),
                visit_outcome=draw(st.sampled_from([None, None, "arrived", "no_show"])),
                needs_approval=draw(st.booleans()))
    if b.needs_approval and draw(st.booleans()):
        b = replace(b, approved_at=created + timedelta(minutes=draw(st.integers(0, 120))))
    s = conf(
        info={"enabled": draw(st.booleans()), "delay_s": draw(st.sampled_from([0, 600, 3600, 7200]))},
        reminder={"enabled": draw(st.booleans()), "offset_s": draw(st.sampled_from([-1, 3600, 86_400, 172_800])),
                  "morning_at": f"{draw(st.integers(5, 11)):02d}:{draw(st.sampled_from([0, 30])):02d}"},
        confirmation={"repetitions": draw(st.integers(0, 3)), "offset_s": draw(st.sampled_from([3600, 86_400]))},
        late={"delay_s": draw(st.sampled_from([300, 600]))},
        quiet_hours={"enabled": draw(st.booleans())},
        channel_policy=draw(st.sampled_from(["first", "all"])),
    )
    consents = frozenset(draw(st.sets(st.sampled_from([Channel.EMAIL, Channel.SMS, Channel.WHATSAPP]))))
    c = replace(CUSTOMER, consents=consents, created_via_online_booking=draw(st.booleans()),
                privacy_accepted=draw(st.booleans()))
    now = b.created_at + timedelta(minutes=draw(st.integers(0, 60 * 24 * 3)))
    return b, s, c, now


AFTER_VISIT = {Kind.LATE, Kind.FEEDBACK}


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_property_no_customer_message_after_the_visit_but_late_follow_up_and_feedback(scenario):
    b, s, c, now = scenario
    for m in plan(b, s, customer=c, now=now):
        if m.recipient == "customer" and m.kind not in AFTER_VISIT:
            assert m.due_at < b.starts_at


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.sampled_from(["customer", "staff", "workflow"]))
def test_property_a_cancelled_booking_plans_only_what_its_cancellation_implies(scenario, by):
    b, s, c, now = scenario
    gone = replace(b, status=BookingStatus.CANCELLED, cancelled_by=by, cancelled_at=now, cancel_reason="x")
    allowed = {Kind.STAFF_CANCELLED, Kind.CANCELLATION, Kind.REQUEST_REJECTED}
    assert {m.kind for m in plan(gone, s, customer=c, now=now)} <= allowed


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_property_customer_messages_only_on_consented_channels_the_tenant_switched_on(scenario):
    b, s, c, now = scenario
    for m in plan(b, s, customer=c, now=now):
        if m.recipient == "customer":
            assert m.channel in c.consents and (m.channel is Channel.EMAIL or m.channel in TENANT.channels)
        else:
            assert m.channel in (Channel.STAFF, Channel.ACTIVITY)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_property_replanning_the_same_state_changes_nothing(scenario):
    b, s, c, now = scenario
    first = plan(b, s, customer=c, now=now)
    assert plan(b, s, customer=c, now=now) == first
    assert diff_plan(existing(first), plan(b, s, customer=c, now=now)).empty


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_property_every_customer_message_but_the_late_follow_up_respects_quiet_hours(scenario):
    b, s, c, now = scenario
    s = s.model_copy(update={"quiet_hours": s.quiet_hours.model_copy(update={"enabled": True})})
    for m in plan(b, s, customer=c, now=now):
        if m.recipient == "customer" and m.kind is not Kind.LATE:
            assert not in_quiet_hours(m.due_at, time(21), time(8), BERLIN)


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.integers(min_value=60, max_value=60 * 24 * 10))
def test_property_moving_a_visit_whose_reminder_was_sent_yields_exactly_one_new_reminder(scenario, shift_min):
    b, s, c, _ = scenario
    b = replace(b, needs_approval=False, approved_at=None)
    s = s.model_copy(update={"reminder": s.reminder.model_copy(update={"enabled": True, "channel_policy": "first"}),
                             "quiet_hours": s.quiet_hours.model_copy(update={"enabled": False})})
    c = replace(c, consents=c.consents | {Channel.EMAIL}, privacy_accepted=True)
    reminders = of(plan(b, s, customer=c, now=b.created_at), Kind.REMINDER)
    if not reminders:
        return  # its time had passed when booked: nothing was sent to repeat
    sent_at = reminders[0].due_at
    moved_at = sent_at + timedelta(minutes=1)
    new_start = max(b.starts_at, moved_at) + timedelta(minutes=shift_min)
    moved = replace(b, starts_at=new_start, ends_at=new_start + timedelta(hours=1), scheduled_at=moved_at)
    if not of(plan(replace(moved, scheduled_at=b.created_at), s, customer=c, now=b.created_at), Kind.REMINDER):
        return  # the new visit has no reminder time before it (a midnight visit, a morning reminder)
    state = [replace(m, state=MessageState.SENT) for m in existing(reminders)]
    diff = diff_plan(state, plan(moved, s, customer=c, now=moved_at, sent=frozenset(m.key for m in state)))
    assert len([m for m in diff.add if m.kind is Kind.REMINDER]) == 1


# --- R24 switching kinds off, R30-R31 workflow statuses ------------------------------------------------

@pytest.mark.parametrize("section, kinds", [
    ("info", {Kind.INFO}), ("confirmation", {Kind.CONFIRMATION}), ("reminder", {Kind.REMINDER}),
    ("late", {Kind.LATE}), ("feedback", {Kind.FEEDBACK}),
])
def test_R24_the_admin_can_switch_off_any_kind(section, kinds):
    b = booking(VISIT, BOOKED)

    def planned(s=None):  # at the booking, and at the visit's start (the late path)
        return {m.kind for m in plan(b, s)} | {m.kind for m in plan(b, s, now=VISIT)}

    assert kinds & planned()
    assert not kinds & planned(conf(**{section: {"enabled": False}}))
    staff_off = plan(b, conf(staff={"enabled": False}))
    assert all(m.recipient == "customer" for m in staff_off)


def test_R30_R31_R32_R33_a_status_workflow_drives_the_booking_through_its_kinds():
    from notifier.domain import events as ev
    from notifier.domain import transitions as tr

    def status_event(kind: str, revision: int, reason: str | None = None):
        data = {"booking_id": "b", "status": {"id": f"s{revision}", "name": f"Status {revision}", "kind": kind}}
        if reason:
            data["reason"] = reason
        return ev.parse_event(json.dumps({
            "schema_version": 1, "event_id": f"e{revision}", "type": "booking.status_changed",
            "occurred_at": "2026-12-01T12:00:00+01:00", "tenant_id": "t", "revision": revision, "data": data}))

    b = booking(VISIT, BOOKED)
    b, _ = tr.apply_to_booking(b, status_event("start", 2))  # R32: under the workflow, a request now
    assert b.needs_approval and {m.kind for m in plan(b)} == {Kind.REQUEST_RECEIVED, Kind.STAFF_NEW_REQUEST}
    b, _ = tr.apply_to_booking(b, status_event("none", 3))  # R31: a status of no kind changes nothing
    assert b.workflow_status == {"id": "s3", "name": "Status 3", "kind": "none"} and b.approved_at is None
    b, notes = tr.apply_to_booking(b, status_event("confirmation", 4))  # R33
    assert b.approved_at is not None and notes[0].detail["kind"] == "confirmation"
    assert {Kind.REQUEST_ACCEPTED, Kind.STAFF_CONFIRMED} <= {m.kind for m in plan(b, now=at(2026, 12, 1, 12))}
    b, _ = tr.apply_to_booking(b, status_event("cancellation", 5, reason="Praxis geschlossen"))  # R34
    assert (b.status, b.cancelled_by, b.cancel_reason) == (BookingStatus.CANCELLED, "workflow", "Praxis geschlossen")


# --- fallback channel (issue 6) -------------------------------------------------------------------------

def test_a_message_failed_for_good_goes_out_once_more_on_the_fallback_channel():
    both = replace(CUSTOMER, consents=frozenset({Channel.WHATSAPP, Channel.SMS}))
    tenant = replace(TENANT, channels=frozenset({Channel.EMAIL, Channel.SMS, Channel.WHATSAPP}))
    s = conf(info={"channels": ["whatsapp", "sms"]}, fallback={"whatsapp": "sms"})
    b = booking(VISIT, BOOKED)
    [info] = of(plan(b, s, customer=both, tenant=tenant), Kind.INFO)
    assert info.channel is Channel.WHATSAPP
    later = at(2026, 12, 1, 10, 5)
    again = of(plan(b, s, customer=both, tenant=tenant, now=later, failed=frozenset({info.key})), Kind.INFO)
    assert [(m.key, m.channel, m.due_at) for m in again] == [
        (info.key, Channel.WHATSAPP, info.due_at), (f"{info.key}/fallback", Channel.SMS, later)]
    no_sms = replace(both, consents=frozenset({Channel.WHATSAPP}))  # only where the customer consented
    assert len(of(plan(b, s, customer=no_sms, tenant=tenant, now=later, failed=frozenset({info.key})),
                  Kind.INFO)) == 1
