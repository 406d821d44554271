"""Issue 3, acceptance 2 (N3): malformed and fuzzed payloads all end in the dead-letter store
with a reason, and the valid events around them are applied."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select

from notifier.services import apply_events
from notifier.store import schema as t
from tests.conftest import START, created, event

VALID = created("b-good")
CORPUS = [
    b"", b" ", b"null", b"[]", b"42", b'"booking.created"', b"{", b"\x00\xff\xfe", b"{}",
    b'{"type": "booking.created"}',
    b'{"type": "booking.exploded", "event_id": "x", "tenant_id": "salon-berlin"}',
    json.dumps({**VALID, "event_id": ""}).encode(),
    json.dumps({**VALID, "event_id": "a" * 500}).encode(),
    json.dumps({**VALID, "event_id": "../../etc/passwd"}).encode(),
    json.dumps({**VALID, "revision": 0}).encode(),
    json.dumps({**VALID, "revision": "1"}).encode(),
    json.dumps({**VALID, "schema_version": 99}).encode(),
    json.dumps({**VALID, "occurred_at": "yesterday"}).encode(),
    json.dumps({**VALID, "occurred_at": "2026-12-01T10:00:00"}).encode(),  # no offset
    json.dumps({**VALID, "tenant_id": "no-such-tenant", "event_id": "unknown-tenant"}).encode(),
    json.dumps({**VALID, "extra": 1}).encode(),
    json.dumps({**VALID, "data": {**VALID["data"], "ends_at": VALID["data"]["starts_at"]}}).encode(),
    json.dumps({**VALID, "data": {**VALID["data"], "customer": {"id": "c"}}}).encode(),
    json.dumps({**VALID, "data": {**VALID["data"], "resource": {"id": "r", "name": "x", "type": "robot"}}}).encode(),
    json.dumps(event("booking.status_changed", {"booking_id": "b-good", "status": {
        "id": "x", "name": "Abgesagt", "kind": "cancellation"}})).encode(),  # R34: no reason
    ("{" * 10_000).encode(),
]


def dead_letters(ctx):
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(t.dead_letters.c.reason, t.dead_letters.c.body)).all()


def test_every_corpus_entry_is_dead_lettered_with_a_reason_and_valid_events_still_apply(ctx):
    bodies = [json.dumps(created("b-first"))] + CORPUS + [json.dumps(created("b-last"))]
    report = apply_events(ctx.store, bodies, now=START, source="fuzz")
    assert report.applied == 2 and report.dead == len(CORPUS)
    dead = dead_letters(ctx)
    assert len(dead) == len(CORPUS) and all(d.reason.strip() for d in dead)
    # stored as text whatever they held: bytes that are not UTF-8 and NUL as U+FFFD (issue 15)
    assert sorted(d.body for d in dead) == sorted(b.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
                                                  for b in CORPUS)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def mutated_event():
    keys = st.sampled_from(sorted(VALID) + ["data.customer", "data.starts_at", "data.booking_id"])
    return st.tuples(keys, json_values).map(_mutate)


def _mutate(change):
    key, value = change
    body = json.loads(json.dumps(VALID))
    if key.startswith("data."):
        body["data"][key[5:]] = value
    else:
        body[key] = value
    body["event_id"] = "fuzz"
    return json.dumps(body).encode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()) | mutated_event(),
                min_size=1, max_size=5))
def test_fuzzed_bodies_never_stop_the_batch(ctx, junk):
    with ctx.store.transaction() as tx:
        for table in (t.timeline, t.messages, t.processed_events, t.held_events, t.dead_letters, t.bookings):
            tx.conn.execute(delete(table))
    report = apply_events(ctx.store, [*junk, json.dumps(created("b-after"))], now=START, source="fuzz")
    # every body is accounted for: applied (a mutation that is still valid), held, or dead with a reason
    assert report.applied + report.held + report.dead + report.duplicates + report.stale == len(junk) + 1
    assert all(reason.strip() for reason in report.dead_reasons)
    with ctx.store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.bookings).where(t.bookings.c.id == "b-after")) \
            .scalar_one() == 1
