"""Issue 15, acceptance 1 (N1, N3, N5, R16, R18, R42): on PostgreSQL, with two ingesters consuming
one Redis list, one poison input of every family between valid events of two tenants. Every
valid event is applied and planned, every poison input is a dead letter whose reason names the
field (or a refused callback), no ingester stalls, and the sweeps go on for everybody else."""

from __future__ import annotations

import json
from datetime import timedelta

import redis
from sqlalchemy import func, select, update

from bench.bad_input import replaced, string_paths
from notifier.channels.fake import FakeChannel
from notifier.devtools import wait_for
from notifier.dispatch import dispatch_batch
from notifier.domain.model import SECTIONS, Channel
from notifier.services import max_claims, sweep_due, sweep_states, timeline_of
from notifier.store import schema as t
from notifier.web.app import twilio_signature
from tests.conftest import START, api_client, created, customer, event, make_context, make_settings, settings_env

VISIT = START + timedelta(hours=4)  # 11:00 in Berlin: the info goes at 08:00, after quiet hours
TENANTS = ("clinic-full", "studio-roma")
RESOURCE = {"clinic-full": "dr-weiss", "studio-roma": "giulia"}
NUL = "X\u0000Y"


def _valid(tenant: str, n: int) -> dict:
    return created(f"{tenant}-ok-{n}", tenant=tenant, starts_at=VISIT, event_id=f"{tenant}-ok-{n}",
                   cust=customer(f"{tenant}-c{n}", phone="+49 151 23456789", consents={"email": True}),
                   resource={"id": RESOURCE[tenant], "name": "Resource"})


def poison() -> list[tuple[bytes, str]]:
    """(body, what its dead letter's reason must name), one per family and field."""
    shapes = [
        created("p-b", tenant="clinic-full", cust=customer("p-c", phone="+49 151 1"), starts_at=VISIT,
                resource={"id": "dr-weiss", "name": "Dr. Weiss"}, event_id="p"),
        event("booking.status_changed", {"booking_id": "p-b", "status": {"id": "s", "name": "Abgesagt",
                                         "kind": "cancellation"}, "reason": "krank"}, tenant="clinic-full",
              event_id="p"),
        event("booking.cancelled", {"booking_id": "p-b", "by": "staff", "reason": "krank"}, tenant="clinic-full",
              event_id="p"),
        event("tenant.settings_updated", {"name": "Praxis", "timezone": "Europe/Berlin",
                                          "company": {"name": "Praxis"}}, tenant="studio-roma", event_id="p"),
        event("resource.updated", {"resource": {"id": "giulia", "name": "Giulia"}, "timezone": "Europe/Rome"},
              tenant="studio-roma", event_id="p"),
        event("booking.rescheduled", {"booking_id": "p-b", "starts_at": VISIT.isoformat(),
                                      "ends_at": (VISIT + timedelta(hours=1)).isoformat(),
                                      "resource": {"id": "dr-weiss", "name": "Dr. Weiss"}}, tenant="clinic-full",
              event_id="p"),
        event("booking.visit_marked", {"booking_id": "p-b", "outcome": "arrived"}, tenant="clinic-full",
              event_id="p"),
        event("booking.confirmed", {"booking_id": "p-b", "via": "phone"}, tenant="clinic-full", event_id="p"),
        event("customer.updated", {"customer": customer("p-c", phone="+49 151 1")}, tenant="clinic-full",
              event_id="p"),
    ]
    shapes[3]["data"].update(home_region="IT", language="it")
    shapes[3]["data"]["company"].update(address="Via Roma 1", phone="+39 06 1234", email="info@example.org")
    shapes[0]["data"].update(service="Massage", source="staff",
                             status={"id": "s1", "name": "Neu", "kind": "start"})
    shapes[0]["data"]["resource"]["type"] = "specialist"
    shapes[5]["data"]["resource"]["type"] = "equipment"
    shapes[4]["data"]["settings"] = {"channel_policy": "first", "fallback": {"whatsapp": "sms"},
                                     "quiet_hours": {"start": "21:00", "end": "08:00"},
                                     "reminder": {"morning_at": "08:00", "channel_policy": "first"}}
    out, n = [], 0
    for shape in shapes:  # NUL in each string field of the contract
        for path in string_paths(shape):
            n += 1
            body = replaced(shape, path, NUL)
            if path != ("event_id",):
                body["event_id"] = f"p{n}"
            out.append((json.dumps(body).encode(), ".".join(path[1:] if path[0] == "data" else path)))
    out.append((b'{"event_id": "raw\x00nul", "type": "booking.created"}', "invalid event"))  # a raw NUL byte
    for name, section in SECTIONS.items():  # a huge number in each numeric setting, on resource and tenant
        for field, info in section.model_fields.items():
            if isinstance(info.default, int) and not isinstance(info.default, bool):
                n += 1
                settings = {name: {field: 1e30}}
                out.append((json.dumps(event("resource.updated", {"resource": {"id": "dr-weiss", "name": "Dr"},
                                                                  "settings": settings}, tenant="clinic-full",
                                             event_id=f"p{n}", revision=n)).encode(), f"settings.{name}.{field}"))
                out.append((json.dumps(event("tenant.settings_updated", {"settings": settings}, tenant="studio-roma",
                                             event_id=f"p{n}t", revision=n)).encode(), f"settings.{name}.{field}"))
    others = [
        (event("tenant.settings_updated", {"timezone": "Invalid/Zone"}, tenant="studio-roma"), "timezone"),
        (event("resource.updated", {"resource": {"id": "giulia", "name": "G"}, "timezone": "Mars/Olympus"},
               tenant="studio-roma"), "timezone"),
        (event("resource.updated", {"resource": {"id": "giulia", "name": "G"}, "settings": {"info": {"delay": 600}}},
               tenant="studio-roma"), "settings.info.delay: unknown key"),
        (event("tenant.settings_updated", {"settings": {"info": {"delay_s": "ten"}}}, tenant="clinic-full"),
         "settings.info.delay_s"),
        (created("p-two", tenant="clinic-full", cust=customer("p-two", email="a@example.org, victim@example.com")),
         "customer.email: not one email address"),
        (created("p-crlf", tenant="clinic-full", cust=customer("p-crlf", name="Erika\r\nBcc: victim@example.com")),
         "customer.name: control character U+000D"),
    ]
    for number, (body, words) in enumerate(others):
        body["event_id"] = f"other-{number}"
        out.append((json.dumps(body).encode(), words))
    return out


def _count(ctx, table, *where) -> int:
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def test_N1_N3_every_poison_family_between_two_tenants_valid_events_on_postgresql(tmp_path, pg_url, redis_url,
                                                                                    key_prefix, clock, procs):
    queue = f"{key_prefix}.events"
    settings = make_settings(tmp_path, database_url=pg_url, events_url=redis_url, events_queue=queue,
                             ingest_batch_max=20, twilio_auth_token="twilio-token",
                             public_url="https://notifier.example.org")
    mail = FakeChannel("email")
    ctx = make_context(settings, channels={Channel.EMAIL: mail})
    group = procs(settings_env(settings))
    group.start("ingester-1", "ingest")
    group.start("ingester-2", "ingest")
    bad = poison()
    valid = [_valid(tenant, n) for n in range(12) for tenant in TENANTS]
    stream: list[bytes] = []
    for i, body in enumerate(valid):  # poison spread between the valid events
        stream.append(json.dumps(body).encode())
        stream.extend(body for body, _ in bad[i::len(valid)])
    client = redis.Redis.from_url(redis_url)
    try:
        client.rpush(queue, *stream)

        def settled() -> bool:
            return _count(ctx, t.processed_events) + _count(ctx, t.dead_letters) >= len(valid) + len(bad)

        def drained() -> bool:  # each batch leaves its ingester's processing list once committed
            return client.llen(queue) == 0 and all(
                client.llen(key) == 0 for key in client.scan_iter(match=f"{queue}:processing:*"))

        wait_for(settled, "every event applied or dead-lettered", group, timeout_s=180)
        wait_for(drained, "the main list and both processing lists drained", group, timeout_s=60)
        group.check()  # both ingesters still running
        assert [key for key in client.scan_iter(match=f"{queue}:processing:*") if client.llen(key)] == []

        # every valid event applied and planned
        assert _count(ctx, t.processed_events, t.processed_events.c.outcome == "applied") == len(valid)
        for body in valid:
            booking = body["data"]["booking_id"]
            assert _count(ctx, t.messages, t.messages.c.booking_id == booking) > 0, booking
        # every poison input a dead letter, with a reason that names what was wrong
        with ctx.store.engine.connect() as conn:
            dead = conn.execute(select(t.dead_letters.c.reason, t.dead_letters.c.body_sha256)).all()
        assert len(dead) == len(bad)
        reasons = [d.reason for d in dead]
        assert not [r for r in reasons if r.startswith(("internal error", "refused by the database"))]
        for _body, words in bad:
            assert any(words in r for r in reasons), words

        # a Twilio-signed callback carrying an email's provider id is refused and moves nothing (N5)
        email = t.messages.c
        with ctx.store.engine.begin() as conn:
            mid = conn.execute(select(email.id).where(email.channel == "email").limit(1)).scalar_one()
            conn.execute(update(t.messages).where(email.id == mid).values(
                state="sent", provider="smtp", provider_message_id="<clinic-full.ok.info@example.org>"))
        form = {"MessageSid": "<clinic-full.ok.info@example.org>", "MessageStatus": "read"}
        answer = api_client(ctx).post("/callbacks/twilio", data=form, headers={"X-Twilio-Signature": twilio_signature(
            "twilio-token", "https://notifier.example.org/callbacks/twilio", form)})
        assert answer.status_code == 409
        with ctx.store.engine.connect() as conn:
            assert conn.execute(select(email.state).where(email.id == mid)).scalar_one() == "sent"

        # the sweeps go on: settings stored before they were checked break one booking, not the others
        created_bad = created("legacy", tenant="clinic-full", starts_at=VISIT, event_id="legacy",
                              resource={"id": "legacy-room", "name": "Old room"})
        client.rpush(queue, json.dumps(created_bad))
        wait_for(lambda: _count(ctx, t.bookings, t.bookings.c.id == "legacy") == 1, "the legacy booking", group)
        with ctx.store.engine.begin() as conn:
            conn.execute(update(t.resources).where(t.resources.c.id == "legacy-room")
                         .values(settings={"late": {"release_delay_s": 10**30}}))
        # rows this version cannot hand out or read, as another version (or a hand) may leave them:
        # a channel it does not know, a consent for one, a message whose dispatch never came back
        m = t.messages.c
        info = {b: m.booking_id == b and m.kind == "info" for b in ("clinic-full-ok-5", "studio-roma-ok-7")}
        with ctx.store.engine.begin() as conn:
            conn.execute(update(t.messages).where(info["clinic-full-ok-5"]).values(channel="fax"))
            conn.execute(update(t.customers).where(t.customers.c.id == "studio-roma-c3")
                         .values(consents=["email", "pigeon"]))
            conn.execute(update(t.messages).where(info["studio-roma-ok-7"]).values(
                state="sending", attempts=max_claims(settings), lease_until=START))
        due_at = START + timedelta(hours=2)
        claimed = sweep_due(ctx.store, now=due_at, lease_s=60, limit=10_000, batch=100,
                            max_claims=max_claims(settings))
        assert claimed, "the due sweep hands out what is due"
        with ctx.store.engine.connect() as conn:
            tenants = set(conn.execute(select(m.tenant_id).where(m.state == "queued")).scalars())
        assert tenants == set(TENANTS)
        ctx.clock.set(due_at)
        for _channel, ids in claimed:
            dispatch_batch(ctx, ids)
        with ctx.store.engine.connect() as conn:
            infos = {r.booking_id: r for r in conn.execute(select(t.messages).where(m.kind == "info"))}
        assert infos["clinic-full-ok-5"].state == "failed"
        assert infos["clinic-full-ok-5"].error.startswith("unknown channel 'fax'")
        assert infos["studio-roma-ok-7"].error.startswith("set aside by the due sweep: claimed")
        assert infos["studio-roma-ok-3"].error.startswith("its booking's data could not be read: ValueError")
        aside = {"clinic-full-ok-5", "studio-roma-ok-7", "studio-roma-ok-3"}
        for booking, row in infos.items():
            if booking.startswith(TENANTS) and booking not in aside and row.id != mid:
                assert row.state == "sent", (booking, row.state, row.error)
        sent_to = {o.metadata["booking_id"] for o in mail.sent}
        assert sent_to & aside == set() and {b.split("-ok-")[0] for b in sent_to} == set(TENANTS)
        for booking in aside:
            tenant = booking.split("-ok-")[0]
            assert [e for e in timeline_of(ctx.store, tenant, booking) if e["kind"] == "message.failed"], booking
        later = VISIT + timedelta(hours=3)
        while sweep_states(ctx.store, now=later, limit=7):  # several small sweeps, as beat runs them
            pass
        with ctx.store.engine.connect() as conn:
            rows = {r.id: r for r in conn.execute(select(t.bookings))}
        unreadable = {"clinic-full-ok-5": "KeyError: 'fax'", "studio-roma-ok-3": "'pigeon' is not a valid Channel",
                      "legacy": "release_delay_s"}
        for body in valid:  # late marker lit and slot released, for both tenants
            row = rows[body["data"]["booking_id"]]
            if row.id not in unreadable:
                assert row.released_at == later and row.status == "cancelled", row.id
        for booking, words in unreadable.items():  # parked, with the reason
            tenant = "studio-roma" if booking.startswith("studio-roma") else "clinic-full"
            assert rows[booking].released_at is None and rows[booking].next_check_at is None
            parked = [e for e in timeline_of(ctx.store, tenant, booking) if e["kind"] == "booking.parked"]
            assert parked and parked[0]["detail"]["by"] == "state sweep" and words in parked[0]["detail"]["reason"]
        group.check()
    finally:
        client.close()
        ctx.close()


def test_N1_N3_a_value_postgresql_refuses_is_dead_lettered_through_a_savepoint(tmp_path, pg_url, clock, monkeypatch):
    """Should a value the contract let through still be refused by PostgreSQL (here a NUL put
    into a customer's name behind the contract's back), the batch is not retried for ever: that
    event is a dead letter with the database's reason and the rest of the batch commits."""
    from notifier.domain import transitions as tr
    from notifier.services import apply_events

    ctx = make_context(make_settings(tmp_path, database_url=pg_url))
    real = tr.customer_from

    def with_nul(data, *args, **kwargs):
        customer = real(data, *args, **kwargs)
        return customer if data.id != "c-poison" else type(customer)(**{**vars(customer), "name": NUL})

    monkeypatch.setattr(tr, "customer_from", with_nul)
    bodies = [json.dumps(_valid("clinic-full", n)) for n in range(5)]
    bodies.insert(2, json.dumps(created("b-poison", tenant="clinic-full", cust=customer("c-poison"))))
    try:
        report = apply_events(ctx.store, bodies, now=START, source="test")
        assert (report.applied, report.dead) == (5, 1)
        assert report.dead_reasons[0].startswith("refused by the database (") and "0x00" in report.dead_reasons[0]
        assert _count(ctx, t.bookings) == 5 and _count(ctx, t.bookings, t.bookings.c.id == "b-poison") == 0
    finally:
        ctx.close()
