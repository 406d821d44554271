"""Planning (pure): R10 new-booking info, R15 reminder, R2/R3 channels and consent, R4 privacy, DST."""

from __future__ import annotations

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
    InfoSettings,
    Kind,
    MessageState,
    NotificationSettings,
    ReminderSettings,
    Resource,
    Tenant,
)
from notifier.domain.planning import ExistingMessage, diff_plan, local_days_before, plan_booking

BERLIN = ZoneInfo("Europe/Berlin")
TENANT = Tenant(id="t", name="T", timezone="Europe/Berlin", channels=frozenset({Channel.EMAIL, Channel.SMS}))
RESOURCE = Resource(id="r", tenant_id="t", name="Anna")
CUSTOMER = Customer(id="c", tenant_id="t", name="Erika", email="e@example.org", phone="+4915123456789",
                    language="de", consents=frozenset({Channel.EMAIL}), privacy_accepted=True)


def booking(starts_local: datetime, created_local: datetime, **kw) -> Booking:
    starts = starts_local.replace(tzinfo=BERLIN).astimezone(UTC)
    created = created_local.replace(tzinfo=BERLIN).astimezone(UTC)
    return Booking(id="b", tenant_id="t", customer_id="c", resource_id="r", starts_at=starts,
                   ends_at=starts + timedelta(hours=1), created_at=created, scheduled_at=created, **kw)


def plan(b: Booking, s: NotificationSettings = NotificationSettings(), *, customer: Customer = CUSTOMER,
         tenant: Tenant = TENANT, now: datetime | None = None):
    return plan_booking(b, customer, RESOURCE, tenant, s, now=now or b.created_at)


def local(moment: datetime) -> datetime:
    return moment.astimezone(BERLIN).replace(tzinfo=None)


def by_kind(planned, kind: Kind):
    return [m for m in planned if m.kind is kind]


# --- R10 ----------------------------------------------------------------------------------

@pytest.mark.parametrize("delay_s, expected_local", [
    (0, datetime(2026, 12, 1, 9, 0)),
    (600, datetime(2026, 12, 1, 9, 10)),
    (3600, datetime(2026, 12, 1, 10, 0)),
])
def test_R10_info_is_sent_after_the_configured_delay(delay_s, expected_local):
    b = booking(datetime(2026, 12, 3, 15, 0), datetime(2026, 12, 1, 9, 0))
    s = NotificationSettings(info=InfoSettings(delay_s=delay_s))
    [info] = by_kind(plan(b, s), Kind.INFO)
    assert local(info.due_at) == expected_local
    assert info.channel is Channel.EMAIL


def test_R10_info_switched_off_plans_nothing():
    b = booking(datetime(2026, 12, 3, 15, 0), datetime(2026, 12, 1, 9, 0))
    assert not by_kind(plan(b, NotificationSettings(info=InfoSettings(enabled=False))), Kind.INFO)


def test_R10_info_that_would_arrive_after_the_visit_began_is_dropped():
    b = booking(datetime(2026, 12, 1, 9, 30), datetime(2026, 12, 1, 9, 0))
    assert not by_kind(plan(b, NotificationSettings(info=InfoSettings(delay_s=3600))), Kind.INFO)


# --- R15 ----------------------------------------------------------------------------------

def test_R15_morning_reminder_is_on_the_visit_day_at_the_configured_local_time():
    b = booking(datetime(2026, 12, 3, 15, 0), datetime(2026, 12, 1, 9, 0))
    [reminder] = by_kind(plan(b), Kind.REMINDER)
    assert local(reminder.due_at) == datetime(2026, 12, 3, 8, 0)
    s = NotificationSettings(reminder=ReminderSettings(morning_at=time(7, 15)))
    [reminder] = by_kind(plan(b, s), Kind.REMINDER)
    assert local(reminder.due_at) == datetime(2026, 12, 3, 7, 15)


def test_R15_offset_reminder_is_that_long_before_the_visit():
    b = booking(datetime(2026, 12, 3, 15, 0), datetime(2026, 12, 1, 9, 0))
    [reminder] = by_kind(plan(b, NotificationSettings(reminder=ReminderSettings(offset_s=86_400))), Kind.REMINDER)
    assert local(reminder.due_at) == datetime(2026, 12, 2, 15, 0)
    [reminder] = by_kind(plan(b, NotificationSettings(reminder=ReminderSettings(offset_s=7_200))), Kind.REMINDER)
    assert local(reminder.due_at) == datetime(2026, 12, 3, 13, 0)


def test_R15_no_reminder_when_its_time_had_passed_before_the_booking_was_made():
    b = booking(datetime(2026, 12, 1, 15, 0), datetime(2026, 12, 1, 9, 0))  # morning reminder 08:00 passed
    assert not by_kind(plan(b), Kind.REMINDER)
    assert by_kind(plan(b), Kind.INFO)  # the info message tells them instead


def test_R15_reminder_for_a_visit_before_the_morning_time_is_dropped():
    b = booking(datetime(2026, 12, 3, 7, 30), datetime(2026, 12, 1, 9, 0))
    assert not by_kind(plan(b), Kind.REMINDER)


# --- R2, R3: channels and consent ---------------------------------------------------------------

def test_R3_no_message_on_a_channel_without_consent():
    b = booking(datetime(2026, 12, 3, 15, 0), datetime(2026, 12, 1, 9, 0))
    nobody = replace(CUSTOMER, consents=frozenset())
    assert plan(b, customer=nobody) == ()


def test_R2_sms_is_used_only_where_the_tenant_switched_it_on():
    b = booking(datetime(2026, 12, 3, 15, 0), datetime(2026, 12, 1, 9, 0))
    sms_customer = replace(CUSTOMER, consents=frozenset({Channel.SMS, Channel.EMAIL}))
    s = NotificationSettings(info=InfoSettings(channels=(Channel.SMS, Channel.EMAIL)))
    [info] = by_kind(plan(b, s, customer=sms_customer), Kind.INFO)
    assert info.channel is Channel.SMS
    email_only_tenant = replace(TENANT, channels=frozenset({Channel.EMAIL}))
    [info] = by_kind(plan(b, s, customer=sms_customer, tenant=email_only_tenant), Kind.INFO)
    assert info.channel is Channel.EMAIL


def test_R3_all_channel_policy_sends_on_every_consented_channel():
    b = booking(datetime(2026, 12, 3, 15, 0), datetime(2026, 12, 1, 9, 0))
    both = replace(CUSTOMER, consents=frozenset({Channel.SMS, Channel.EMAIL}))
    s = NotificationSettings(info=InfoSettings(channels=(Channel.SMS, Channel.EMAIL)), channel_policy="all")
    assert {m.channel for m in by_kind(plan(b, s, customer=both), Kind.INFO)} == {Channel.SMS, Channel.EMAIL}


def test_R4_online_customer_without_privacy_acceptance_gets_no_reminder():
    b = booking(datetime(2026, 12, 3, 15, 0), datetime(2026, 12, 1, 9, 0))
    online = replace(CUSTOMER, created_via_online_booking=True, privacy_accepted=False)
    assert not by_kind(plan(b, customer=online), Kind.REMINDER)
    accepted = replace(online, privacy_accepted=True)
    assert by_kind(plan(b, customer=accepted), Kind.REMINDER)
    existing = replace(CUSTOMER, created_via_online_booking=False, privacy_accepted=False)
    assert by_kind(plan(b, customer=existing), Kind.REMINDER)


def test_cancelled_booking_plans_nothing():
    b = booking(datetime(2026, 12, 3, 15, 0), datetime(2026, 12, 1, 9, 0), status=BookingStatus.CANCELLED)
    assert plan(b) == ()


# --- time zones and DST ---------------------------------------------------------------------

@pytest.mark.parametrize("visit_local, day_before_local", [
    (datetime(2026, 3, 30, 9, 0), datetime(2026, 3, 29, 9, 0)),  # spring: 29 March is 23 h long
    (datetime(2026, 10, 26, 9, 0), datetime(2026, 10, 25, 9, 0)),  # autumn: 25 October is 25 h long
])
def test_one_day_before_keeps_the_local_time_across_dst(visit_local, day_before_local):
    starts = visit_local.replace(tzinfo=BERLIN).astimezone(UTC)
    assert local(local_days_before(starts, 86_400, BERLIN)) == day_before_local
    b = booking(visit_local, visit_local - timedelta(days=5))
    [reminder] = by_kind(plan(b, NotificationSettings(reminder=ReminderSettings(offset_s=86_400))), Kind.REMINDER)
    assert local(reminder.due_at) == day_before_local
    [morning] = by_kind(plan(b), Kind.REMINDER)
    assert local(morning.due_at) == visit_local.replace(hour=8, minute=0)


# --- replanning --------------------------------------------------------------------------------

def existing_from(planned, state=MessageState.PLANNED):
    return [ExistingMessage(key=m.key, state=state, due_at=m.due_at, channel=m.channel) for m in planned]


def test_moving_the_visit_withdraws_the_old_reminder_and_plans_a_new_one():
    b = booking(datetime(2026, 12, 3, 15, 0), datetime(2026, 12, 1, 9, 0))
    first = plan(b)
    moved = replace(b, starts_at=b.starts_at + timedelta(days=1), ends_at=b.ends_at + timedelta(days=1))
    diff = diff_plan(existing_from(first), plan(moved))
    assert [m.kind for m in diff.add] == [Kind.REMINDER]
    assert len(diff.withdraw) == 1 and diff.withdraw[0].startswith("reminder/")
    assert not diff.update  # the info message is untouched


def test_sent_messages_are_never_withdrawn_or_replanned():
    b = booking(datetime(2026, 12, 3, 15, 0), datetime(2026, 12, 1, 9, 0))
    sent = existing_from(plan(b), MessageState.SENT)
    cancelled = replace(b, status=BookingStatus.CANCELLED)
    assert diff_plan(sent, plan(cancelled)).empty


# --- properties ------------------------------------------------------------------------------

moments = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31))


@st.composite
def scenarios(draw):
    created = draw(moments)
    starts = created + timedelta(minutes=draw(st.integers(min_value=1, max_value=60 * 24 * 20)))
    b = booking(starts, created)
    s = NotificationSettings(
        info=InfoSettings(enabled=draw(st.booleans()), delay_s=draw(st.sampled_from([0, 600, 3600, 7200]))),
        reminder=ReminderSettings(enabled=draw(st.booleans()),
                                  offset_s=draw(st.sampled_from([-1, 3600, 86_400, 172_800])),
                                  morning_at=time(draw(st.integers(5, 11)), draw(st.sampled_from([0, 30])))),
        channel_policy=draw(st.sampled_from(["first", "all"])),
    )
    consents = frozenset(draw(st.sets(st.sampled_from([Channel.EMAIL, Channel.SMS, Channel.WHATSAPP]))))
    c = replace(CUSTOMER, consents=consents, created_via_online_booking=draw(st.booleans()),
                privacy_accepted=draw(st.booleans()))
    now = b.created_at + timedelta(minutes=draw(st.integers(0, 60 * 24 * 3)))
    return b, s, c, now


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_property_no_customer_message_at_or_after_the_visit(scenario):
    b, s, c, now = scenario
    assert all(m.due_at < b.starts_at for m in plan(b, s, customer=c, now=now))


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_property_only_consented_channels_the_tenant_switched_on(scenario):
    b, s, c, now = scenario
    for m in plan(b, s, customer=c, now=now):
        assert m.channel in c.consents
        assert m.channel is Channel.EMAIL or m.channel in TENANT.channels


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_property_replanning_the_same_state_changes_nothing(scenario):
    b, s, c, now = scenario
    first = plan(b, s, customer=c, now=now)
    assert plan(b, s, customer=c, now=now) == first  # deterministic: same keys, same times
    assert diff_plan(existing_from(first), plan(b, s, customer=c, now=now)).empty


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.integers(min_value=1, max_value=60 * 24 * 10))
def test_property_moving_a_visit_never_sends_a_sent_message_again(scenario, shift_min):
    b, s, c, now = scenario
    sent = existing_from(plan(b, s, customer=c, now=now), MessageState.SENT)
    moved = replace(b, starts_at=b.starts_at + timedelta(minutes=shift_min),
                    ends_at=b.ends_at + timedelta(minutes=shift_min), scheduled_at=now)
    diff = diff_plan(sent, plan(moved, s, customer=c, now=now))
    assert not {m.key for m in diff.add + diff.update} & {m.key for m in sent}
    assert not diff.withdraw
    if any(m.key.startswith("info/") for m in sent):
        assert all(m.kind is not Kind.INFO for m in diff.add)
    assert len([m for m in diff.add if m.kind is Kind.REMINDER]) <= (2 if s.channel_policy == "all" else 1)
