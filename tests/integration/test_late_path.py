"""Issue 7 acceptance 3 (R16, R17, R18, P2): the late path end to end on PostgreSQL, with a Celery
beat and worker as processes and the simulated clock moving through the visit. The customer who
has not been marked arrived gets the follow-up five minutes after the start; the booking gets the
orange late marker and then counts in the late counter (both under the defaults); the responsible staff member gets a call activity; at
thirty minutes the slot is released, the staff is told and the booking system receives
slot.released. Each of these happens once."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import redis
from sqlalchemy import select

from notifier.devtools import HttpSink, wait_for
from notifier.services import apply_events, counters, timeline_of
from notifier.store import schema as t
from tests.conftest import TENANTS, created, customer, make_context, make_settings, settings_env

TENANT = "clinic-full"
VISIT = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)  # Wednesday 10:00 in Berlin
DAY = VISIT.date()
MINUTE = timedelta(minutes=1)


def test_R16_R17_R18_a_customer_who_does_not_come_from_follow_up_to_released_slot(tmp_path, pg_url, redis_url,
                                                                                   key_prefix, mail_sink, clock,
                                                                                   procs):
    assert "settings: {}" in (TENANTS / f"{TENANT}.yaml").read_text()  # the clinic with every default
    outbound = f"{key_prefix}.outbound"
    with HttpSink() as hooks:
        settings = make_settings(tmp_path, database_url=pg_url, broker_url=redis_url, broker_key_prefix=key_prefix,
                                 events_url=redis_url, events_queue=f"{key_prefix}.events", outbound_queue=outbound,
                                 smtp_port=mail_sink.port, staff_webhook_url=hooks.url, tenants_path=TENANTS,
                                 sweep_interval_s=0.3, sweep_idle_s=1)  # idle sweeps too: the quiet spell
        ctx = make_context(settings)
        group = procs(settings_env(settings))
        group.start("worker", "worker", "-c", "2")
        group.start("beat", "beat")
        broker = redis.Redis.from_url(redis_url)

        def events(type_: str) -> list[dict]:
            return [e["data"] for e in map(json.loads, broker.lrange(outbound, 0, -1)) if e["type"] == type_]

        def staff(kind: str) -> list[dict]:
            return [r["json"] for r in list(hooks.requests) if r["json"].get("kind") == kind]

        def booking():
            with ctx.store.engine.connect() as conn:
                return conn.execute(select(t.bookings).where(t.bookings.c.id == "B-7")).one()

        def board(at: datetime) -> dict[str, int]:
            return counters(ctx.store, TENANT, DAY, now=at).get("dr-weiss", {})

        def at(moment: datetime) -> datetime:
            clock.set(moment)
            return moment

        # booked an hour before the visit; the new-booking email goes out at once
        now = at(VISIT - 60 * MINUTE)
        body = created("B-7", tenant=TENANT, starts_at=VISIT, at=now, cust=customer("c7"),
                       resource={"id": "dr-weiss", "name": "Dr. Weiss", "type": "specialist"})
        assert apply_events(ctx.store, [json.dumps(body)], now=now, source="test").applied == 1
        wait_for(lambda: len(mail_sink.messages) == 1, "the new-booking email", group)

        # R16: five minutes after the start, not marked arrived: the follow-up, the late marker
        now = at(VISIT + 5 * MINUTE)
        wait_for(lambda: len(mail_sink.messages) == 2, "the late follow-up email", group)
        late_mail = mail_sink.messages[1]
        assert late_mail["To"] == "kunde@example.org"
        assert late_mail["Subject"] == "Wir warten auf Sie: Dr. Weiss, 10:00 Uhr"
        wait_for(lambda: booking().late_since is not None, "the late marker", group)
        assert booking().late_since == VISIT + 5 * MINUTE and booking().late_counter_since is None
        assert (board(now)["late"], board(now)["late_counter"]) == (1, 0)  # the late counter starts later

        # R16: the late counter at ten minutes, published to the booking system
        now = at(VISIT + 10 * MINUTE)
        wait_for(lambda: any(e["late_counter"] for e in events("counters.changed")), "counters.changed, late counter",
                 group)
        assert booking().late_counter_since == VISIT + 10 * MINUTE
        assert (board(now)["late"], board(now)["late_counter"]) == (1, 1)

        # R17: still not there at fifteen minutes: a call activity for the staff
        now = at(VISIT + 15 * MINUTE)
        wait_for(lambda: staff("activity_late"), "the staff activity", group)
        [activity] = staff("activity_late")
        assert activity["type"] == "notifier.activity" and activity["booking_id"] == "B-7"
        assert activity["title"] == "Anrufen: Erika Mustermann ist nicht da"
        wait_for(lambda: events("activity.created"), "activity.created to the booking system", group)
        [told] = events("activity.created")
        assert (told["booking_id"], told["kind"]) == ("B-7", "activity_late")

        # R18: thirty minutes: the slot goes back, the staff hears of it, the booking system too
        now = at(VISIT + 30 * MINUTE)
        wait_for(lambda: events("slot.released"), "slot.released to the booking system", group)
        [released] = events("slot.released")
        assert (released["booking_id"], released["resource_id"], released["reason"]) == \
            ("B-7", "dr-weiss", "not_marked_arrived")
        assert released["starts_at"] == VISIT.isoformat()
        wait_for(lambda: staff("staff_released"), "the staff's release notice", group)
        [notice] = staff("staff_released")
        assert notice["type"] == "notifier.staff" and notice["title"].startswith("Slot freigegeben: Erika Mustermann")
        row = booking()
        assert (row.status, row.cancelled_by, row.released_at) == ("cancelled", "release", VISIT + 30 * MINUTE)
        assert not any(board(now).values())  # off the planner's board

        # a quiet spell of sweeps: nothing above happens a second time
        sweeps = len(re.findall("Sending due task sweep-states", (tmp_path / "beat.log").read_text()))
        wait_for(lambda: len(re.findall("Sending due task sweep-states", (tmp_path / "beat.log").read_text()))
                 >= sweeps + 5, "five more state sweeps", group)
        assert [m["Subject"].split(":")[0] for m in mail_sink.messages] == [
            mail_sink.messages[0]["Subject"].split(":")[0], "Wir warten auf Sie"]
        assert (len(staff("activity_late")), len(staff("staff_released")), len(events("slot.released")),
                len(events("activity.created"))) == (1, 1, 1, 1)
        kinds = [e["kind"] for e in timeline_of(ctx.store, TENANT, "B-7")]
        for kind in ("marker.late.on", "marker.late_counter.on", "slot.released"):
            assert kinds.count(kind) == 1, kind
        sent = [e["detail"]["kind"] for e in timeline_of(ctx.store, TENANT, "B-7") if e["kind"] == "message.sent"]
        assert sorted(sent) == ["activity_late", "info", "late", "staff_released"]
        broker.close()
        ctx.close()
