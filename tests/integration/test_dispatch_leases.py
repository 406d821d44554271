"""Issue 17 (N1, N2): claims held by a live worker do not lapse, and a worker that lost its
claim does not send. Real Celery workers, beat, PostgreSQL and Redis; the simulated clock runs
in real time (`RunningClock`), so leases run out as they would in production, only shorter.

- A worker paused (SIGSTOP) after claiming its batch and before most of its provider calls,
  for longer than the lease: the sweep hands the batch to another worker, and the paused one,
  resumed, finds its claims gone and sends nothing more. Every message reaches the provider
  exactly once (the one whose call was under way when it stopped is found at Twilio by the
  new holder, not sent again).
- A worker that is only slow keeps its claims: its SMS take longer than the lease in all, and
  its SMTP server answers each email only after more than a lease (the issue's case: the mail
  taken, the claim lapsed, the copy sent again). Another worker stands by the whole time and
  takes nothing, and each message goes out once under its first claim.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import timedelta

from sqlalchemy import func, select

from notifier.devtools import RunningClock, wait_for
from notifier.fake_providers import FakeProviders
from notifier.services import apply_events
from notifier.store import schema as t
from tests.conftest import START, created, customer, make_context, settings_env
from tests.integration.test_dispatch_kill import children, pipeline_settings

ROMA = {"tenant": "studio-roma", "resource": {"id": "giulia", "name": "Giulia", "type": "specialist"}}


def _bookings(ctx, *, sms: int = 0, email: int = 0):
    """Bookings whose info message goes out by SMS (phone only) or by email (address only);
    the moment the last of them falls due (07:00 in Rome is quiet hours: they wait for 08:00)."""
    events = [created(f"s{i}", starts_at=START + timedelta(days=3, hours=6), **ROMA,
                      cust=customer(f"cs{i}", language="it", email=None, phone=f"+39333{i:07d}",
                                    consents={"email": False, "sms": True}))
              for i in range(sms)]
    events += [created(f"e{i}", starts_at=START + timedelta(days=3, hours=6), **ROMA,
                       cust=customer(f"ce{i}", language="it", email=f"k{i}@example.org", phone=None,
                                     consents={"email": True, "sms": False}))
               for i in range(email)]
    assert apply_events(ctx.store, [json.dumps(e) for e in events], now=START, source="test").applied == len(events)
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(func.max(t.messages.c.due_at)).where(t.messages.c.kind == "info")).scalar_one()


def _info(ctx) -> list:
    c = t.messages.c
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(c.id, c.channel, c.state, c.claim_token).where(c.kind == "info")).all()


def test_N1_N2_a_worker_paused_past_its_lease_finds_its_claims_gone_and_does_not_send(
        tmp_path, pg_url, redis_url, key_prefix, clock, procs):
    messages, lease_s = 12, 6
    with FakeProviders(latency_s=0.8, clock=clock.now) as provider:
        settings = pipeline_settings(tmp_path, pg_url, redis_url, key_prefix, provider, lease_s=lease_s,
                                     dispatch_batch=messages, dispatch_concurrency=1)
        ctx = make_context(settings)
        due = _bookings(ctx, sms=messages)
        group = procs(settings_env(settings))
        with RunningClock(clock, due):
            group.start("sweeper", "worker", "-Q", "sweep", "-c", "1", "-n", "sweeper@%h")
            group.start("paused", "worker", "-Q", "sms", "-c", "1", "-n", "paused@%h")
            group.start("beat", "beat")
            # one batch of 12, one call at a time, 0.8 s each: paused between two recorded sends (a
            # worker paused inside its commit would hold those rows until it resumes), the rest claimed
            wait_for(lambda: sum(r.state == "sent" for r in _info(ctx)) >= 2, "the batch to be under way", group,
                     timeout_s=90)
            [child] = children(group.procs["paused"].pid)
            os.kill(child, signal.SIGSTOP)
            paused_at = time.monotonic()
            try:
                assert len(provider.received) < messages - 4
                group.start("other", "worker", "-Q", "sms", "-c", "1", "-n", "other@%h")
                wait_for(lambda: {r.state for r in _info(ctx)} == {"sent"},
                         "the other worker to send the batch once its lease ran out", group, timeout_s=120)
                assert time.monotonic() - paused_at > lease_s  # it waited for the lease, not less
            finally:
                os.kill(child, signal.SIGCONT)
            log = tmp_path / "paused.log"
            wait_for(lambda: "succeeded" in log.read_text(errors="replace"), "the resumed worker to end its task",
                     group, timeout_s=60)

        received = sorted(m["to"] for m in provider.received)
        assert received == sorted(f"+39333{i:07d}" for i in range(messages)), "sent twice or lost"
        assert "'lost': " in log.read_text(errors="replace")  # the resumed worker found its claims gone
        tokens = sorted(r.claim_token for r in _info(ctx))  # 1: sent before the pause; 2: taken over once
        assert set(tokens) == {1, 2} and tokens.count(2) > messages - 4
        ctx.close()


def test_N2_a_slow_worker_keeps_its_claims_and_sends_each_message_once_over_sms_and_smtp(
        tmp_path, pg_url, redis_url, key_prefix, clock, procs, mail_sink):
    # one call at a time: 8 SMS of 0.8 s each, longer than the lease in all; 3 emails whose server
    # answers each one only after more than a lease (no provider call meanwhile renews anything)
    sms, emails, lease_s = 8, 3, 5
    mail_sink.answer_after_s = lease_s + 1.5
    with FakeProviders(latency_s=0.8, clock=clock.now) as provider:
        settings = pipeline_settings(tmp_path, pg_url, redis_url, key_prefix, provider, smtp_port=mail_sink.port,
                                     lease_s=lease_s, dispatch_batch=sms, dispatch_concurrency=1)
        ctx = make_context(settings)
        due = _bookings(ctx, sms=sms, email=emails)
        group = procs(settings_env(settings))
        with RunningClock(clock, due):
            group.start("sweeper", "worker", "-Q", "sweep", "-c", "1", "-n", "sweeper@%h")
            # a worker for each channel's batch, and a third standing by to take whatever lapses
            for name in ("worker-1", "worker-2", "worker-3"):
                group.start(name, "worker", "-Q", "sms,email", "-c", "1", "-n", f"{name}@%h")
            group.start("beat", "beat")
            started = time.monotonic()
            wait_for(lambda: {r.state for r in _info(ctx)} == {"sent"}, "every info message sent", group,
                     timeout_s=120)
            assert time.monotonic() - started > lease_s  # the sends did outlast the lease

        assert sorted(m["to"] for m in provider.received) == sorted(f"+39333{i:07d}" for i in range(sms))
        assert sorted(m["To"] for m in mail_sink.messages) == sorted(f"k{i}@example.org" for i in range(emails))
        assert {r.claim_token for r in _info(ctx)} == {1}  # every claim held from first to last: none lapsed
        ctx.close()
