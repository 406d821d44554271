"""Issue 17 (N1, N2) on PostgreSQL: the provider's answer written down the instant it comes
(notifier/receipts.py) and the customer's link saved before the message that carries it
(`Tx.save_links`), both written there as arrays in one statement rather than as a VALUES list
built and compiled per write (the quarter of a busy sms worker's time `bench dispatch` found).

A worker killed after the provider took an email and before its record was committed leaves
the receipt; the message's next claim finds the copy by it and records it, not sending it again.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

from sqlalchemy import select

from notifier.channels.base import SendResult
from notifier.dispatch import dispatch_batch
from notifier.domain.model import Channel
from notifier.services import apply_events, sweep_due
from notifier.store import schema as t
from tests.conftest import START, created, make_context, make_settings
from tests.unit.test_claims import UnaskableProvider, dispatch_killed_after_the_receipt


def _info(ctx):
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(t.messages).where(t.messages.c.kind == "info")).one()


def test_N1_N2_on_postgresql_a_killed_workers_copy_is_found_by_its_receipt_and_its_link_answers(
        tmp_path, clock, pg_url, monkeypatch):
    smtp = UnaskableProvider()
    ctx = make_context(make_settings(tmp_path, database_url=pg_url), channels={Channel.EMAIL: smtp})
    assert ctx.store.dialect == "postgresql"
    apply_events(ctx.store, [json.dumps(created())], now=START, source="test")

    def receipts() -> list:
        r = t.receipts.c
        with ctx.store.engine.connect() as conn:
            return conn.execute(select(r.message_id, r.claim_token, r.provider, r.provider_message_id,
                                       r.provider_code, r.received_at)).all()

    dispatch_killed_after_the_receipt(ctx, monkeypatch)
    first = _info(ctx)
    assert len(smtp.accepted) == 1 and first.state == "sending"
    assert receipts() == [(first.id, first.claim_token, "smtp", f"<m{first.id}@example.org>", "250", START)]
    # the page behind the link the email carries answers, though the email's record never came
    with ctx.store.transaction() as tx:
        assert tx.link_target(ctx.links.token(first.tenant_id, first.booking_id)) == (first.tenant_id,
                                                                                      first.booking_id)

    clock.set(START + timedelta(seconds=ctx.settings.lease_s + 1))  # its claim lapses; the sweep hands it out
    [(_, ids)] = sweep_due(ctx.store, now=clock.now(), lease_s=60, limit=10, batch=10)
    assert dispatch_batch(ctx, ids).reconciled == 1
    assert len(smtp.accepted) == 1  # found by its receipt, not sent again
    info = _info(ctx)
    assert (info.state, info.provider_message_id, info.provider) == ("sent", f"<m{info.id}@example.org>", "smtp")
    ctx.close()


def test_N1_on_postgresql_many_answers_at_once_are_each_written_down(tmp_path, clock, pg_url):
    """Whatever came back since the receipts thread's last write goes in one statement: every
    row with its own values, the missing ones (no account, no code) as NULL."""
    from notifier.receipts import Receipts

    ctx = make_context(make_settings(tmp_path, database_url=pg_url))
    receipts = Receipts(ctx.store)
    for i in range(50):
        receipts.keep(1000 + i, i % 3 + 1, "twilio", "second" if i % 2 else None,
                      SendResult(provider_message_id=f"SM{i}", provider_code="queued" if i % 5 else None),
                      START + timedelta(seconds=i))
    deadline = time.monotonic() + 10
    while receipts.written < 50 and time.monotonic() < deadline:
        time.sleep(0.02)  # polling for the condition, with a deadline
    receipts.close()
    r = t.receipts.c
    with ctx.store.engine.connect() as conn:
        rows = conn.execute(select(r.message_id, r.claim_token, r.provider, r.account, r.provider_message_id,
                                   r.provider_code, r.received_at).order_by(r.message_id)).all()
    assert rows == [(1000 + i, i % 3 + 1, "twilio", "second" if i % 2 else None, f"SM{i}",
                     "queued" if i % 5 else None, START + timedelta(seconds=i)) for i in range(50)]
    ctx.close()
