"""One bad event, booking, setting or message stops nothing else (N1, N3, N5; issue 15), on
SQLite; tests/integration/test_poison_pg.py shows the same on PostgreSQL with real ingesters."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import DataError

from notifier.channels.base import Outgoing, PermanentFailure
from notifier.channels.email import SMTPChannel
from notifier.housekeeping import housekeeping
from notifier.services import apply_delivery_status, apply_events, replay_dead_letter, sweep_states, timeline_of
from notifier.store import schema as t
from notifier.store.batch import BatchSession
from tests.conftest import START, created, customer, event
from tests.unit.test_services import messages, run_due


def _apply(ctx, bodies):
    return apply_events(ctx.store, bodies, now=ctx.clock.now(), source="test")


def _dead(ctx):
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(t.dead_letters).order_by(t.dead_letters.c.id)).all()


def _bookings(ctx):
    with ctx.store.engine.connect() as conn:
        return set(conn.execute(select(t.bookings.c.id)).scalars())


def test_N1_N3_an_event_the_store_refuses_is_dead_lettered_and_the_rest_of_its_batch_commits(ctx, monkeypatch):
    """The database refuses one event's write (here: a DataError at the flush, as PostgreSQL
    refuses a NUL): the batch is split down to that event, which becomes a dead letter with the
    database's reason, and the others commit in the same transaction."""
    real_flush = BatchSession.flush

    def refusing(self, now):
        if ("salon-berlin", "b-poison") in self.dirty["bookings"]:
            raise DataError("INSERT", {}, ValueError('invalid byte sequence for encoding "UTF8": 0x00'))
        return real_flush(self, now)

    monkeypatch.setattr(BatchSession, "flush", refusing)
    names = [f"b{i}" for i in range(7)]
    bodies = [json.dumps(created(b)) for b in names[:3]] + [json.dumps(created("b-poison"))] + \
        [json.dumps(created(b)) for b in names[3:]]
    report = _apply(ctx, bodies)
    assert (report.applied, report.dead) == (7, 1)
    assert _bookings(ctx) == set(names)
    [dead] = _dead(ctx)
    assert dead.reason == 'refused by the database (ValueError): invalid byte sequence for encoding "UTF8": 0x00'
    assert json.loads(dead.body)["data"]["booking_id"] == "b-poison"
    monkeypatch.setattr(BatchSession, "flush", real_flush)  # the cause fixed: the replay applies it
    assert replay_dead_letter(ctx.store, dead.id, now=START).applied == 1 and "b-poison" in _bookings(ctx)


def test_N3_dead_letters_keep_64_KB_of_any_body_with_its_size_and_digest_and_expire(ctx):
    huge = json.dumps(created("b-huge")).encode()[:-1] + b', "padding": "' + b"x" * 1_000_000 + b'"}'
    raw = b"\x00\xff{not json"
    report = _apply(ctx, [huge, raw, json.dumps(created("b-ok"))])
    assert (report.applied, report.dead) == (1, 2)
    cut, odd = _dead(ctx)
    assert (cut.body_bytes, cut.body_sha256) == (len(huge), hashlib.sha256(huge).hexdigest())
    assert len(cut.body.encode()) == 65_536 and huge.decode().startswith(cut.body)
    assert odd.body == "\ufffd\ufffd{not json" and odd.body_sha256 == hashlib.sha256(raw).hexdigest()
    with pytest.raises(ValueError, match="keeps only the first 65,536 of its 1,000,"):
        replay_dead_letter(ctx.store, cut.id, now=START)
    kept = housekeeping(ctx.store, now=START + timedelta(days=29), hold_s=3600,
                        retention_s={"dead_letters": 30 * 86400}, batch=100)
    assert kept.dead_letters == 0 and len(_dead(ctx)) == 2
    gone = housekeeping(ctx.store, now=START + timedelta(days=31), hold_s=3600,
                        retention_s={"dead_letters": 30 * 86400}, batch=100)
    assert gone.dead_letters == 2 and _dead(ctx) == []


def test_N3_R16_R18_a_booking_the_state_sweep_cannot_handle_is_parked_and_the_others_light_and_release(ctx):
    """Settings stored before they were validated (a resource with a delay of 10^30 s) fail that
    resource's bookings in the state sweep: they are parked with the reason; the others go on."""
    visit = START + timedelta(hours=1)
    _apply(ctx, [json.dumps(created(b, starts_at=visit, resource={"id": r, "name": r}, tenant="clinic-full"))
                 for b, r in (("b-ok", "dr-weiss"), ("b-bad", "broken"), ("b-ok2", "room-1"))])
    with ctx.store.engine.begin() as conn:
        conn.execute(update(t.resources).where(t.resources.c.id == "broken")
                     .values(settings={"late": {"delay_s": 10**30}}))
    later = visit + timedelta(hours=3)  # late, orange and released for a booking nobody marked
    assert sweep_states(ctx.store, now=later) == 3
    with ctx.store.engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(t.bookings))}
    for ok in ("b-ok", "b-ok2"):
        assert rows[ok].released_at == later and rows[ok].status == "cancelled"
    assert rows["b-bad"].next_check_at is None and rows["b-bad"].released_at is None
    assert any(e["kind"] == "slot.released" for e in timeline_of(ctx.store, "clinic-full", "b-ok"))
    parked = [e for e in timeline_of(ctx.store, "clinic-full", "b-bad") if e["kind"] == "booking.parked"]
    assert parked and parked[0]["detail"]["by"] == "state sweep"
    assert "delay_s" in parked[0]["detail"]["reason"]
    assert sweep_states(ctx.store, now=later + timedelta(minutes=1)) == 0  # parked: not tried again and again


def test_N3_R12_R16_a_resource_with_unchecked_settings_leaves_the_tenants_other_counters_standing(ctx):
    """The issue's 1e30 made the tenant's counters answer 500: now that resource is left out."""
    from notifier.services import counters

    visit = START + timedelta(hours=1)
    _apply(ctx, [json.dumps(created(b, starts_at=visit, resource={"id": r, "name": r}, tenant="clinic-full",
                                    cust=customer(f"c-{b}")))
                 for b, r in (("b-ok", "dr-weiss"), ("b-bad", "broken"))])
    with ctx.store.engine.begin() as conn:
        conn.execute(update(t.resources).where(t.resources.c.id == "broken")
                     .values(settings={"late": {"delay_s": 10**30}}))
    board = counters(ctx.store, "clinic-full", visit.date(), now=visit + timedelta(minutes=20))
    assert board == {"dr-weiss": {"unconfirmed": 0, "red": 0, "late": 1, "late_counter": 1}}  # 20 min late


def test_N3_a_bad_address_or_header_fails_at_once_with_its_reason():
    smtp = SMTPChannel(host="127.0.0.1", port=9, mail_from="notifier@example.org")  # never reached
    with pytest.raises(PermanentFailure, match="not one email address") as two:
        smtp.send(Outgoing(message_id=1, idempotency_key="t/b/k", to="a@example.org, victim@example.com", text="x"))
    with pytest.raises(PermanentFailure, match="linefeed or carriage return") as header:
        smtp.send(Outgoing(message_id=1, idempotency_key="t/b/k", to="a@example.org", text="x",
                           subject="Hallo\r\nBcc: victim@example.com"))
    assert (two.value.code, header.value.code) == ("address", "header")


def test_N3_a_stored_address_list_fails_its_message_once_and_the_batch_goes_on(ctx, tmp_path):
    """An address stored before the contract refused lists is never mailed: failed at once, with
    the reason, no retry; the batch's other messages go out."""
    from notifier.devtools import MailSink

    _apply(ctx, [json.dumps(created("b1")), json.dumps(created("b2", cust={
        "id": "c2", "name": "Max", "language": "de", "email": "max@example.org", "consents": {"email": True},
        "privacy_accepted": True}))])
    with ctx.store.engine.begin() as conn:
        conn.execute(update(t.customers).where(t.customers.c.id == "c2")
                     .values(email="max@example.org, victim@example.com"))
    with MailSink() as sink:
        ctx.channels[next(iter(ctx.channels))] = SMTPChannel(host="127.0.0.1", port=sink.port,
                                                             mail_from="notifier@example.org")
        report = run_due(ctx)
    assert report["failed"] == 1 and report["sent"] >= 1 and report["retried"] == 0
    failed = [m for m in messages(ctx) if m.state == "failed"]
    assert [(m.booking_id, m.attempts) for m in failed] == [("b2", 1)]
    assert failed[0].error.startswith("not one email address")
    assert all("victim@example.com" not in str(m) for m in sink.messages)


def test_N5_a_callback_moves_only_a_message_of_its_own_provider(ctx, email):
    _apply(ctx, [json.dumps(created("b1"))])
    run_due(ctx)
    [sent] = [m for m in messages(ctx) if m.state == "sent"]
    assert sent.provider == "fake" and sent.provider_message_id
    assert apply_delivery_status(ctx.store, "twilio", sent.provider_message_id, "read", now=START) == "foreign"
    with ctx.store.engine.connect() as conn:
        assert conn.execute(select(t.messages.c.state).where(t.messages.c.id == sent.id)).scalar_one() == "sent"
        assert conn.execute(select(func.count()).select_from(t.pending_statuses)).scalar_one() == 0
    assert apply_delivery_status(ctx.store, "fake", sent.provider_message_id, "read", now=START) == "applied"


def test_N3_a_tenant_settings_update_merges_company_details(ctx):
    report = _apply(ctx, [json.dumps(event("tenant.settings_updated", {"company": {"phone": "+49 30 999"}}))])
    assert report.applied == 1
    with ctx.store.transaction() as tx:
        company = tx.tenant("salon-berlin").company
    assert company["phone"] == "+49 30 999" and company["name"] and company["address"]


def test_R42_an_update_that_removes_a_company_detail_the_templates_use_is_refused_with_the_reason(ctx):
    report = _apply(ctx, [json.dumps(event("tenant.settings_updated", {"company": {"phone": ""}})),
                          json.dumps(created("b-after"))])
    assert (report.applied, report.dead) == (1, 1)
    assert report.dead_reasons == ["company detail(s) phone are used by the tenant's active templates and may not be "
                                   "removed (R42); load a bundle without them first"]
    with ctx.store.transaction() as tx:
        tenant = tx.tenant("salon-berlin")
    assert tenant.company["phone"] and tenant.revision == 0  # nothing of the refused update was applied
    again = _apply(ctx, [json.dumps(event("tenant.settings_updated", {"company": {"fax": "+49 30 1"}}))])
    assert again.applied == 1  # a detail no template uses may come and go


def test_N1_N3_one_send_record_the_store_refuses_does_not_hold_up_the_others(ctx, email, monkeypatch):
    """A provider's answer the store refuses (here: a DataError on one message's id) is recorded
    without it, the reason in its place; the chunk's other outcomes are recorded as they were."""
    import notifier.dispatch as dispatch

    _apply(ctx, [json.dumps(created(f"b{i}")) for i in range(4)])
    real = dispatch._record_in
    refused = {}

    def refusing(conn, outcomes, regions):
        for d in outcomes:
            if d.message.booking_id == "b2" and d.provider_message_id:
                refused[d.message.id] = d.provider_message_id
                raise DataError("UPDATE", {}, ValueError("value too long for type character varying(200)"))
        return real(conn, outcomes, regions)

    monkeypatch.setattr(dispatch, "_record_in", refusing)
    report = run_due(ctx)
    assert report["sent"] == len(email.sent) == 4 and report["retried"] == 0
    rows = {m.booking_id: m for m in messages(ctx) if m.kind == "info"}
    assert all(rows[b].state == "sent" and rows[b].provider_message_id for b in ("b0", "b1", "b3"))
    assert rows["b2"].state == "sent" and rows["b2"].provider_message_id is None
    assert rows["b2"].error == "recorded without the provider's details: DataError"


def _parked(loop):
    from notifier.observability.metrics import metrics

    return metrics().parked.labels(loop)._value.get()


def _timeline_kinds(ctx, booking, kind):
    return [e for e in timeline_of(ctx.store, "salon-berlin", booking) if e["kind"] == kind]


def test_N3_a_message_the_due_sweep_cannot_hand_out_fails_with_its_reason_and_the_rest_is_claimed(ctx):
    """A due row this version cannot read (a channel written by another version, or by hand) used to
    fail the due sweep's one claim for every tenant, at every sweep: now that message fails with
    the reason on its timeline, and everything else due is handed out."""
    from notifier.services import sweep_due

    _apply(ctx, [json.dumps(created(f"b{i}", cust=customer(f"c{i}"))) for i in range(3)])
    with ctx.store.engine.begin() as conn:
        conn.execute(update(t.messages).where(t.messages.c.booking_id == "b1").values(channel="fax"))
    before = _parked("due sweep")
    batches = sweep_due(ctx.store, now=START, lease_s=60, limit=100, batch=100)
    handed = {m.booking_id for m in messages(ctx) if m.id in {i for _, ids in batches for i in ids}}
    assert handed == {"b0", "b2"}
    [fax] = [m for m in messages(ctx) if m.booking_id == "b1" and m.kind == "info"]
    assert fax.state == "failed" and fax.error.startswith("unknown channel 'fax'")
    [entry] = _timeline_kinds(ctx, "b1", "message.failed")
    assert entry["detail"]["by"] == "due sweep" and entry["detail"]["reason"] == fax.error
    assert _parked("due sweep") == before + 1
    assert sweep_due(ctx.store, now=START + timedelta(minutes=1), lease_s=60, limit=100, batch=100) == []


def test_N1_N3_a_message_whose_dispatch_never_comes_back_is_set_aside_after_max_claims(ctx, email):
    """A message whose dispatch dies every time before its outcome is recorded (here: a worker
    that claims it and is gone) goes back to the due sweep with every lapsed lease. After
    `max_claims` claims the sweep fails it with the reason instead of handing it out again;
    another booking's message, claimed and sent meanwhile, is not touched."""
    from notifier.dispatch import dispatch_batch
    from notifier.services import max_claims, sweep_due

    _apply(ctx, [json.dumps(created("b-dies", cust=customer("c1"))), json.dumps(created("b-ok", cust=customer("c2")))])
    bound = max_claims(ctx.settings)
    now = START
    for claim in range(bound):
        batches = sweep_due(ctx.store, now=now, lease_s=60, limit=100, batch=100, max_claims=bound)
        ids = [i for _, part in batches for i in part]
        rows = {m.id: m for m in messages(ctx)}
        dying = [i for i in ids if rows[i].booking_id == "b-dies"]
        assert dying, f"claim {claim + 1}: handed out again"
        ctx.store.claim_batch_for_send(dying, now, lease_s=60)  # the worker takes it, and dies
        if claim == 0:
            assert dispatch_batch(ctx, [i for i in ids if i not in dying]).sent == 1
        now += timedelta(seconds=61)
    before = _parked("due sweep")
    assert sweep_due(ctx.store, now=now, lease_s=60, limit=100, batch=100, max_claims=bound) == []
    rows = {m.booking_id: m for m in messages(ctx) if m.kind == "info"}
    assert rows["b-dies"].state == "failed" and rows["b-dies"].attempts == bound
    assert rows["b-dies"].error == \
        f"set aside by the due sweep: claimed {bound} times or more without an outcome recorded"
    assert rows["b-ok"].state == "sent" and [o.metadata["booking_id"] for o in email.sent] == ["b-ok"]
    assert _timeline_kinds(ctx, "b-dies", "message.failed")[0]["detail"]["by"] == "due sweep"
    assert _parked("due sweep") == before + 1


def test_N3_a_booking_dispatch_cannot_read_fails_its_own_messages_and_the_batch_goes_out(ctx, email):
    """A stored row this version cannot read (a consent for a channel it does not know) used to
    fail the whole batch's load at every claim, every message of it going round for ever: now the
    load is split down to that booking, whose message fails at once with the reason."""
    _apply(ctx, [json.dumps(created(f"b{i}", cust=customer(f"c{i}"))) for i in range(4)])
    with ctx.store.engine.begin() as conn:
        conn.execute(update(t.customers).where(t.customers.c.id == "c2").values(consents=["email", "pigeon"]))
    before = _parked("dispatch")
    report = run_due(ctx)
    assert (report["sent"], report["failed"], report["retried"]) == (3, 1, 0)
    assert sorted(o.metadata["booking_id"] for o in email.sent) == ["b0", "b1", "b3"]
    [bad] = [m for m in messages(ctx) if m.booking_id == "b2" and m.kind == "info"]
    assert bad.state == "failed" and bad.attempts == 1
    assert bad.error == "its booking's data could not be read: ValueError: 'pigeon' is not a valid Channel"
    assert _timeline_kinds(ctx, "b2", "message.failed")[0]["detail"]["reason"] == bad.error
    assert _parked("dispatch") == before + 1


def test_N1_N3_a_message_whose_outcome_cannot_be_recorded_at_all_leaves_the_others_recorded(ctx, email, monkeypatch):
    """Not even the record without the provider's details goes in (here every record of b2 is
    refused): the chunk's other outcomes are still recorded, and b2's claim is left to lapse
    (handed out again in doubt, and set aside after `max_claims`), instead of the whole chunk
    being rolled back and every message of it left in doubt."""
    import notifier.dispatch as dispatch

    _apply(ctx, [json.dumps(created(f"b{i}", cust=customer(f"c{i}"))) for i in range(4)])
    real = dispatch._record_in

    def refusing(conn, outcomes, regions):
        if any(d.message.booking_id == "b2" for d in outcomes):
            raise DataError("UPDATE", {}, ValueError("a value the store refuses"))
        return real(conn, outcomes, regions)

    monkeypatch.setattr(dispatch, "_record_in", refusing)
    report = run_due(ctx)
    assert len(email.sent) == 4 and (report["sent"], report["lost"]) == (3, 1)
    rows = {m.booking_id: m for m in messages(ctx) if m.kind == "info"}
    assert all(rows[b].state == "sent" for b in ("b0", "b1", "b3"))
    assert rows["b2"].state == "sending"


def test_N3_housekeeping_dead_letters_a_held_event_that_cannot_be_applied_and_releases_the_others(ctx, monkeypatch):
    """Held events past `hold_s` are applied by housekeeping with the gap recorded; one whose
    application fails becomes a dead letter with the reason, and the others' are applied."""
    from notifier.domain import transitions as tr

    _apply(ctx, [json.dumps(created(b, cust=customer(f"c-{b}"))) for b in ("b-ok", "b-bad")])
    held = [event("booking.cancelled", {"booking_id": b, "by": "staff", "reason": "ill"}, revision=3)
            for b in ("b-ok", "b-bad")]
    assert _apply(ctx, [json.dumps(e) for e in held]).held == 2
    real = tr.apply_to_booking

    def failing(booking, ev_):
        if booking.id == "b-bad":
            raise OverflowError("date value out of range")
        return real(booking, ev_)

    monkeypatch.setattr(tr, "apply_to_booking", failing)
    report = housekeeping(ctx.store, now=START + timedelta(hours=1), hold_s=600, retention_s={}, batch=100)
    assert (report.holds_released, report.holds_dead) == (1, 1)
    with ctx.store.engine.connect() as conn:
        status = dict(conn.execute(select(t.bookings.c.id, t.bookings.c.status)).all())
    assert status == {"b-ok": "cancelled", "b-bad": "active"}
    [dead] = _dead(ctx)
    assert dead.reason == "held event could not be applied: internal error: OverflowError: date value out of range"
    assert json.loads(dead.body)["data"]["booking_id"] == "b-bad"
