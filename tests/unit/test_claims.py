"""Issue 17 (N1, N2) on the embedded store: claims, their fencing tokens and leases, and the
status reports that name their message.

- A claim that lapsed and was taken by another worker is gone for its old holder: it can
  neither renew it, nor send under it, nor record over the new holder's outcome.
- A live holder renews its claims, so the due sweep never hands them out again.
- A provider that took a message whose answer was lost reports on it, naming the message: the
  next attempt waits for that report, finds the copy by it and records it, not sending again.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from notifier.bootstrap import Context
from notifier.channels.base import Outgoing, SendResult, TemporaryFailure
from notifier.dispatch import Done, dispatch_batch, record
from notifier.domain.model import Channel, MessageState
from notifier.leases import Leases
from notifier.services import apply_delivery_status, apply_events, sweep_due
from notifier.store import schema as t
from tests.conftest import START, created, make_context, make_settings


def _info(ctx: Context):
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(t.messages).where(t.messages.c.kind == "info")).one()


def _claim(ctx: Context, now):
    """The due sweep hands the info message out; a worker claims it for sending."""
    [(_, ids)] = sweep_due(ctx.store, now=now, lease_s=ctx.settings.lease_s, limit=10, batch=10)
    [row] = ctx.store.claim_batch_for_send(ids, now, lease_s=ctx.settings.lease_s)
    return row


def test_N1_N2_a_claim_taken_over_cannot_be_renewed_used_or_recorded_by_its_old_holder(ctx, clock):
    apply_events(ctx.store, [json.dumps(created())], now=START, source="test")
    old = _claim(ctx, START)
    leases = Leases(ctx.store, clock, ctx.settings.lease_s)
    leases.hold([old], START + timedelta(seconds=ctx.settings.lease_s))
    assert leases.usable(old)  # well within its lease: no question asked

    # the old holder is paused past its lease; the sweep hands the message out, another worker claims it
    clock.set(START + timedelta(seconds=ctx.settings.lease_s + 1))
    new = _claim(ctx, clock.now())
    assert (old.claim_token, new.claim_token) == (1, 2)

    assert not leases.usable(old)  # resumed: its lease ran out, and the database says the claim is gone
    assert not leases.holds(old) and leases.lost == 1
    assert ctx.store.renew_claims([(old.id, old.claim_token)], clock.now() + timedelta(minutes=2)) == (set(), set())
    late = Done(old, MessageState.SENT, clock.now(), outcome="sent", provider_message_id="late-copy", provider="fake")
    assert record(ctx.store, [late]) == set()  # fenced: changes nothing
    assert _info(ctx).state == "sending" and _info(ctx).provider_message_id is None
    holder = Leases(ctx.store, clock, ctx.settings.lease_s)
    holder.hold([new], clock.now() + timedelta(seconds=ctx.settings.lease_s))
    mine = Done(new, MessageState.SENT, clock.now(), outcome="sent", provider_message_id="the-copy", provider="fake")
    assert record(ctx.store, [mine]) == {new.id}
    holder.renew()  # a heartbeat between the commit and the release: the claim is done, not lost
    assert not holder.holds(new) and holder.lost == 0
    holder.close()
    assert (_info(ctx).state, _info(ctx).provider_message_id) == ("sent", "the-copy")
    with ctx.store.engine.connect() as conn:
        assert conn.execute(select(t.send_attempts.c.message_id)).scalars().all() == [new.id]  # one attempt row
    leases.close()


def test_N1_a_live_holder_renews_its_claims_so_the_sweep_never_takes_them_back(ctx, clock):
    apply_events(ctx.store, [json.dumps(created())], now=START, source="test")
    row = _claim(ctx, START)
    leases = Leases(ctx.store, clock, ctx.settings.lease_s)
    leases.hold([row], START + timedelta(seconds=ctx.settings.lease_s))
    for minutes in range(1, 6):  # five leases long, renewed every half lease
        clock.set(START + timedelta(seconds=ctx.settings.lease_s * minutes / 2))
        leases.renew()
        assert sweep_due(ctx.store, now=clock.now(), lease_s=ctx.settings.lease_s, limit=10, batch=10) == []
    assert leases.usable(row) and _info(ctx).claim_token == 1
    leases.close()


class ReportingProvider:
    """A provider that cannot be asked, but whose status reports name the message (as Twilio's
    StatusCallback URL and Meta's biz_opaque_callback_data do). Its first answer is lost."""

    name, provider, reports_back = "email", "meta", True

    def __init__(self) -> None:
        self.accepted: list[Outgoing] = []

    def send(self, message: Outgoing) -> SendResult:
        self.accepted.append(message)
        if len(self.accepted) == 1:
            raise TemporaryFailure("meta: timeout after 10 s", code="timeout")  # it took it; the answer is lost
        return SendResult(provider_message_id=f"wamid.{len(self.accepted)}")

    def close(self) -> None:
        pass


def _reporting_context(tmp_path):
    provider = ReportingProvider()
    ctx = make_context(make_settings(tmp_path), channels={Channel.EMAIL: provider})
    apply_events(ctx.store, [json.dumps(created())], now=START, source="test")
    return ctx, provider


def _due_now(ctx):
    [(_, ids)] = sweep_due(ctx.store, now=ctx.clock.now(), lease_s=60, limit=10, batch=10)
    return dispatch_batch(ctx, ids)


def test_N2_a_copy_whose_answer_was_lost_is_found_by_its_reports_and_not_sent_again(tmp_path, clock):
    ctx, provider = _reporting_context(tmp_path)
    assert _due_now(ctx).retried == 1
    retry_at = _info(ctx).due_at
    assert retry_at >= START + timedelta(seconds=ctx.settings.report_wait_s)  # time for the provider to report

    # the provider's report of the copy it took, naming the message; no message has its id yet
    assert apply_delivery_status(ctx.store, "meta", "wamid.1", "delivered", now=START + timedelta(seconds=5),
                                 message_id=_info(ctx).id) == "pending"
    clock.set(retry_at)
    assert _due_now(ctx).reconciled == 1
    assert len(provider.accepted) == 1  # found by its report, not sent again
    info = _info(ctx)
    assert (info.state, info.provider_message_id, info.provider) == ("delivered", "wamid.1", "meta")
    ctx.close()


def test_N1_without_a_report_the_message_is_sent_again_after_the_wait(tmp_path, clock):
    """At least once: a report naming another provider's message, or none at all, finds nothing."""
    ctx, provider = _reporting_context(tmp_path)
    assert _due_now(ctx).retried == 1
    apply_delivery_status(ctx.store, "twilio", "SM1", "delivered", now=START, message_id=_info(ctx).id)
    clock.set(_info(ctx).due_at)
    assert _due_now(ctx).sent == 1 and len(provider.accepted) == 2
    assert (_info(ctx).state, _info(ctx).provider_message_id) == ("sent", "wamid.2")
    ctx.close()


def test_N1_an_outcome_is_recorded_while_the_rest_of_its_batch_is_still_being_rendered(ctx, monkeypatch):
    """Chaos, 2026-12-05 23:32 (load 15 on 2 cores): a batch's outcomes waited for the last of its
    messages to be rendered, seconds on a starved machine, and a worker killed meanwhile took
    known outcomes with it. Each is committed as soon as it is known."""
    import notifier.dispatch as dispatch

    apply_events(ctx.store, [json.dumps(created(f"b{i}")) for i in range(3)], now=START, source="test")
    real_prepare, rendered, waited_in_vain = dispatch.prepare, [], []

    def first_recorded() -> bool:
        with ctx.store.engine.connect() as conn:
            return conn.execute(select(t.messages.c.state).where(t.messages.c.id == rendered[0])).scalar() == "sent"

    def slow_prepare(context, loaded, message, now):  # the next message renders once the first is recorded
        if rendered:
            deadline = time.monotonic() + 10
            while not first_recorded():
                if time.monotonic() > deadline:
                    waited_in_vain.append(message.id)
                    break
                time.sleep(0.02)  # polling the database for the condition, with a deadline
        rendered.append(message.id)
        return real_prepare(context, loaded, message, now)

    monkeypatch.setattr(dispatch, "prepare", slow_prepare)
    [(_, ids)] = sweep_due(ctx.store, now=START, lease_s=60, limit=10, batch=10)
    assert dispatch_batch(ctx, ids).sent == 3 and waited_in_vain == []


class AcceptingProvider(ReportingProvider):
    def send(self, message: Outgoing) -> SendResult:
        self.accepted.append(message)
        return SendResult(provider_message_id=f"wamid.{len(self.accepted)}")


def _two_emails_claimed_by_a_worker_that_stops(tmp_path, provider):
    """Two bookings' info emails handed out and claimed for sending, at START, by a worker that
    then stops (dies or stalls) before it records anything: the context and the two claims."""
    ctx = make_context(make_settings(tmp_path), channels={Channel.EMAIL: provider})
    apply_events(ctx.store, [json.dumps(created(f"b{i}")) for i in range(2)], now=START, source="test")
    [(_, ids)] = sweep_due(ctx.store, now=START, lease_s=ctx.settings.lease_s, limit=10, batch=10)
    return ctx, ctx.store.claim_batch_for_send(ids, START, lease_s=ctx.settings.lease_s)


def test_N2_a_dead_workers_message_waits_for_the_providers_reports_once_before_it_is_sent_again(tmp_path, clock):
    """A worker died (or stalled past its lease) after its provider call and before its commit;
    the provider cannot be asked, but reports on what it took, later. The message's next claim
    waits for those reports once: one that comes is the copy, recorded; none, and it is sent."""
    provider = AcceptingProvider()
    ctx, (reported, silent) = _two_emails_claimed_by_a_worker_that_stops(tmp_path, provider)  # it died

    clock.set(START + timedelta(seconds=ctx.settings.lease_s + 1))  # its claims lapse
    report = _due_now(ctx)
    assert (report.retried, provider.accepted) == (2, [])  # nothing sent: waiting for the reports
    apply_delivery_status(ctx.store, "meta", "wamid.dead", "sent", now=clock.now(), message_id=reported.id)

    clock.set(clock.now() + timedelta(seconds=ctx.settings.report_wait_s))
    report = _due_now(ctx)
    assert (report.reconciled, report.sent) == (1, 1)  # the reported copy recorded; the other sent once
    assert [m.message_id for m in provider.accepted] == [silent.id]
    with ctx.store.engine.connect() as conn:
        rows = dict(conn.execute(select(t.messages.c.id, t.messages.c.provider_message_id)
                                 .where(t.messages.c.id.in_([reported.id, silent.id]))).all())
    assert rows == {reported.id: "wamid.dead", silent.id: "wamid.1"}
    ctx.close()


class UnaskableProvider:
    """An SMTP server as dispatch sees it: it takes a message and answers, and can be neither
    asked whether it has one nor heard from about it later."""

    provider = "smtp"

    def __init__(self) -> None:
        self.accepted: list[Outgoing] = []

    def send(self, message: Outgoing) -> SendResult:
        self.accepted.append(message)
        return SendResult(provider_message_id=f"<m{message.message_id}@example.org>", provider_code="250")

    def close(self) -> None:
        pass


def dispatch_killed_after_the_receipt(ctx, monkeypatch) -> None:
    """The due message dispatched by a worker that dies after the provider's answer was written
    down (its receipt) and before the outcome's record was committed."""
    import notifier.dispatch as dispatch

    def killed(store, outcomes, **kw):
        deadline = time.monotonic() + 10
        with ctx.store.engine.connect() as conn:
            while not conn.execute(select(t.receipts.c.id)).first() and time.monotonic() < deadline:
                conn.rollback()
                time.sleep(0.02)  # polling the database for the condition, with a deadline
        raise SystemExit("killed")

    monkeypatch.setattr(dispatch, "record", killed)
    [(_, ids)] = sweep_due(ctx.store, now=ctx.clock.now(), lease_s=ctx.settings.lease_s, limit=10, batch=10)
    with pytest.raises(SystemExit):
        dispatch_batch(ctx, ids)
    monkeypatch.undo()


def test_N1_N2_a_copy_taken_just_before_its_worker_died_is_found_by_its_receipt_not_sent_again(
        tmp_path, clock, monkeypatch):
    """Chaos from a fresh clone, 2026-12-06 01:23 UTC (load 20 to 30): a worker killed 0.2 to
    1.9 s after the SMTP server took 30 emails, before their record was committed; each went out
    again. The answer is written down the instant it comes (one INSERT of a thread of its own),
    and the message's next claim finds the copy by it."""
    smtp = UnaskableProvider()
    ctx = make_context(make_settings(tmp_path), channels={Channel.EMAIL: smtp})
    apply_events(ctx.store, [json.dumps(created())], now=START, source="test")
    dispatch_killed_after_the_receipt(ctx, monkeypatch)
    assert len(smtp.accepted) == 1 and _info(ctx).state == "sending"

    clock.set(START + timedelta(seconds=ctx.settings.lease_s + 1))  # its claim lapses; the sweep hands it out
    assert _due_now(ctx).reconciled == 1
    assert len(smtp.accepted) == 1  # found by its receipt, not sent again
    info = _info(ctx)
    assert (info.state, info.provider_message_id, info.provider) == ("sent", f"<m{info.id}@example.org>", "smtp")
    ctx.close()


def test_N2_a_stalled_workers_email_waits_once_for_its_receipt_before_it_is_sent_again(tmp_path, clock):
    """Stalled past its lease (a paused VM, SIGSTOP) with the SMTP server's answers waiting in its
    sockets: its claims are handed out again, and it writes the answers down only when it runs
    again. The next claim waits `report_wait_s` once for such a receipt before it sends a copy
    the provider cannot be asked about: one whose receipt came is recorded, the other sent once."""
    smtp = UnaskableProvider()
    ctx, (taken, silent) = _two_emails_claimed_by_a_worker_that_stops(tmp_path, smtp)  # it stalled

    clock.set(START + timedelta(seconds=ctx.settings.lease_s + 1))  # its claims lapse
    assert (_due_now(ctx).retried, smtp.accepted) == (2, [])  # nothing sent: waiting once
    # the stalled worker runs again: the server had taken one of its emails
    ctx.receipts().keep(taken.id, taken.claim_token, "smtp", None,
                        SendResult(provider_message_id=f"<m{taken.id}@example.org>", provider_code="250"), clock.now())
    deadline = time.monotonic() + 10
    while ctx.receipts().written < 1 and time.monotonic() < deadline:
        time.sleep(0.02)  # polling for the condition, with a deadline

    clock.set(clock.now() + timedelta(seconds=ctx.settings.report_wait_s))
    report = _due_now(ctx)
    assert (report.reconciled, report.sent) == (1, 1)
    assert [m.message_id for m in smtp.accepted] == [silent.id]  # the other sent once, after the wait
    ctx.close()


def test_N2_a_dead_workers_email_to_a_relay_that_drops_repeats_is_sent_again_at_once(tmp_path, clock):
    """The relay drops a repeated message by its idempotency key (`smtp_idempotency_header`): a
    copy sent again reaches the relay only, so a message whose worker died or stalled unrecorded
    does not wait `report_wait_s` for a receipt that may never come; it is sent again at once."""
    smtp = UnaskableProvider()
    smtp.dedupes = True
    ctx, claimed = _two_emails_claimed_by_a_worker_that_stops(tmp_path, smtp)

    clock.set(START + timedelta(seconds=ctx.settings.lease_s + 1))  # its claims lapse
    report = _due_now(ctx)
    assert (report.sent, report.retried) == (2, 0)
    assert sorted(m.message_id for m in smtp.accepted) == sorted(m.id for m in claimed)
    ctx.close()
