"""`make demo`: the whole pipeline on the embedded default, one simulated day and a half.

Real processes, real queues: a Celery worker, Celery beat and the ingester run as
subprocesses on SQLite and kombu's SQLAlchemy broker (on SQLite too); email goes to an SMTP sink this
demo starts on loopback. A simulated clock (a file every process reads) lets the day
pass in seconds: the demo moves it to each moment something is due and waits until
the pipeline has done its work.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

BERLIN = ZoneInfo("Europe/Berlin")
ROME = ZoneInfo("Europe/Rome")
DAY = datetime(2026, 12, 1)


def _at(day_offset: int, hour: int, minute: int, zone: ZoneInfo) -> datetime:
    return (DAY + timedelta(days=day_offset)).replace(hour=hour, minute=minute, tzinfo=zone)


def _event(kind: str, tenant: str, revision: int, at: datetime, data: dict[str, Any]) -> dict[str, Any]:
    return {"schema_version": 1, "event_id": str(uuid.uuid4()), "type": kind, "occurred_at": at.isoformat(),
            "tenant_id": tenant, "revision": revision, "data": data}


def _customer(cid: str, name: str, email: str, language: str) -> dict[str, Any]:
    return {"id": cid, "name": name, "email": email, "language": language, "consents": {"email": True},
            "privacy_accepted": True}


def morning_events(now: datetime) -> list[dict[str, Any]]:
    lena = _customer("c-lena", "Lena Hoffmann", "lena.hoffmann@example.org", "de")
    tobias = _customer("c-tobias", "Tobias Krüger", "tobias.k@example.org", "de")
    giulia = _customer("c-giulia", "Giulia Rossi", "giulia.rossi@example.it", "it")
    paolo = _customer("c-paolo", "Paolo Bianchi", "paolo.bianchi@example.it", "it")
    anna = {"id": "anna", "name": "Anna Weber", "type": "specialist"}
    jonas = {"id": "jonas", "name": "Jonas Brandt", "type": "specialist"}
    sauna = {"id": "sauna", "name": "Sauna cabin 2", "type": "equipment"}
    conti = {"id": "giulia", "name": "Giulia Conti", "type": "specialist"}
    room = {"id": "room-a", "name": "Sala Massaggi A", "type": "equipment"}

    def booked(tenant, bid, customer, resource, start, minutes, service=None):
        data = {"booking_id": bid, "customer": customer, "resource": resource, "starts_at": start.isoformat(),
                "ends_at": (start + timedelta(minutes=minutes)).isoformat()}
        if service:
            data["service"] = service
        return _event("booking.created", tenant, 1, now, data)

    return [
        booked("salon-berlin", "B-1001", lena, anna, _at(0, 10, 0, BERLIN), 60, "Haarschnitt"),
        booked("salon-berlin", "B-1002", tobias, jonas, _at(0, 17, 0, BERLIN), 45, "Bartpflege"),
        booked("salon-berlin", "B-1003", lena, sauna, _at(1, 18, 0, BERLIN), 90),
        booked("salon-berlin", "B-1004", tobias, anna, _at(1, 15, 30, BERLIN), 30, "Färben"),
        booked("studio-roma", "R-2001", giulia, conti, _at(1, 9, 30, ROME), 60, "Massaggio"),
        booked("studio-roma", "R-2002", paolo, room, _at(1, 14, 0, ROME), 50),
        # a broken publication: reported in the dead-letter store, nothing else stops
        {"type": "booking.created", "tenant_id": "salon-berlin", "data": "not an event"},
    ]


def late_morning_events(now: datetime) -> list[dict[str, Any]]:
    return [
        # Lena arrived for her 10:00 haircut: no late follow-up, no call for the staff (withdrawn if planned)
        _event("booking.visit_marked", "salon-berlin", 2, now,
               {"booking_id": "B-1001", "outcome": "arrived"}),
        # Giulia confirmed on the phone: no more confirmation requests, no call for the staff
        _event("booking.confirmed", "studio-roma", 2, now, {"booking_id": "R-2001", "via": "phone"}),
        # Tobias moves today's 17:00 to tomorrow 11:00: the old reminder is withdrawn, a new one planned
        _event("booking.rescheduled", "salon-berlin", 2, now, {
            "booking_id": "B-1002", "starts_at": _at(1, 11, 0, BERLIN).isoformat(),
            "ends_at": _at(1, 11, 45, BERLIN).isoformat()}),
        # and cancels his colour appointment: nothing more is sent for it
        _event("booking.cancelled", "salon-berlin", 2, now, {"booking_id": "B-1004", "by": "customer",
                                                              "reason": "Termin passt nicht mehr"}),
    ]


def _shown(path: Path) -> str:
    """A path as the user typed it: relative to where they are when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run_demo(keep: bool = True) -> int:
    import time

    from notifier.bootstrap import build
    from notifier.client import publish
    from notifier.clock import FileClock
    from notifier.devtools import HttpSink, MailSink, ProcessGroup, wait_for
    from notifier.services import load_tenants, timeline_of
    from notifier.settings import load_settings
    from notifier.store import schema as t
    from notifier.views import timeline_lines

    started = time.monotonic()
    for noisy in ("mail.log", "alembic", "kombu", "celery"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    root = Path(os.environ.get("NOTIFIER_DEMO_DIR", "var/demo")).resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    clock = FileClock(root / "clock")
    now = _at(0, 7, 30, BERLIN)
    clock.set(now)

    with MailSink() as sink, HttpSink() as hooks:
        env = dict(os.environ, NOTIFIER_STAFF_WEBHOOK_URL=hooks.url,
                   NOTIFIER_WEBHOOK_ALLOWED_NETWORKS="127.0.0.1/32",  # the demo's receiver, on loopback
                   NOTIFIER_DATABASE_URL=f"sqlite:///{root / 'notifier.db'}", NOTIFIER_DATA_DIR=str(root),
                   NOTIFIER_BROKER_URL="embedded", NOTIFIER_EVENTS_URL="embedded",
                   NOTIFIER_SMTP_HOST="127.0.0.1", NOTIFIER_SMTP_PORT=str(sink.port),
                   NOTIFIER_CLOCK=f"file:{clock.path}", NOTIFIER_SWEEP_INTERVAL_S="0.15",
                   NOTIFIER_INGEST_BATCH_WAIT_S="0.05", NOTIFIER_LOG_LEVEL="WARNING")
        os.environ.update({k: v for k, v in env.items() if k.startswith("NOTIFIER_")})
        settings = load_settings()
        ctx = build(settings)
        ctx.store.migrate()
        load_tenants(ctx.store, settings.tenants_dir, now=now)

        pipeline = ProcessGroup(root, env)
        published = 0

        def count(table) -> int:
            with ctx.store.engine.connect() as conn:
                return conn.execute(select(func.count()).select_from(table)).scalar_one()

        def ingested() -> bool:
            return count(t.processed_events) + count(t.dead_letters) >= published

        def busy() -> list[Any]:
            c = t.messages.c
            with ctx.store.engine.connect() as conn:
                return conn.execute(select(c.id, c.booking_id, c.kind, c.channel, c.state, c.due_at, c.attempts)
                                    .where(((c.state == "planned") & (c.due_at <= clock.now()))
                                           | c.state.in_(["queued", "sending"]))).all()

        def settled() -> bool:  # nothing due unsent, and the state sweep has seen every booking due a check
            checked = ctx.store.next_check_at()
            return not busy() and (checked is None or checked > clock.now())

        def explain() -> str:
            return "still busy:\n" + "\n".join(f"  {row}" for row in busy())

        def sent_by_channel() -> dict[str, int]:
            c = t.messages.c
            with ctx.store.engine.connect() as conn:
                rows = conn.execute(select(c.channel, func.count()).where(c.state == "sent").group_by(c.channel))
                return {channel: n for channel, n in rows}

        print(f"demo: starting a Celery worker, Celery beat and the ingester in {_shown(root)} (SQLite, embedded "
              f"broker, SMTP sink on port {sink.port}); a simulated clock runs a day and a half in seconds, "
              "times are Berlin's (Rome's is the same)", flush=True)
        try:
            pipeline.start("worker", "worker", "-P", "threads", "-c", "4")
            pipeline.start("beat", "beat")
            pipeline.start("ingester", "ingest")

            actions = [(now, morning_events), (_at(0, 10, 0, BERLIN) + timedelta(minutes=2), late_morning_events)]
            end = _at(2, 0, 0, BERLIN)
            before = sent_by_channel()
            while True:
                # the clock stops at each due message, each event batch and each marker change (a visit's
                # start, when the state sweep plans the late path of one not marked arrived)
                next_due, next_check = ctx.store.next_due_at(), ctx.store.next_check_at()
                next_action = actions[0][0] if actions else None
                candidates = [m for m in (next_due, next_check, next_action) if m is not None and m <= end]
                if not candidates:
                    break
                moment = max(min(candidates), clock.now())
                clock.set(moment)
                when = f"{moment.astimezone(BERLIN):%a %H:%M}"
                if actions and actions[0][0] <= moment:
                    _, make = actions.pop(0)
                    batch = make(moment)
                    publish(batch, settings=settings)
                    published += len(batch)
                    print(f"  {when}  published {len(batch)} booking events", flush=True)
                    wait_for(ingested, "the ingester", pipeline)
                wait_for(settled, f"messages due at {moment.isoformat()}", pipeline, explain=explain)
                after = sent_by_channel()
                new = {channel: n - before.get(channel, 0) for channel, n in after.items() if n > before.get(channel, 0)}
                if new:
                    print(f"  {when}  sent {sum(new.values())}: "
                          + ", ".join(f"{n} {channel}" for channel, n in sorted(new.items())), flush=True)
                before = after
            pipeline.terminate()  # they shut down while the results are printed
        except BaseException:
            pipeline.stop()
            raise

        states = ctx.store.count_by_state()
        sent = states.get("sent", 0)
        failed = states.get("failed", 0)
        print()
        with ctx.store.engine.connect() as conn:
            bookings = conn.execute(select(t.bookings.c.tenant_id, t.bookings.c.id).order_by(t.bookings.c.id)).all()
            dead = conn.execute(select(t.dead_letters.c.reason)).scalars().all()
        for tenant_id, booking_id in bookings:
            zone = BERLIN if tenant_id == "salon-berlin" else ROME
            print(f"{tenant_id} / {booking_id} (times in {zone.key})")
            for line in timeline_lines(timeline_of(ctx.store, tenant_id, booking_id), zone):
                print(f"  {line}")
        for reason in dead:
            print(f"dead letter: {reason}")
        print()
        with sink._lock:
            mails = list(sink.messages)
        (root / "mails").mkdir()
        for number, mail in enumerate(mails, 1):
            (root / "mails" / f"{number:02d}.eml").write_bytes(mail.as_bytes())
        showcase = ("B-1001.info.", "R-2001.info.", "B-1002.change.")  # German, Italian, a moved visit
        for mail in sorted((m for m in mails if any(k in m["Message-ID"] for k in showcase)),
                           key=lambda m: m["Message-ID"]):
            print(f"--- mail to {mail['To']}: {mail['Subject']}")
            print(mail.get_body(preferencelist=("plain",)).get_content().strip())
        print()
        ctx.close()
        pipeline.stop()
        for hook in hooks.requests[:3]:
            print(f"--- to the booking system ({hook['json']['type']}): {hook['json']['title']}")
            print(f"    {hook['json']['body']}")
        print()
        summary = {"events": published, "messages_sent": sent, "failed": failed, "mails_received": len(mails),
                   "webhooks_received": len(hooks.requests), "dead_letters": len(dead),
                   "seconds": round(time.monotonic() - started, 1)}
        print(json.dumps(summary))
        if keep:
            where = _shown(root)
            print(f"demo: kept in {where}: the database, each process's log, the {len(mails)} mails as .eml files. "
                  "Look again with")
            print(f"  NOTIFIER_DATABASE_URL=sqlite:///{where}/notifier.db {_shown(Path(sys.executable))} -m notifier.cli "
                  "timeline salon-berlin B-1002")
        else:
            shutil.rmtree(root, ignore_errors=True)
        print(f"demo: {published} events, {sent} messages sent, {failed} failed")
        return 0 if sent >= 1 and failed == 0 and len(mails) + len(hooks.requests) == sent else 1
