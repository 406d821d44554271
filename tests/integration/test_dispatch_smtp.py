"""Dispatch on PostgreSQL through a real SMTP server: a batch delivered twice sends each mail once (N2)."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

from sqlalchemy import select

from notifier.bootstrap import build_channels
from notifier.dispatch import dispatch_batch
from notifier.domain.model import Channel
from notifier.services import apply_events, sweep_due
from notifier.store import schema as t
from tests.conftest import START, created, customer, make_context, make_settings


def test_N2_the_same_batch_dispatched_twice_at_once_sends_each_mail_once(tmp_path, pg_url, mail_sink, clock):
    settings = make_settings(tmp_path, database_url=pg_url, smtp_port=mail_sink.port, dispatch_concurrency=8)
    ctx = make_context(settings, channels=build_channels(settings))
    bodies = [json.dumps(created(f"b{i}", cust=customer(f"c{i}", email=f"k{i}@example.org"),
                                 starts_at=START + timedelta(days=1, hours=6))) for i in range(40)]
    apply_events(ctx.store, bodies, now=START, source="test")
    [(_, ids)] = sweep_due(ctx.store, now=START, lease_s=60, limit=1000, batch=1000)
    assert len(ids) == 40

    reports = []
    threads = [threading.Thread(target=lambda: reports.append(dispatch_batch(ctx, ids))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(r.sent for r in reports) == 40 and sum(r.skipped for r in reports) == 40
    recipients = sorted(m["To"] for m in mail_sink.messages)
    assert recipients == sorted(f"k{i}@example.org" for i in range(40))
    assert ctx.store.count_by_state() == {"sent": 40, "planned": 40}  # the reminders wait for tomorrow
    ctx.close()


def test_an_smtp_server_that_is_down_is_a_temporary_failure(tmp_path, pg_url, clock):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(tmp_path, database_url=pg_url, smtp_port=port)
    ctx = make_context(settings, channels=build_channels(settings))
    apply_events(ctx.store, [json.dumps(created())], now=START, source="test")
    [(_, ids)] = sweep_due(ctx.store, now=START, lease_s=60, limit=10, batch=10)
    report = dispatch_batch(ctx, ids)
    assert report.retried == 1 and report.sent == 0
    ctx.close()


def test_N2_a_server_slow_to_answer_the_message_is_waited_for_not_sent_twice(tmp_path, pg_url, mail_sink, clock):
    """Issue 17: the reply after the message comes once the server has taken it on; a client that
    gives up on it sends the mail again (RFC 1047). It waits minutes for it (RFC 5321 4.5.3.2),
    while connecting keeps the short `smtp_timeout_s`."""
    mail_sink.answer_after_s = 1.5
    settings = make_settings(tmp_path, database_url=pg_url, smtp_port=mail_sink.port, smtp_timeout_s=0.5)
    ctx = make_context(settings, channels=build_channels(settings))
    apply_events(ctx.store, [json.dumps(created())], now=START, source="test")
    [(_, ids)] = sweep_due(ctx.store, now=START, lease_s=60, limit=10, batch=10)
    assert dispatch_batch(ctx, ids).sent == 1
    assert len(mail_sink.messages) == 1
    ctx.close()


def _email_due(ctx):
    """The booking's info email as stored."""
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(t.messages).where(t.messages.c.kind == "info")).one()


def _dispatch_due(ctx):
    [(_, ids)] = sweep_due(ctx.store, now=ctx.clock.now(), lease_s=60, limit=10, batch=10)
    return dispatch_batch(ctx, ids)


RELAY_HEADER = "Resend-Idempotency-Key"


def test_N2_a_relay_that_drops_repeats_gets_each_mails_key_and_a_lost_answers_resend_stops_there(
        tmp_path, pg_url, clock):
    """Issue 17: SMTP cannot be asked, so a mail whose answer was lost is sent again. A relay that
    drops a repeated message by a header of its own (`smtp_idempotency_header`; Resend's
    Resend-Idempotency-Key) gets the message's idempotency key there, the same on every attempt:
    the copy sent again reaches the relay, not the customer."""
    from notifier.devtools import MailSink

    with MailSink(idempotency_header=RELAY_HEADER) as relay:
        relay.lose_answers = 1  # the relay takes the first mail, then its connection dies before the 250
        settings = make_settings(tmp_path, database_url=pg_url, smtp_port=relay.port,
                                 smtp_idempotency_header=RELAY_HEADER)
        ctx = make_context(settings, channels=build_channels(settings))
        apply_events(ctx.store, [json.dumps(created())], now=START, source="test")
        assert _dispatch_due(ctx).retried == 1  # no answer: in doubt, tried again later
        assert (len(relay.messages), relay.dropped) == (1, 0)

        clock.set(_email_due(ctx).due_at)
        assert _dispatch_due(ctx).sent == 1
        assert (len(relay.messages), relay.dropped) == (1, 1)  # the second copy went no further than the relay
        [mail] = relay.messages
        info = _email_due(ctx)
        assert mail[RELAY_HEADER] == f"{info.tenant_id}/{info.booking_id}/{info.key}"
        assert info.state == "sent"
        ctx.close()


def test_N1_without_the_header_a_lost_answers_mail_is_sent_again(tmp_path, pg_url, mail_sink, clock):
    """At least once, the bound docs/reliability.md states: a relay that cannot drop repeats gets
    the copy again (with the same Message-ID), rather than the mail being taken as sent."""
    mail_sink.lose_answers = 1
    settings = make_settings(tmp_path, database_url=pg_url, smtp_port=mail_sink.port)
    ctx = make_context(settings, channels=build_channels(settings))
    apply_events(ctx.store, [json.dumps(created())], now=START, source="test")
    assert _dispatch_due(ctx).retried == 1
    clock.set(_email_due(ctx).due_at)
    assert _dispatch_due(ctx).sent == 1
    assert [m["Message-ID"] for m in mail_sink.messages][0] == mail_sink.messages[1]["Message-ID"]
    assert RELAY_HEADER not in mail_sink.messages[0]
    ctx.close()


def test_N2_an_in_doubt_mail_goes_back_to_the_relay_that_drops_repeats_even_while_it_cools_down(
        tmp_path, pg_url, clock):
    """Two relays (`smtp_relays`): the first drops repeats, the second cannot. The first's answer
    is lost and that puts it into its cool-down; the mail's next attempt still goes to the first,
    where a copy may be and where a repeat stops, not to the second, which would deliver it again."""
    from notifier.devtools import MailSink

    with MailSink(idempotency_header=RELAY_HEADER) as first, MailSink() as second:
        first.lose_answers = 1
        settings = make_settings(tmp_path, database_url=pg_url, smtp_port=first.port,
                                 smtp_idempotency_header=RELAY_HEADER, failover_failures=1,
                                 smtp_relays=f"smtp://127.0.0.1:{second.port}?name=backup")
        ctx = make_context(settings, channels=build_channels(settings))
        apply_events(ctx.store, [json.dumps(created())], now=START, source="test")
        assert _dispatch_due(ctx).retried == 1
        assert ctx.channels[Channel.EMAIL].health.down("email", ["smtp", "backup"]) == {"smtp"}
        clock.set(_email_due(ctx).due_at)
        assert _dispatch_due(ctx).sent == 1
        assert (len(first.messages), first.dropped, len(second.messages)) == (1, 1, 0)
        ctx.close()
