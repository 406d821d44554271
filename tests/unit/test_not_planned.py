"""Planning says what it leaves out and why (issue 19): one `NotPlanned` per kind switched on that
a booking will not get, with a machine-readable reason. R2, R3, R4, R5, R6, R10, R11, R13, R15,
R24, R25; quiet hours."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.domain import planning as p
from notifier.domain.model import (
    Booking,
    Channel,
    Customer,
    Kind,
    NotificationSettings,
    NotPlanned,
    Resource,
    Tenant,
)

BERLIN = ZoneInfo("Europe/Berlin")
ALL = frozenset({Channel.EMAIL, Channel.SMS, Channel.WHATSAPP})
TENANT = Tenant(id="t", name="T", timezone="Europe/Berlin", channels=ALL)
RESOURCE = Resource(id="r", tenant_id="t", name="Anna")
CUSTOMER = Customer(id="c", tenant_id="t", name="Erika", email="e@example.org", phone="+4915123456789",
                    phone_type="mobile", language="de", consents=frozenset({Channel.EMAIL}), privacy_accepted=True)
DEFAULT = (Channel.WHATSAPP, Channel.SMS, Channel.EMAIL)


def at(y, mo, d, h, mi=0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=BERLIN).astimezone(UTC)


VISIT = at(2026, 12, 3, 15)
BOOKED = at(2026, 12, 1, 10)


def booking(starts: datetime = VISIT, created: datetime = BOOKED, **kw) -> Booking:
    return Booking(id="b", tenant_id="t", customer_id="c", resource_id="r", starts_at=starts,
                   ends_at=starts + timedelta(hours=1), created_at=created, scheduled_at=kw.pop("scheduled", created),
                   **kw)


def conf(*layers, **kw) -> NotificationSettings:
    return NotificationSettings.from_layers(*(layers or ({},)), **kw)


def plan(b: Booking | None = None, s: NotificationSettings | None = None, *, customer: Customer = CUSTOMER,
         tenant: Tenant = TENANT, now: datetime | None = None) -> p.Plan:
    b = b or booking()
    return p.plan_booking(b, customer, RESOURCE, tenant, s or NotificationSettings(), now=now or b.scheduled_at)


def reasons(result: p.Plan) -> dict[Kind, str]:
    return {n.kind: n.reason for n in result.not_planned}


def test_a_booking_with_everything_reachable_leaves_nothing_out():
    result = plan()
    assert result.not_planned == ()
    assert {m.kind for m in result.messages} == {Kind.INFO, Kind.CONFIRMATION, Kind.REMINDER, Kind.FEEDBACK,
                                                 Kind.ACTIVITY_UNCONFIRMED}


def test_R11_R13_R15_booked_30_minutes_before_the_visit_the_confirmation_and_reminder_are_inside_lead_time():
    b = booking(starts=at(2026, 12, 3, 15), created=at(2026, 12, 3, 14, 30))
    result = plan(b)
    assert Kind.INFO in {m.kind for m in result.messages}
    assert reasons(result) == {Kind.CONFIRMATION: p.INSIDE_LEAD_TIME, Kind.REMINDER: p.INSIDE_LEAD_TIME,
                               Kind.ACTIVITY_UNCONFIRMED: p.INSIDE_LEAD_TIME}
    [confirmation] = [n for n in result.not_planned if n.kind is Kind.CONFIRMATION]
    assert confirmation.channels == DEFAULT


def test_R10_an_info_delayed_past_the_start_is_inside_lead_time():
    b = booking(starts=at(2026, 12, 3, 15), created=at(2026, 12, 3, 14, 55))
    assert reasons(plan(b, conf({"info": {"delay_s": 600}})))[Kind.INFO] == p.INSIDE_LEAD_TIME


def test_quiet_hours_holding_the_info_until_after_an_early_visit():
    b = booking(starts=at(2026, 12, 3, 7, 30), created=at(2026, 12, 2, 22, 0))  # booked late at night for 07:30
    assert reasons(plan(b))[Kind.INFO] == p.QUIET_HOURS_AFTER_VISIT


def test_R3_no_consent_on_any_channel_of_the_kind():
    nobody = Customer(id="c", tenant_id="t", name="E", email="e@example.org", phone="+4915123456789")
    result = plan(customer=nobody)
    assert result.messages == () or all(m.recipient == "staff" for m in result.messages)
    assert set(reasons(result).values()) == {p.NO_CONSENT}
    assert Kind.INFO in reasons(result)


def test_R2_a_kind_only_on_sms_of_a_tenant_without_sms():
    tenant = Tenant(id="t", name="T", channels=frozenset({Channel.EMAIL}))
    s = conf({"info": {"channels": ["sms"]}})
    assert reasons(plan(s=s, tenant=tenant))[Kind.INFO] == p.CHANNEL_SWITCHED_OFF


def test_different_reasons_per_channel_say_no_reachable_channel_with_each():
    tenant = Tenant(id="t", name="T", channels=frozenset({Channel.EMAIL, Channel.SMS}))
    customer = Customer(id="c", tenant_id="t", name="E", email=None, phone="+493471234567", phone_type="fixed_line",
                        consents=frozenset({Channel.EMAIL, Channel.SMS}))
    [info] = [n for n in plan(customer=customer, tenant=tenant).not_planned if n.kind is Kind.INFO]
    assert info.reason == p.NO_REACHABLE_CHANNEL
    assert dict(info.why) == {Channel.WHATSAPP: p.CHANNEL_SWITCHED_OFF, Channel.SMS: p.NUMBER_CANNOT_RECEIVE,
                              Channel.EMAIL: p.NO_ADDRESS}


def test_the_reason_is_that_of_the_channels_the_customer_asked_for():
    tenant = Tenant(id="t", name="T", channels=frozenset({Channel.EMAIL, Channel.SMS}))
    customer = Customer(id="c", tenant_id="t", name="E", email=None, phone=None,
                        consents=frozenset({Channel.EMAIL, Channel.SMS}))
    [info] = [n for n in plan(customer=customer, tenant=tenant).not_planned if n.kind is Kind.INFO]
    assert info == NotPlanned(Kind.INFO, p.NO_ADDRESS, (Channel.SMS, Channel.EMAIL))


def test_R6_a_channel_unavailable_in_the_region():
    s = conf({"info": {"channels": ["whatsapp"]}}, unavailable=frozenset({Channel.WHATSAPP}))
    customer = Customer(id="c", tenant_id="t", name="E", phone="+4915123456789", phone_type="mobile",
                        consents=frozenset({Channel.WHATSAPP}))
    assert reasons(plan(s=s, customer=customer))[Kind.INFO] == p.CHANNEL_UNAVAILABLE_IN_REGION


def test_R6_a_consented_channel_unavailable_in_the_region_is_said_though_email_goes():
    s = conf(unavailable=frozenset({Channel.WHATSAPP}))
    customer = Customer(id="c", tenant_id="t", name="E", email="e@example.org", phone="+4915123456789",
                        phone_type="mobile", consents=frozenset({Channel.WHATSAPP, Channel.EMAIL}))
    result = plan(s=s, customer=customer)
    assert {m.channel for m in result.messages if m.kind is Kind.INFO} == {Channel.EMAIL}
    assert NotPlanned(Kind.INFO, p.CHANNEL_UNAVAILABLE_IN_REGION, (Channel.WHATSAPP,)) in result.not_planned


def test_a_channel_without_provider_is_not_chosen_and_says_so():
    s = conf(without_provider=frozenset({Channel.SMS}))
    customer = Customer(id="c", tenant_id="t", name="E", email="e@example.org", phone="+4915123456789",
                        phone_type="mobile", consents=frozenset({Channel.SMS, Channel.EMAIL}))
    result = plan(s=s, customer=customer)
    assert {m.channel for m in result.messages if m.recipient == "customer"} == {Channel.EMAIL}
    assert {n.reason for n in result.not_planned} == {p.NO_PROVIDER}


def test_R5_a_landline_takes_no_sms_email_goes_and_the_number_is_the_reason():
    landline = Customer(id="c", tenant_id="t", name="E", email="e@example.org", phone="+3901512345678",
                        phone_type="fixed_line", consents=frozenset({Channel.SMS, Channel.EMAIL}))
    result = plan(customer=landline)
    assert {m.channel for m in result.messages if m.recipient == "customer"} == {Channel.EMAIL}
    assert {n.reason for n in result.not_planned} == {p.NUMBER_CANNOT_RECEIVE}
    assert all(n.channels == (Channel.SMS,) for n in result.not_planned)


def test_R5_a_landline_with_sms_only_leaves_the_kind_out():
    landline = Customer(id="c", tenant_id="t", name="E", phone="+493471234567", phone_type="fixed_line",
                        consents=frozenset({Channel.SMS}))
    result = plan(customer=landline)
    assert [m for m in result.messages if m.recipient == "customer"] == []
    assert reasons(result)[Kind.INFO] == p.NUMBER_CANNOT_RECEIVE


def test_R5_an_invalid_number():
    invalid = Customer(id="c", tenant_id="t", name="E", phone=None, phone_type="invalid",
                       consents=frozenset({Channel.SMS}))
    assert reasons(plan(customer=invalid))[Kind.INFO] == p.INVALID_NUMBER


def test_numbers_whose_plan_cannot_tell_mobile_from_fixed_line_take_sms():
    us = Customer(id="c", tenant_id="t", name="E", phone="+12125550100", phone_type="fixed_line_or_mobile",
                  consents=frozenset({Channel.SMS}))
    assert {m.channel for m in plan(customer=us).messages if m.kind is Kind.INFO} == {Channel.SMS}


def test_R4_privacy_not_accepted_leaves_the_reminder_out():
    online = Customer(id="c", tenant_id="t", name="E", email="e@example.org", consents=frozenset({Channel.EMAIL}),
                      created_via_online_booking=True, privacy_accepted=False)
    assert reasons(plan(customer=online)) == {Kind.REMINDER: p.PRIVACY_NOT_ACCEPTED}


def test_R25_no_feedback_after_a_no_show():
    result = plan(booking(visit_outcome="no_show"), now=VISIT + timedelta(hours=2))
    assert reasons(result) == {Kind.FEEDBACK: p.NO_SHOW}


def test_R24_a_kind_the_resource_switched_off_is_said_one_the_tenant_switched_off_is_not():
    s = conf({"reminder": {"enabled": True}}, {"reminder": {"enabled": False}})
    assert reasons(plan(s=s)) == {Kind.REMINDER: p.SWITCHED_OFF_FOR_RESOURCE}
    assert reasons(plan(s=conf({"reminder": {"enabled": False}}))) == {}


def test_a_booking_entered_after_its_visit_began():
    b = booking(starts=at(2026, 12, 3, 15), created=at(2026, 12, 3, 15, 20))
    result = plan(b)
    assert reasons(result)[Kind.INFO] == p.VISIT_STARTED


def test_the_channel_reason_comes_before_the_time_reason():
    b = booking(starts=at(2026, 12, 3, 15), created=at(2026, 12, 3, 14, 30))
    nobody = Customer(id="c", tenant_id="t", name="E", email="e@example.org")
    assert reasons(plan(b, customer=nobody))[Kind.CONFIRMATION] == p.NO_CONSENT


@settings(max_examples=60, deadline=None)
@given(minutes=st.integers(min_value=-2 * 24 * 60, max_value=3 * 24 * 60),
       consents=st.sets(st.sampled_from(sorted(ALL))), phone_type=st.sampled_from(["mobile", "fixed_line", None]),
       later_h=st.integers(min_value=0, max_value=80))
def test_the_reasons_do_not_change_as_time_passes_before_the_visit(minutes, consents, phone_type, later_h):
    """Replanning the same state later (a sweep) gives the same reasons, so nothing is written twice;
    and every reason is one of the documented ones."""
    created = VISIT - timedelta(minutes=minutes)
    customer = Customer(id="c", tenant_id="t", name="E", email="e@example.org", phone="+4915123456789",
                        phone_type=phone_type, consents=frozenset(consents))
    b = booking(created=created)
    first = plan(b, customer=customer, now=created)
    later = created + timedelta(hours=later_h)
    again = plan(b, customer=customer, now=later)
    assert all(n.reason in p.NOT_PLANNED_REASONS for n in first.not_planned)
    if later < VISIT:
        assert again.not_planned == first.not_planned
    planned = {m.kind for m in first.messages}
    assert all(n.kind not in planned or n.reason in p.PASSED_OVER for n in first.not_planned)


def test_the_morning_reminder_at_quiet_hours_end_is_no_problem():
    s = conf({"reminder": {"offset_s": -1, "morning_at": "07:00"}})
    assert s.reminder.morning_at == time(7, 0)
    assert Kind.REMINDER not in reasons(plan(s=s))


@settings(max_examples=200, deadline=None)
@given(tenant_channels=st.sets(st.sampled_from([Channel.SMS, Channel.WHATSAPP])),
       consents=st.sets(st.sampled_from(sorted(ALL))), email=st.sampled_from(["e@example.org", None]),
       phone=st.sampled_from([("+4915123456789", "mobile"), ("+493012345678", "fixed_line"), (None, "invalid"),
                              (None, None), ("+12125550100", "fixed_line_or_mobile"), ("+4915123456789", None)]),
       unavailable=st.sets(st.sampled_from(sorted(ALL))), without=st.sets(st.sampled_from(sorted(ALL))))
def test_the_channels_planning_uses_are_those_nothing_refuses(tenant_channels, consents, email, phone, unavailable,
                                                               without):
    """`reachable_channels` (the fast path) and `channel_refusal` (the reasons) agree (R2-R6)."""
    tenant = Tenant(id="t", name="T", channels=frozenset({Channel.EMAIL, *tenant_channels}))
    customer = Customer(id="c", tenant_id="t", name="E", email=email, phone=phone[0], phone_type=phone[1],
                        consents=frozenset(consents))
    s = conf(unavailable=frozenset(unavailable), without_provider=frozenset(without))
    refused = {c: p.channel_refusal(c, tenant, customer, s) for c in ALL}
    assert p.reachable_channels(tenant, customer, s) == {c for c, why in refused.items() if why is None}
    assert {why for why in refused.values() if why} <= set(p.NOT_PLANNED_REASONS)
