"""Dispatch on PostgreSQL through a real SMTP server: a batch delivered twice sends each mail once (N2)."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

from notifier.bootstrap import build_channels
from notifier.dispatch import dispatch_batch
from notifier.services import apply_events, sweep_due
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
