"""Use cases on the embedded store (SQLite) with a fake email channel: apply, sweep, dispatch."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from notifier.channels.base import PermanentFailure, TemporaryFailure
from notifier.dispatch import DispatchReport, dispatch_batch
from notifier.services import apply_events, normalize_phone, sweep_due, timeline_of
from notifier.store import schema as t
from tests.conftest import START, created, customer, event


def apply(ctx, *events):
    return apply_events(ctx.store, [json.dumps(e) for e in events], now=ctx.clock.now(), source="test")


def messages(ctx):
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(t.messages).order_by(t.messages.c.due_at)).all()


def run_due(ctx):
    total = vars(DispatchReport())
    for _channel, ids in sweep_due(ctx.store, now=ctx.clock.now(), lease_s=60, limit=1000, batch=50):
        for key, value in vars(dispatch_batch(ctx, ids)).items():
            total[key] += value
    return total


def kinds(ctx, booking="b1"):
    return [e["kind"] for e in timeline_of(ctx.store, "salon-berlin", booking)]


def test_R10_R15_a_new_booking_plans_info_now_and_the_morning_reminder(ctx):
    report = apply(ctx, created(starts_at=START + timedelta(days=2, hours=6)))
    assert report.applied == 1
    rows = messages(ctx)
    assert [(r.kind, r.channel, r.state) for r in rows] == [("info", "email", "planned"),
                                                            ("reminder", "email", "planned")]
    assert rows[0].due_at == START
    assert rows[1].due_at == START + timedelta(days=2, hours=1)  # 08:00 Berlin = 07:00 UTC on the visit day


def test_a_due_message_is_rendered_sent_and_on_the_timeline(ctx, email):
    apply(ctx, created(starts_at=START + timedelta(days=2, hours=6)))
    assert run_due(ctx)["sent"] == 1
    [mail] = email.sent
    assert mail.to == "kunde@example.org"
    assert "Donnerstag, 3. Dezember 2026" in mail.text and "13:00" in mail.text  # tenant's zone, German
    assert mail.html and "<p>" in mail.html
    assert "message.sent" in kinds(ctx)
    sent = [r for r in messages(ctx) if r.state == "sent"]
    assert sent[0].provider_message_id and sent[0].sent_at == START


def test_N2_the_same_event_twice_is_applied_once(ctx):
    e = created()
    apply(ctx, e)
    report = apply(ctx, e)
    assert report.duplicates == 1 and report.applied == 0
    assert len(messages(ctx)) == 2  # info and today's reminder, once each
    assert kinds(ctx).count("booking.created") == 1


def moved(days, revision):
    return event("booking.rescheduled", {"booking_id": "b1", "starts_at": (START + timedelta(days=days)).isoformat(),
                                         "ends_at": (START + timedelta(days=days, hours=1)).isoformat()},
                 revision=revision)


def booking_row(ctx):
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(t.bookings)).one()


def test_a_stale_revision_is_recorded_and_ignored(ctx):
    apply(ctx, created(), event("booking.cancelled", {"booking_id": "b1", "by": "staff"}, revision=2))
    report = apply(ctx, moved(3, revision=2))
    assert report.stale == 1
    assert booking_row(ctx).status == "cancelled" and booking_row(ctx).starts_at == START + timedelta(hours=6)


def test_an_event_ahead_of_its_predecessor_is_held_until_the_gap_closes(ctx):
    apply(ctx, created())
    assert apply(ctx, event("booking.cancelled", {"booking_id": "b1", "by": "staff"}, revision=3)).held == 1
    assert booking_row(ctx).status == "active"
    assert apply(ctx, moved(3, revision=2)).applied == 1  # rev 2 applied, then the held rev 3
    row = booking_row(ctx)
    assert (row.revision, row.status, row.starts_at) == (3, "cancelled", START + timedelta(days=3))


def test_a_held_event_shows_on_the_timeline_as_held_with_what_it_waits_for(ctx):
    """An event waiting for its predecessor showed nothing until `hold_s` passed."""
    apply(ctx, moved(3, revision=2))  # before the booking itself
    apply(ctx, created())
    apply(ctx, event("booking.cancelled", {"booking_id": "b1", "by": "staff"}, revision=4))
    held = [e["detail"] for e in timeline_of(ctx.store, "salon-berlin", "b1") if e["kind"] == "event.held"]
    assert [(d["type"], d["revision"], d["waiting_for"]) for d in held] == [
        ("booking.rescheduled", 2, "booking.created"), ("booking.cancelled", 4, "revision 3")]
    assert kinds(ctx).index("event.held") < kinds(ctx).index("booking.created") < kinds(ctx).index(
        "booking.rescheduled")


def test_an_event_before_its_booking_is_held_and_applied_when_the_booking_arrives(ctx):
    assert apply(ctx, moved(3, revision=2)).held == 1
    apply(ctx, created())
    assert booking_row(ctx).starts_at == START + timedelta(days=3)


def test_a_gap_that_never_closes_is_skipped_after_hold_s(ctx):
    from notifier.services import release_expired_holds

    apply(ctx, created(), event("booking.cancelled", {"booking_id": "b1", "by": "staff"}, revision=4))
    apply(ctx, event("booking.rescheduled", {"booking_id": "ghost", "starts_at": START.isoformat(),
                                             "ends_at": (START + timedelta(hours=1)).isoformat()}, revision=2))
    assert release_expired_holds(ctx.store, now=START + timedelta(seconds=100), hold_s=300).applied == 0
    report = release_expired_holds(ctx.store, now=START + timedelta(seconds=301), hold_s=300)
    assert report.applied == 1 and report.dead == 1 and "booking:ghost never arrived" in report.dead_reasons[0]
    assert booking_row(ctx).status == "cancelled"
    assert "event.gap_skipped" in kinds(ctx)


def test_N3_bad_events_go_to_the_dead_letter_store_and_the_rest_is_applied(ctx):
    bodies = [b"{oops", json.dumps(created("b1")), json.dumps(created("b2", tenant="nobody")),
              json.dumps(event("booking.cancelled", {"booking_id": "missing", "by": "staff"})),
              json.dumps(created("b3"))]
    report = apply_events(ctx.store, bodies, now=START, source="test")
    assert report.applied == 2 and report.dead == 2 and report.held == 1  # the unknown booking may still come
    with ctx.store.engine.connect() as conn:
        dead = conn.execute(select(t.dead_letters.c.reason, t.dead_letters.c.body)).all()
    reasons = " | ".join(d.reason for d in dead)
    assert "invalid event" in reasons and "unknown tenant 'nobody'" in reasons
    assert any(d.body == "{oops" for d in dead)  # the original body is kept for replay


def test_cancelling_withdraws_what_was_planned(ctx, email):
    apply(ctx, created(starts_at=START + timedelta(days=2, hours=6)))
    apply(ctx, event("booking.cancelled", {"booking_id": "b1", "by": "customer"}, revision=2))
    assert messages(ctx) == []  # never attempted, so nothing refers to them: deleted
    assert run_due(ctx)["sent"] == 0 and not email.sent
    assert kinds(ctx).count("message.withdrawn") == 2  # the timeline keeps what was withdrawn


def test_N2_a_redelivered_dispatch_sends_nothing_twice(ctx, email):
    apply(ctx, created("b1"), created("b2"), created("b3"))
    [(_, ids)] = sweep_due(ctx.store, now=START, lease_s=60, limit=100, batch=100)
    first = dispatch_batch(ctx, ids)
    second = dispatch_batch(ctx, ids)  # the broker delivered the task again
    assert first.sent == 3 and second.sent == 0 and second.skipped == 3
    assert len(email.sent) == 3


def test_N1_an_expired_claim_comes_back_to_the_sweep(ctx, email):
    apply(ctx, created())
    [(_, ids)] = sweep_due(ctx.store, now=START, lease_s=60, limit=100, batch=100)
    # the dispatch task was lost; before the lease ends nothing is claimed again
    assert sweep_due(ctx.store, now=START + timedelta(seconds=30), lease_s=60, limit=100, batch=100) == []
    [(_, again)] = sweep_due(ctx.store, now=START + timedelta(seconds=61), lease_s=60, limit=100, batch=100)
    assert again == ids


def test_N1_a_batch_the_broker_refused_goes_back_to_the_plan_at_once(ctx, email, monkeypatch):
    from kombu.exceptions import OperationalError

    import tasks.sweep

    def refused(*args, **kwargs):
        raise OperationalError("database is locked")

    apply(ctx, created("b1"), created("b2"))
    monkeypatch.setattr(tasks.sweep, "context", lambda: ctx)
    monkeypatch.setattr(tasks.sweep.dispatch_batch, "apply_async", refused)
    with pytest.raises(OperationalError):
        tasks.sweep.sweep_due_task()
    due = [r for r in messages(ctx) if r.due_at <= ctx.clock.now()]
    assert len(due) == 2 and {r.state for r in due} == {"planned"}  # not stuck `queued` for a lease
    monkeypatch.undo()
    assert run_due(ctx)["sent"] == 2


def test_N1_N2_an_attempt_that_ended_unrecorded_is_looked_up_at_the_provider_not_sent_again(ctx, email,
                                                                                          monkeypatch):
    import notifier.dispatch as dispatch

    apply(ctx, created("b1"), created("b2"))
    real_record = dispatch.record
    died = threading.Event()
    calls = []

    def first_only(message):  # the second send is under way when the worker dies, and never goes out
        calls.append(message)
        if len(calls) > 1:
            died.wait(10)
            raise TemporaryFailure("cut off", code="connection")

    def crash(store, outcomes, **kw):  # the worker dies after the provider accepted, before the commit
        if any(d.outcome == "sent" for d in outcomes):
            died.set()
            raise SystemExit("killed")
        return real_record(store, outcomes, **kw)

    email.behaviour = first_only
    monkeypatch.setattr(dispatch, "record", crash)
    with pytest.raises(SystemExit):
        run_due(ctx)
    assert len(email.sent) == 1 and {r.state for r in messages(ctx) if r.kind == "info"} == {"sending"}
    monkeypatch.setattr(dispatch, "record", real_record)
    email.behaviour = None
    ctx.clock.set(START + timedelta(seconds=ctx.settings.lease_s + 1))  # the dead worker's claims have lapsed
    assert run_due(ctx) == {**vars(DispatchReport()), "sent": 1, "reconciled": 1}
    # the two read the same: one takes the provider's copy, the other is sent; none twice, none lost
    assert len(email.sent) == 2
    sent = [e["detail"] for b in ("b1", "b2") for e in timeline_of(ctx.store, "salon-berlin", b)
            if e["kind"] == "message.sent"]
    assert sorted((d["provider_message_id"], d.get("reconciled", False)) for d in sent) == [
        ("fake-email-1", True), ("fake-email-2", False)]


def test_N2_a_send_whose_answer_was_lost_is_looked_up_before_it_is_tried_again(ctx, email):
    calls = []

    def answer_lost(message):  # the provider took it; its answer never came back
        calls.append(message)
        if len(calls) == 1:
            email.sent.append(message)
            raise TemporaryFailure("email: timeout after 10 s", code="timeout")

    email.behaviour = answer_lost
    apply(ctx, created())
    assert run_due(ctx)["retried"] == 1
    ctx.clock.set([r for r in messages(ctx) if r.kind == "info"][0].due_at)
    second = run_due(ctx)
    assert second["reconciled"] == 1, (second, calls)
    assert len(email.sent) == 1 and len(calls) == 1  # found, not sent again
    assert [r.state for r in messages(ctx) if r.kind == "info"] == ["sent"]


def test_N2_a_lookup_that_was_refused_is_made_again_before_the_next_send(ctx, email):
    """Chaos run, 2026-11-26 08:17: an SMS's answer was lost (timeout), the lookup before the
    retry was answered 429, and the attempt after that sent a second copy without asking."""
    calls = []

    def answer_lost(message):
        calls.append(message)
        if len(calls) == 1:
            email.sent.append(message)
            raise TemporaryFailure("email: timeout after 10 s", code="timeout")

    lookups = []
    find_sent = email.find_sent

    def throttled_once(message, *, since):
        lookups.append(message)
        if len(lookups) == 1:
            raise TemporaryFailure("429 Too Many Requests", code="429", retry_after_s=1)
        return find_sent(message, since=since)

    email.behaviour = answer_lost
    email.find_sent = throttled_once
    apply(ctx, created())
    info = lambda: [r for r in messages(ctx) if r.kind == "info"][0]  # noqa: E731
    assert run_due(ctx)["retried"] == 1
    ctx.clock.set(info().due_at)
    assert run_due(ctx)["retried"] == 1  # the lookup was refused: nothing sent
    ctx.clock.set(info().due_at)
    assert run_due(ctx)["reconciled"] == 1  # asked again, found, not sent again
    assert len(email.sent) == 1 and len(calls) == 1 and len(lookups) == 2
    assert info().state == "sent"


def test_N2_a_retried_message_renders_as_it_did_so_a_lost_answer_is_still_recognised(ctx, email):
    """The confirmation carries signed links; its retry (due later) must render the same text,
    or the provider's copy of the attempt whose answer was lost would not be recognised."""
    attempts = []

    def answer_lost_once(message):  # the confirmation's first attempt, whichever sender thread calls first
        attempts.append(message)
        if message.metadata["kind"] == "confirmation" and [m.metadata["kind"] for m in attempts].count(
                "confirmation") == 1:
            email.sent.append(message)
            raise TemporaryFailure("email: timeout after 10 s", code="timeout")

    apply(ctx, created(tenant="studio-roma", starts_at=START + timedelta(days=2, hours=6),
                       resource={"id": "giulia", "name": "Giulia Conti", "type": "specialist"},
                       cust=customer(language="it", consents={"email": True})))
    [due] = [r.due_at for r in messages(ctx) if r.kind == "confirmation"]
    ctx.clock.set(due)
    email.behaviour = answer_lost_once
    run_due(ctx)
    [first] = [m for m in email.sent if m.metadata["kind"] == "confirmation"]
    assert "/l/" in first.text  # it carries its links
    [row] = [r for r in messages(ctx) if r.kind == "confirmation"]
    assert row.state == "planned" and row.due_at > due
    ctx.clock.set(row.due_at)
    assert run_due(ctx)["reconciled"] == 1
    assert [m.text for m in email.sent if m.metadata["kind"] == "confirmation"] == [first.text]


def test_N1_N2_sends_made_while_the_database_is_away_are_recorded_when_it_is_back(ctx, email, monkeypatch):
    from sqlalchemy.exc import OperationalError

    import notifier.dispatch as dispatch

    apply(ctx, created("b1"), created("b2"))
    real_record, failures = dispatch.record, []

    def database_away(store, outcomes, **kw):
        if len(failures) < 2:
            failures.append(len(outcomes))
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
        return real_record(store, outcomes, **kw)

    monkeypatch.setattr(dispatch, "record", database_away)
    assert run_due(ctx)["sent"] == 2 and len(failures) == 2
    assert len(email.sent) == 2 and {r.state for r in messages(ctx) if r.kind == "info"} == {"sent"}


def test_N5_a_status_report_that_comes_before_the_send_is_recorded_is_applied_when_it_is(ctx, email,
                                                                                         monkeypatch):
    import notifier.dispatch as dispatch
    from notifier.services import apply_delivery_status

    apply(ctx, created())
    real_record, early = dispatch.record, []

    def provider_is_quicker(store, outcomes, **kw):  # its callback arrives before our commit
        for d in outcomes:
            if d.provider_message_id:
                early.append(apply_delivery_status(store, d.provider, d.provider_message_id, "delivered", now=d.at))
        return real_record(store, outcomes, **kw)

    monkeypatch.setattr(dispatch, "record", provider_is_quicker)
    assert run_due(ctx)["sent"] == 1
    assert early == ["pending"]
    assert [r.state for r in messages(ctx) if r.kind == "info"] == ["delivered"]
    assert [e["kind"] for e in timeline_of(ctx.store, "salon-berlin", "b1")][-2:] == ["message.sent",
                                                                                   "message.delivered"]
    with ctx.store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.pending_statuses)).scalar_one() == 0


def test_temporary_failure_is_retried_later_with_an_attempt_row(ctx, email):
    calls = []

    def flaky(message):
        calls.append(message)
        if len(calls) < 3:
            raise TemporaryFailure("503 from provider", code="503")

    email.behaviour = flaky
    apply(ctx, created(starts_at=START + timedelta(days=2, hours=6)))
    assert run_due(ctx)["retried"] == 1
    [row] = [r for r in messages(ctx) if r.kind == "info"]
    assert row.state == "planned" and row.due_at > START
    ctx.clock.set(row.due_at)
    assert run_due(ctx)["retried"] == 1
    ctx.clock.set([r for r in messages(ctx) if r.kind == "info"][0].due_at)
    assert run_due(ctx)["sent"] == 1
    with ctx.store.engine.connect() as conn:
        outcomes = conn.execute(select(t.send_attempts.c.outcome).order_by(t.send_attempts.c.id)).scalars().all()
    assert outcomes == ["temporary", "temporary", "sent"]
    assert len(email.sent) == 1


def test_N3_a_message_that_cannot_be_prepared_is_retried_and_the_rest_of_its_batch_goes_out(ctx, email,
                                                                                           monkeypatch):
    import notifier.dispatch as dispatch

    apply(ctx, created("b1"), created("b2"))
    original = dispatch.prepare

    def prepare(ctx_, loaded, message, now):  # b2's bundle would not load (its store was unreachable)
        if message.booking_id == "b2":
            raise RuntimeError("bundle store unreachable")
        return original(ctx_, loaded, message, now)

    monkeypatch.setattr(dispatch, "prepare", prepare)
    assert run_due(ctx) == {**vars(DispatchReport()), "sent": 1, "retried": 1}
    assert [o.metadata["booking_id"] for o in email.sent] == ["b1"]
    [retry] = [e for e in timeline_of(ctx.store, "salon-berlin", "b2") if e["kind"] == "message.retry"]
    assert retry["detail"]["reason"] == "could not prepare: RuntimeError: bundle store unreachable"
    [row] = [r for r in messages(ctx) if r.booking_id == "b2" and r.kind == "info"]
    assert row.state == "planned" and row.due_at > START  # back in the plan, after a backoff


def test_N1_N2_an_adapter_that_breaks_unexpectedly_costs_one_message_a_lookup_not_the_batch(ctx, email):
    def broken_after_sending(message):  # a bug in an adapter, after the provider took b2's message
        if message.metadata["booking_id"] == "b2" and message.metadata["kind"] == "info":
            email.sent.append(message)
            raise KeyError("status")

    email.behaviour = broken_after_sending
    apply(ctx, created("b1"), created("b2"))
    first = run_due(ctx)
    assert first["retried"] == 1 and first["sent"] == 1, first  # b1's went out and was recorded
    [row] = [r for r in messages(ctx) if r.booking_id == "b2" and r.kind == "info"]
    assert row.state == "planned"
    [retry] = [e for e in timeline_of(ctx.store, "salon-berlin", "b2") if e["kind"] == "message.retry"]
    assert retry["detail"]["reason"] == "unexpected KeyError: 'status'"
    email.behaviour = None
    ctx.clock.set(row.due_at)
    assert run_due(ctx)["reconciled"] == 1  # in doubt: found at the provider, not sent twice
    assert sum(o.metadata["booking_id"] == "b2" and o.metadata["kind"] == "info" for o in email.sent) == 1


def test_permanent_failure_fails_once_with_the_reason_on_the_timeline(ctx, email):
    def refuse(message):
        raise PermanentFailure("recipient refused: 550 no such user", code="550")

    email.behaviour = refuse
    apply(ctx, created())
    assert run_due(ctx)["failed"] == 1
    [entry] = [e for e in timeline_of(ctx.store, "salon-berlin", "b1") if e["kind"] == "message.failed"]
    assert "550 no such user" in entry["detail"]["reason"]
    assert run_due(ctx)["failed"] == 0  # never retried


def test_R3_consent_withdrawn_after_planning_is_honoured_at_send_time(ctx, email):
    apply(ctx, created())
    [(_, ids)] = sweep_due(ctx.store, now=START, lease_s=60, limit=100, batch=100)
    # consent is withdrawn between the sweep and the send: the replan withdraws the queued message
    apply(ctx, event("customer.updated", {"customer": customer(consents={"email": False})}, revision=2))
    assert dispatch_batch(ctx, ids).sent == 0
    assert not email.sent


def test_R5_phone_numbers_of_the_home_country_need_no_prefix():
    assert normalize_phone("0151 23456789", "DE") == ("+4915123456789", None)
    assert normalize_phone("+39 06 6982 1234", "DE")[0] == "+390669821234"
    assert normalize_phone("0039 06 6982 1234", "DE")[0] == "+390669821234"  # the 00 prefix from Germany
    assert normalize_phone("06 6982 1234", "IT")[0] == "+390669821234"  # home country of an Italian tenant
    number, error = normalize_phone("12", "DE")
    assert number is None and error


def test_R5_an_invalid_number_is_recorded_on_the_timeline(ctx):
    apply(ctx, created(cust=customer(phone="0000", consents={"email": True, "sms": True})))
    [entry] = [e for e in timeline_of(ctx.store, "salon-berlin", "b1") if e["kind"] == "customer.phone_invalid"]
    assert "not a valid number" in entry["detail"]["reason"]
    with ctx.store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.customers).where(t.customers.c.phone.is_(None))) \
            .scalar_one() == 1


def test_N3_a_dead_letter_can_be_replayed_once_its_cause_is_fixed(ctx):
    from notifier.domain.model import Tenant
    from notifier.services import replay_dead_letter

    apply(ctx, created("b9", tenant="late-tenant"))
    with ctx.store.engine.connect() as conn:
        [dead_id] = conn.execute(select(t.dead_letters.c.id)).scalars().all()
    assert replay_dead_letter(ctx.store, dead_id, now=START).dead == 1  # still unknown: stays dead
    with ctx.store.transaction() as tx:
        tx.save_tenant(Tenant(id="late-tenant", name="Late"), START)
    assert replay_dead_letter(ctx.store, dead_id, now=START).applied == 1
    with ctx.store.engine.connect() as conn:
        assert conn.execute(select(t.dead_letters.c.replayed_at).where(t.dead_letters.c.id == dead_id)) \
            .scalar_one() == START


def test_R15_R22_the_booking_made_without_card_and_reminders_gets_neither(ctx, email):
    """The salon seed's booking form asks, per booking, whether to send the appointment card and
    whether reminders are on; the contract had no field for either."""
    body = created(starts_at=START + timedelta(days=2, hours=6))
    body["data"].update(send_card=False, reminders=False)
    apply(ctx, body, created("b2", starts_at=START + timedelta(days=2, hours=6)))
    assert sorted((r.booking_id, r.kind) for r in messages(ctx)) == [
        ("b1", "info"), ("b2", "info"), ("b2", "reminder")]
    assert run_due(ctx)["sent"] == 2
    cards = {mail.metadata["booking_id"]: [a.filename for a in mail.attachments] for mail in email.sent}
    assert cards == {"b1": [], "b2": ["termin.ics"]}
    with ctx.store.transaction() as tx:
        [left_out] = tx.booking("salon-berlin", "b1").not_planned
    assert (left_out.kind, left_out.reason) == ("reminder", "switched_off_for_booking")


def test_R27_a_channel_without_a_provider_is_not_chosen_and_the_tenants_that_switched_it_on_are_named(
        ctx, email, caplog):
    """No Twilio settings: SMS was still chosen for a customer who consented to SMS and email, and
    every message failed for good ("no adapter for sms"), without a word at start."""
    roma = customer(phone="+39 347 1234567", consents={"sms": True, "email": True})
    body = created(starts_at=START + timedelta(days=2), cust=roma, tenant="studio-roma")
    report = apply_events(ctx.store, [json.dumps(body)], now=START, source="test", regions=ctx.unavailable)
    assert report.applied == 1
    assert {r.channel for r in messages(ctx) if r.recipient == "customer"} == {"email"}
    with ctx.store.transaction() as tx:
        left_out = tx.booking("studio-roma", "b1").not_planned
    assert {(n.reason, n.channels) for n in left_out} == {("no_provider", ("sms",))}  # said for each kind
    assert {"info", "confirmation"} <= {n.kind for n in left_out}
    ctx.clock.set(START + timedelta(hours=1))  # 08:00 in Rome, the end of the quiet hours
    done = run_due(ctx)
    assert done["sent"] == 1 and email.sent[0].to == "kunde@example.org", (done, messages(ctx))
    caplog.set_level("WARNING", logger="notifier")
    ctx.warn_of_missing_providers()
    warned = [r.getMessage() for r in caplog.records if "no provider" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("sms has no provider configured")
    assert warned[0].endswith("switched it on: clinic-full, studio-roma")


def test_R1_R23_R33_staff_email_goes_to_the_resource_branch_or_company_never_to_the_customer(ctx, email, tmp_path):
    """Staff got webhooks only; `staff.channels: [email]` addressed the staff notice to the customer's
    email (dispatch._address). Now: the booked resource's address, else the tenant's (a branch), else
    the company's, for the new online request and the confirmation notice."""
    from notifier.services import load_tenants

    folder = tmp_path / "tenants"
    folder.mkdir()
    (folder / "t.yaml").write_text(
        "id: salon-mitte\nname: Salon Mitte\nlanguage: de\ncompany: {name: Salon Mitte, email: info@salon.example}\n"
        "settings: {staff: {channels: [email]}}\n"
        "resources:\n  - {id: anna, name: Anna Weber, settings: {staff: {email: anna@salon.example}}}\n"
        "  - {id: jonas, name: Jonas Brandt}\n")
    load_tenants(ctx.store, folder, now=START)
    visit = START + timedelta(days=2)

    def request(booking_id, resource):
        return event("booking.created", {
            "booking_id": booking_id, "customer": customer(), "resource": {"id": resource, "name": resource},
            "starts_at": visit.isoformat(), "ends_at": (visit + timedelta(hours=1)).isoformat(), "source": "online",
            "needs_approval": True, "service": "Färben"}, tenant="salon-mitte")

    apply(ctx, request("b1", "anna"), request("b2", "jonas"))
    run_due(ctx)
    accepted = event("booking.status_changed", {"booking_id": "b1", "status": {
        "id": "ok", "name": "Angenommen", "kind": "confirmation"}}, tenant="salon-mitte", revision=2)
    apply(ctx, accepted)
    run_due(ctx)
    staff = sorted((m.metadata["booking_id"], m.metadata["kind"], m.to) for m in email.sent
                   if m.metadata["kind"].startswith("staff_"))
    assert staff == [("b1", "staff_confirmed", "anna@salon.example"), ("b1", "staff_new_request", "anna@salon.example"),
                     ("b2", "staff_new_request", "info@salon.example")]
    [notice] = [m for m in email.sent if m.metadata["kind"] == "staff_new_request" and m.to == "info@salon.example"]
    assert notice.subject.startswith("Neue Terminanfrage: Erika Mustermann") and "Leistung: Färben." in notice.text
    assert "kunde@example.org" not in {m.to for m in email.sent if m.metadata["kind"].startswith("staff_")}
    (folder / "t.yaml").write_text(  # no address anywhere: no staff email at all, never the customer's
        "id: salon-mitte\nname: Salon Mitte\nlanguage: de\ncompany: {name: Salon Mitte}\n"
        "settings: {staff: {channels: [email]}}\nresources: []\n")
    load_tenants(ctx.store, folder, now=START)
    apply(ctx, request("b3", "jonas"))
    assert not [r for r in messages(ctx) if r.booking_id == "b3" and r.recipient == "staff"]
