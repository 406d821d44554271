"""Issue 2, acceptance 2: a raw JSON event on Redis becomes an email at a real SMTP server,
through the ingester, beat and a Celery worker as separate processes on PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta

import redis
from sqlalchemy import select

from notifier.devtools import wait_for
from notifier.services import timeline_of
from notifier.store import schema as t
from tests.conftest import START, created, make_context, make_settings, settings_env


def test_R10_R15_booking_event_on_redis_becomes_sent_emails(tmp_path, pg_url, redis_url, key_prefix, mail_sink,
                                                          clock, procs):
    settings = make_settings(tmp_path, database_url=pg_url, broker_url=redis_url, broker_key_prefix=key_prefix,
                             events_url=redis_url, events_queue=f"{key_prefix}.events", smtp_port=mail_sink.port,
                             sweep_interval_s=0.3)
    ctx = make_context(settings)
    group = procs(settings_env(settings))
    group.start("worker", "worker", "-c", "2")
    group.start("beat", "beat")
    group.start("ingester", "ingest")

    # what a PHP or Java booking system does: a plain JSON body pushed onto a list
    visit = START + timedelta(days=2, hours=6)  # Thursday 3 December, 13:00 in Berlin
    raw = redis.Redis.from_url(redis_url)
    raw.rpush(f"{key_prefix}.events", json.dumps(created("B-42", starts_at=visit)))

    wait_for(lambda: len(mail_sink.messages) >= 1, "the new-booking email", group, timeout_s=90)
    [mail] = mail_sink.messages
    text = mail.get_body(preferencelist=("plain",)).get_content()
    assert mail["To"] == "kunde@example.org"
    assert "Donnerstag, 3. Dezember 2026 um 13:00 Uhr" in text  # the tenant's zone, the customer's language
    [card] = [p for p in mail.walk() if p.get_content_type() == "text/calendar"]  # R22
    assert "DTSTART;TZID=Europe/Berlin:20261203T130000" in card.get_content()

    def rows():
        with ctx.store.engine.connect() as conn:
            return {r.kind: r for r in conn.execute(select(t.messages))}

    # the mail is at the server a moment before the worker has recorded it
    wait_for(lambda: rows()["info"].state == "sent", "the info row to be marked sent", group, timeout_s=30)
    rows = rows()
    assert rows["info"].provider_message_id
    assert rows["reminder"].state == "planned"
    kinds = [e["kind"] for e in timeline_of(ctx.store, "salon-berlin", "B-42")]
    assert kinds[:2] == ["booking.created", "message.planned"] and "message.sent" in kinds

    # the morning of the visit: the simulated clock moves, beat's sweep finds the reminder
    clock.set(rows["reminder"].due_at)
    wait_for(lambda: len(mail_sink.messages) >= 2, "the reminder", group, timeout_s=60)
    assert "Erinnerung" in mail_sink.messages[1]["Subject"]
    wait_for(lambda: ctx.store.count_by_state().get("sent") == 2, "both rows sent", group, timeout_s=30)
    assert raw.llen(f"{key_prefix}.events") == 0
    ctx.close()
