"""Issue 6, acceptance 3 (N1, N2, P3): a worker killed with SIGKILL in the middle of a batch
neither loses nor duplicates a message once the batch is retried, counted on the loopback
provider's own log of what it received.

The batch's messages are claimed (`sending`) when the worker dies; some were accepted by the
provider and never recorded, some were never sent. Celery redelivers the task (acks late,
reject on worker lost), which finds nothing left to claim; when the claims' lease runs out
the due sweep hands the messages out again, and dispatch asks the provider (Twilio's
Messages list) about each one whose attempt ended unrecorded before sending it."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

from notifier.devtools import wait_for
from notifier.fake_providers import FakeProviders
from notifier.services import apply_events
from notifier.store import schema as t
from tests.conftest import START, created, customer, make_context, make_settings, settings_env

MESSAGES = 60
LEASE_S = 20


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (the prefork pool of a Celery worker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def pipeline_settings(tmp_path, pg_url: str, redis_url: str, key_prefix: str, provider: FakeProviders,
                      **overrides):
    """Settings for a pipeline of real processes on this test's database, Redis prefix and
    loopback Twilio, sweeping every 0.3 s."""
    return make_settings(tmp_path, database_url=pg_url, broker_url=redis_url, broker_key_prefix=key_prefix,
                         twilio_account_sid=provider.account_sid, twilio_auth_token=provider.auth_token,
                         twilio_from="+390612345678", twilio_api_url=provider.url, sweep_interval_s=0.3,
                         **overrides)


def test_N1_N2_sigkill_mid_batch_loses_nothing_and_sends_nothing_twice(tmp_path, pg_url, redis_url, key_prefix,
                                                                       clock, procs):
    with FakeProviders(latency_s=0.25, clock=clock.now) as provider:
        settings = pipeline_settings(tmp_path, pg_url, redis_url, key_prefix, provider, lease_s=LEASE_S,
                                     dispatch_batch=MESSAGES, dispatch_concurrency=8)
        ctx = make_context(settings)
        events = [created(f"k{i}", tenant="studio-roma", starts_at=START + timedelta(days=3, hours=6),
                          resource={"id": "giulia", "name": "Giulia", "type": "specialist"},
                          cust=customer(f"ck{i}", language="it", email=None, phone=f"+39333{i:07d}",
                                        consents={"email": False, "sms": True}))
                  for i in range(MESSAGES)]
        assert apply_events(ctx.store, [json.dumps(e) for e in events], now=START, source="test").applied == MESSAGES
        with ctx.store.engine.connect() as conn:  # 07:00 in Rome is quiet hours: the info waits for 08:00
            due = conn.execute(select(func.max(t.messages.c.due_at)).where(t.messages.c.kind == "info")).scalar_one()
        clock.set(due)

        group = procs(settings_env(settings))
        group.start("worker", "worker", "-Q", "sweep,sms", "-c", "1")
        group.start("beat", "beat")

        # one batch of 60 at 8 in flight and 250 ms each: killed after 20 were accepted, with
        # the last of them answered but not yet recorded and 40 still to go
        wait_for(lambda: len(provider.received) >= 20, "the batch to be under way", group, timeout_s=90)
        [child] = children(group.procs["worker"].pid)
        os.kill(child, signal.SIGKILL)
        killed_at = time.monotonic()

        def states() -> dict[str, int]:
            c = t.messages.c
            with ctx.store.engine.connect() as conn:
                return dict(conn.execute(select(c.state, func.count()).where(c.kind == "info", c.channel == "sms")
                                         .group_by(c.state)).all())

        assert states().get("sending", 0) > 0  # the dead worker's claims, some of them in doubt
        wait_for(lambda: children(group.procs["worker"].pid) not in ([], [child]), "a new pool process", group,
                 timeout_s=30)
        wait_for(lambda: time.monotonic() - killed_at > 2, "the redelivered batch to find nothing to claim", group)
        clock.set(due + timedelta(seconds=LEASE_S + 5))  # the claims' lease runs out: the sweep hands them out again
        wait_for(lambda: states() == {"sent": MESSAGES}, "every info message recorded sent", group, timeout_s=120)

        received = [m["to"] for m in provider.received]
        assert len(received) == MESSAGES, "the provider got a message twice or lost one"
        assert sorted(received) == sorted(f"+39333{i:07d}" for i in range(MESSAGES))
        with ctx.store.engine.connect() as conn:
            outcomes = dict(conn.execute(select(t.send_attempts.c.outcome, func.count())
                                         .group_by(t.send_attempts.c.outcome)).all())
            sids = set(conn.execute(select(t.messages.c.provider_message_id)
                                    .where(t.messages.c.kind == "info", t.messages.c.state == "sent")).scalars())
        assert outcomes.get("reconciled", 0) >= 1, f"no attempt was in doubt, the kill missed its moment: {outcomes}"
        assert outcomes.get("sent", 0) + outcomes["reconciled"] == MESSAGES
        assert sids == {m["sid"] for m in provider.received}  # each row holds the provider's id of its one message
        ctx.close()
