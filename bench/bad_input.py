"""python -m bench.bad_input: bad input, counted (issue 9; N3, N4, N5, N6).

Generated and hand-written bad input against each surface that takes input from outside, with
what became of every piece of it:

- events: the consumer's `apply_events`, a corpus and hypothesis-generated bodies (random bytes,
  random JSON, valid events with one field replaced by random JSON), and the poison families of
  issue 15 (a NUL in each string field of the ten event types, a raw NUL byte, 1e30, NaN and
  Infinity in each numeric setting, unknown zones, unknown and mistyped settings, two addresses,
  CR/LF in a name), each
  followed in its batch by a valid event that must still apply (N3), on SQLite and on
  PostgreSQL (`--store`);
- the loops: rows as another version (or a hand) may have left them, which the contract refuses
  today (settings out of the model, unknown zones, channels, statuses; a message claimed
  `max_claims` times): the due sweep, dispatch and the state sweep must go on for the other
  bookings and tenants, and the booking at fault end with its reason (issue 15);
- tenant files: the same bad settings and zones in `config/tenants/*.yaml` must be refused by
  `load_tenants` naming the file and the key, loading nothing of that file;
- template bundles: the shipped bundle with one thing broken (syntax, unknown variables,
  templates that parse but fail when rendered, undecodable files, a broken manifest, links out
  of the folder) must be refused by `validate_bundle` with the reason; template injection
  payloads must be stopped by the sandbox (N6, R40);
- link tokens: tampered, truncated, spliced from two bookings' tokens, made with another secret,
  for another tenant, never recorded, replayed: GET and POST on the web app; none may act (N4);
- callback endpoints: Twilio and Meta status callbacks with forged or missing signatures and
  with malformed bodies, signed or not: forged ones are refused, none changes what it must not,
  none is a server error (N5); signed ones carrying another provider's message id are refused
  and move nothing (issue 15).

Prints a table (Markdown) and, last, one JSON line with the counts. Bugs found are listed with
an example input. Nothing runs on the network but loopback; the store is SQLite in a temporary
folder, and for the events also a scratch PostgreSQL database (NOTIFIER_TEST_PG, as the tests).
`--examples N` sets the hypothesis examples per generated family (default 500).
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

START = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
TENANT = "salon-berlin"
BUG = "BUG"  # outcomes starting with this are failures of a promise


@dataclass
class Tally:
    surface: str
    family: str
    tried: int = 0
    outcomes: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # outcome -> one input that had it

    def add(self, outcome: str, example: Any = None) -> None:
        self.tried += 1
        self.outcomes[outcome] += 1
        if outcome not in self.examples and example is not None:
            self.examples[outcome] = repr(example)[:300]

    @property
    def bugs(self) -> int:
        return sum(n for outcome, n in self.outcomes.items() if outcome.startswith(BUG))


def _hypothesis_run(strategy: Any, examples: int, seed: int, test: Callable[[Any], None]) -> None:
    """Run `test` on `examples` values drawn from `strategy` (no shrinking: nothing is asserted)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    @hypothesis_seed(seed)
    @settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(value: Any) -> None:
        test(value)

    run()


# --- events (N3) ----------------------------------------------------------------------------------------

def _valid_event(booking_id: str) -> dict[str, Any]:
    starts = START + timedelta(days=2, hours=3)
    return {"schema_version": 1, "event_id": f"ok-{booking_id}", "type": "booking.created",
            "occurred_at": START.isoformat(), "tenant_id": TENANT, "revision": 1,
            "data": {"booking_id": booking_id, "starts_at": starts.isoformat(),
                     "ends_at": (starts + timedelta(minutes=30)).isoformat(),
                     "customer": {"id": f"c-{booking_id}", "name": "Erika Mustermann", "language": "de",
                                  "email": "erika@example.org", "consents": {"email": True},
                                  "privacy_accepted": True},
                     "resource": {"id": "anna", "name": "Anna Weber", "type": "specialist"}}}


def event_corpus() -> list[bytes]:
    """Hand-written bad events: broken JSON, wrong types, each field missing, injection strings."""
    valid = _valid_event("corpus")
    out = [b"", b" ", b"null", b"[]", b"42", b'"booking.created"', b"{", b"}", b"\x00\xff\xfe", b"{}",
           b"\xef\xbb\xbf" + json.dumps(valid).encode(),  # a byte-order mark
           ("[" * 5000 + "]" * 5000).encode(), ("{" * 10_000).encode(), b'{"a":' * 3000,
           json.dumps({**valid, "type": "booking.exploded"}).encode(),
           json.dumps([valid, valid]).encode()]
    text = json.dumps(valid)
    out += [text[:n].encode() for n in range(1, len(text), max(1, len(text) // 25))]  # truncated
    for key in valid:  # each top-level field missing, or of the wrong type
        out.append(json.dumps({k: v for k, v in valid.items() if k != key}).encode())
        for wrong in (None, 0, -1, 2**63, "", "x" * 10_000, [], {}, True, 1.5):
            out.append(json.dumps({**valid, key: wrong}).encode())
    for key in valid["data"]:
        out.append(json.dumps({**valid, "data": {k: v for k, v in valid["data"].items() if k != key}}).encode())
        for wrong in (None, 0, "", [], {}, "2026-13-45T25:61:00Z"):
            out.append(json.dumps({**valid, "data": {**valid["data"], key: wrong}}).encode())
    for evil in ("'; DROP TABLE bookings; --", "../../etc/passwd", "\u0000", "\ud800", "<script>", "%s%s%n",
                 "a" * 129, "\u202e"):
        out.append(json.dumps({**valid, "event_id": evil}).encode())
        out.append(json.dumps({**valid, "tenant_id": evil}).encode())
        out.append(json.dumps({**valid, "data": {**valid["data"], "booking_id": evil}}).encode())
    return out


def _json_values():
    from hypothesis import strategies as st

    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=20)


def _event_bodies():
    from hypothesis import strategies as st

    valid = _valid_event("gen")
    paths = [(k,) for k in valid] + [("data", k) for k in valid["data"]] + \
        [("data", "customer", k) for k in valid["data"]["customer"]]

    def mutate(change: tuple[tuple[str, ...], Any]) -> bytes:
        path, value = change
        body = json.loads(json.dumps(valid))
        target = body
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return json.dumps(body, allow_nan=True).encode()

    return (st.binary(max_size=300)
            | _json_values().map(lambda v: json.dumps(v, allow_nan=True).encode())
            | st.tuples(st.sampled_from(paths), _json_values()).map(mutate)
            | st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))


def string_paths(doc: Any, path: tuple = ()) -> list[tuple]:
    """The key path of every string in a JSON document."""
    if isinstance(doc, dict):
        return [p for key, value in doc.items() for p in string_paths(value, (*path, key))]
    return [path] if isinstance(doc, str) else []


def replaced(doc: dict, path: tuple, value: Any) -> dict:
    """A copy of a JSON document with the value at `path` replaced."""
    out = json.loads(json.dumps(doc))
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


def numeric_settings() -> list[tuple[str, str]]:
    """(section, key) of every numeric notification setting."""
    from notifier.domain.model import SECTIONS

    return [(name, key) for name, section in SECTIONS.items() for key, info in section.model_fields.items()
            if isinstance(info.default, int) and not isinstance(info.default, bool)]


BAD_SETTINGS = [{"info": {"delay": 600}}, {"info": {"delay_s": "ten"}}, {"info": {"delay_s": -5}},
                {"confirmation": {"repetitions": 10**9}}, {"info": {"enabled": "yes"}},
                {"info": {"channels": ["pigeon"]}}, {"unavailable": ["sms"]}, {"nonsense": {}}]


def poison_events() -> list[bytes]:
    """Issue 15's families, each a body the store must not take and the batch must survive."""
    valid = _valid_event("poison")
    valid["data"]["service"] = "Massage"
    shapes = [valid,
              {**valid, "type": "booking.cancelled", "data": {"booking_id": "p", "by": "staff", "reason": "ill"}},
              {**valid, "type": "booking.status_changed", "data": {"booking_id": "p", "reason": "ill", "status": {
                  "id": "s", "name": "Abgesagt", "kind": "cancellation"}}},
              {**valid, "type": "tenant.settings_updated", "data": {"name": "Salon", "timezone": "Europe/Berlin",
                                                                    "company": {"name": "Salon"}}},
              {**valid, "type": "resource.updated", "data": {"resource": {"id": "anna", "name": "Anna"},
                                                             "timezone": "Europe/Berlin"}},
              {**valid, "type": "booking.rescheduled", "data": {
                  "booking_id": "p", "starts_at": valid["data"]["starts_at"], "ends_at": valid["data"]["ends_at"],
                  "resource": {"id": "anna", "name": "Anna", "type": "specialist"}}},
              {**valid, "type": "booking.visit_marked", "data": {"booking_id": "p", "outcome": "arrived"}},
              {**valid, "type": "booking.confirmed", "data": {"booking_id": "p", "via": "phone"}},
              {**valid, "type": "customer.updated", "data": {"customer": valid["data"]["customer"]}}]
    valid["data"].update(source="staff", status={"id": "s1", "name": "Neu", "kind": "start"})
    shapes[3]["data"].update(home_region="DE", language="de")
    shapes[3]["data"]["company"].update(address="Linienstr. 1", phone="+49 30 1234", email="info@example.org")
    shapes[4]["data"]["settings"] = {"channel_policy": "first", "fallback": {"whatsapp": "sms"},
                                     "quiet_hours": {"start": "21:00", "end": "08:00"},
                                     "reminder": {"morning_at": "08:00", "channel_policy": "first"}}
    out = [json.dumps(replaced(shape, path, nul)).encode()  # NUL (and CR/LF, a lone surrogate) in each string
           for shape in shapes for path in string_paths(shape) for nul in ("X\u0000Y", "X\r\nY", "X\ud800Y")]
    out += [b'{"event_id": "raw\x00", "type": "booking.created"}', json.dumps(valid).encode()[:-1] + b"\x00}"]
    resource = {**shapes[4], "data": {k: v for k, v in shapes[4]["data"].items() if k != "settings"}}
    for name, key in numeric_settings():
        for number in ("1e30", "1e400", "NaN", "Infinity", "-2", "2.5"):
            body = json.dumps(replaced(resource, ("data", "settings"), {name: {key: 0}})).encode()
            out.append(body.replace(b'"' + key.encode() + b'": 0', b'"' + key.encode() + b'": ' + number.encode()))
            tenant = json.dumps(replaced(shapes[3], ("data", "settings"), {name: {key: 0}})).encode()
            out.append(tenant.replace(b'"' + key.encode() + b'": 0', b'"' + key.encode() + b'": ' + number.encode()))
    for settings in BAD_SETTINGS:
        out.append(json.dumps(replaced(resource, ("data", "settings"), settings)).encode())
        out.append(json.dumps(replaced(shapes[3], ("data", "settings"), settings)).encode())
    for zone in ("Mars/Olympus", "Invalid/Zone", "", "../../etc/localtime", "Europe/Berlin\u0000"):
        out.append(json.dumps(replaced(resource, ("data", "timezone"), zone)).encode())
        out.append(json.dumps(replaced(shapes[3], ("data", "timezone"), zone)).encode())
    for email in ("a@example.org, victim@example.com", "a@example.org\r\nBcc: v@example.com",
                  "Erika <a@example.org>", "a@b", "a@example.org;v@example.com"):
        out.append(json.dumps(replaced(valid, ("data", "customer", "email"), email)).encode())
    return out


def fuzz_events(folder: Path, examples: int, seed: int, *, store_url: str, label: str) -> list[Tally]:
    from notifier.services import apply_events, load_tenants
    from notifier.settings import shipped_path
    from notifier.store.sql import Store, make_engine

    store = Store(make_engine(store_url))
    store.migrate()
    load_tenants(store, shipped_path("config") / "tenants", now=START)
    counter = iter(range(10**9))

    def one(tally: Tally, body: bytes) -> None:
        n = next(counter)
        sentinel = json.dumps(_valid_event(f"after-{n}"))
        try:
            report = apply_events(store, [body, sentinel], now=START, source="fuzz")
        except Exception as exc:  # noqa: BLE001 - counted: the batch was stopped
            tally.add(f"{BUG}: the batch raised {exc.__class__.__name__}", body)
            return
        if report.applied + report.held + report.stale + report.duplicates + report.dead != 2:
            tally.add(f"{BUG}: not accounted for", body)
        elif report.applied < 1:
            tally.add(f"{BUG}: the valid event after it was not applied", body)
        elif report.dead:
            reason = report.dead_reasons[0]
            if reason.startswith("internal error"):
                tally.add(f"{BUG}: dead-lettered as an internal error", (body, reason))
            elif reason.startswith("refused by the database"):  # isolated, but the contract let it through
                tally.add(f"{BUG}: refused by the database, not by the contract", (body, reason))
            else:
                tally.add("dead letter: " + ("invalid event" if reason.startswith("invalid event")
                                             else reason.split(" '", 1)[0]), body)
        elif report.applied == 2:
            tally.add("applied (still a valid event)", body)
        elif report.held:
            tally.add("held for its predecessor", body)
        else:
            tally.add("stale or duplicate (ignored, recorded)", body)

    corpus = Tally("events", f"corpus (hand-written), {label}")
    for body in event_corpus():
        one(corpus, body)
    poison = Tally("events", f"issue 15 poison families, {label}")
    for body in poison_events():
        one(poison, body)
    generated = Tally("events", f"hypothesis (bytes, JSON, one field replaced), {label}")
    _hypothesis_run(_event_bodies(), examples, seed, lambda body: one(generated, body))
    store.engine.dispose()
    return [corpus, poison, generated]


# --- the loops (issue 15): rows as another version, or a hand, may have left them ------------------

def _legacy_rows() -> list[tuple[str, Callable[..., None]]]:
    """(what, change) each: `change(conn, victim)` leaves one booking's stored rows as the
    contract would refuse them today; victim: (tenant, booking, customer, resource) ids."""
    from sqlalchemy import update

    from notifier.services import max_claims
    from notifier.store import schema as t

    def resource(**values: Any) -> Callable[..., None]:
        return lambda conn, v, settings: conn.execute(update(t.resources).where(
            t.resources.c.tenant_id == v[0], t.resources.c.id == v[3]).values(**values))

    def messages(**values: Any) -> Callable[..., None]:
        return lambda conn, v, settings: conn.execute(update(t.messages).where(
            t.messages.c.tenant_id == v[0], t.messages.c.booking_id == v[1], t.messages.c.kind == "info")
            .values(**{k: (f(settings) if callable(f) else f) for k, f in values.items()}))

    def tenant(**values: Any) -> Callable[..., None]:
        return lambda conn, v, settings: conn.execute(update(t.tenants).where(t.tenants.c.id == v[0]).values(**values))

    return [
        ("a resource's late.delay_s of 1e30", resource(settings={"late": {"delay_s": 10**30}})),
        ("a resource's info.delay_s of \"ten\"", resource(settings={"info": {"delay_s": "ten"}})),
        ("a resource's unknown setting", resource(settings={"info": {"delay": 600}})),
        ("a resource in Mars/Olympus", resource(timezone="Mars/Olympus")),
        ("a tenant in Invalid/Zone", tenant(timezone="Invalid/Zone")),
        ("a tenant's reminder.offset_s of -10^12", tenant(settings={"reminder": {"offset_s": -10**12}})),
        ("a consent for an unknown channel", lambda conn, v, settings: conn.execute(update(t.customers).where(
            t.customers.c.tenant_id == v[0], t.customers.c.id == v[2]).values(consents=["email", "pigeon"]))),
        ("an unknown booking status", lambda conn, v, settings: conn.execute(update(t.bookings).where(
            t.bookings.c.tenant_id == v[0], t.bookings.c.id == v[1]).values(status="archived"))),
        ("a message on an unknown channel", messages(channel="fax")),
        ("a message claimed max_claims times, never recorded",
         messages(state="sending", attempts=max_claims, lease_until=START)),
    ]


def fuzz_loops(folder: Path, store_url: str, label: str) -> list[Tally]:
    """Per legacy row: a booking whose row it is and two others (one per tenant) whose info is due,
    then the due sweep with dispatch, and the state sweep hours later. The others must be sent and
    released (else BUG); the booking at fault must end with its reason: its message failed or
    retried with it, the booking parked with it, or (the row still works) sent and released."""
    from sqlalchemy import select

    from notifier.bootstrap import build
    from notifier.channels.fake import FakeChannel
    from notifier.dispatch import dispatch_batch
    from notifier.domain.model import Channel
    from notifier.services import apply_events, load_tenants, max_claims, sweep_due, sweep_states, timeline_of
    from notifier.settings import load_settings, shipped_path
    from notifier.store import schema as t

    data = folder / f"loops-{label}"
    tenants = data / "tenants"
    tenants.mkdir(parents=True)
    for source in (shipped_path("config") / "tenants").glob("*.yaml"):
        shutil.copy(source, tenants / source.name)
    cases = _legacy_rows()
    for day in range(len(cases)):  # a tenant of its own for each row: a tenant's row spoils only its own
        (tenants / f"legacy-{day}.yaml").write_text((tenants / "studio-roma.yaml").read_text().replace(
            "id: studio-roma", f"id: legacy-{day}"))
    (data / "clock").write_text(START.isoformat())
    settings = load_settings({"NOTIFIER_DATABASE_URL": store_url, "NOTIFIER_DATA_DIR": str(data),
                              "NOTIFIER_TENANTS_PATH": str(tenants), "NOTIFIER_CLOCK": f"file:{data / 'clock'}",
                              "NOTIFIER_LINK_SECRET": "bad-input-link-secret-0123456789"})
    mail = FakeChannel("email")
    ctx = build(settings, channels={Channel.EMAIL: mail})
    ctx.store.migrate()
    load_tenants(ctx.store, tenants, now=START)
    tally = Tally("loops", f"issue 15: rows the contract refuses today, {label}")
    for day, (what, change) in enumerate(cases):
        base = START + timedelta(days=day)
        ctx.clock.set(base)
        ids = {"victim": (f"legacy-{day}", f"v{day}", f"cv{day}", f"rv{day}")}
        ids.update({f"other-{tenant}": (tenant, f"o{day}-{tenant}", f"co{day}-{tenant}", f"ro{day}")
                    for tenant in ("salon-berlin", "studio-roma")})
        bodies = []
        for tenant, booking, customer, resource in ids.values():
            body = _valid_event(booking)
            visit = base + timedelta(hours=3)
            body.update(tenant_id=tenant, event_id=f"loop-{booking}", occurred_at=base.isoformat())
            body["data"].update(starts_at=visit.isoformat(), ends_at=(visit + timedelta(minutes=30)).isoformat())
            body["data"]["customer"]["id"] = customer
            body["data"]["resource"]["id"] = resource
            bodies.append(json.dumps(body))
        applied = apply_events(ctx.store, bodies, now=base, source="loops")
        if applied.applied != len(bodies):  # the setting up, not the loops: said as it is
            tally.add(f"{BUG}: the bookings were not applied ({applied.dead_reasons or applied.deferred})", what)
            continue
        with ctx.store.engine.begin() as conn:
            change(conn, ids["victim"], settings)
        raised = []
        due = base + timedelta(hours=1)  # 08:00 local: after quiet hours
        ctx.clock.set(due)
        try:
            for _channel, batch in sweep_due(ctx.store, now=due, lease_s=3600, limit=10_000, batch=100,
                                            max_claims=max_claims(settings)):
                dispatch_batch(ctx, batch)
        except Exception as exc:  # noqa: BLE001 - counted
            raised.append(f"{BUG}: the due sweep or dispatch raised {exc.__class__.__name__}")
        later = base + timedelta(hours=6)  # after the late path's release
        try:
            while sweep_states(ctx.store, now=later, limit=50):
                pass
        except Exception as exc:  # noqa: BLE001 - counted
            raised.append(f"{BUG}: the state sweep raised {exc.__class__.__name__}")
        with ctx.store.engine.connect() as conn:
            infos = {r.booking_id: r for r in conn.execute(select(t.messages).where(
                t.messages.c.kind == "info", t.messages.c.booking_id.in_([v[1] for v in ids.values()])))}
            released = dict(conn.execute(select(t.bookings.c.id, t.bookings.c.released_at).where(
                t.bookings.c.id.in_([v[1] for v in ids.values()]))).all())
        others = [v for k, v in ids.items() if k != "victim"]
        if raised:
            tally.add(raised[0], what)
        elif any(v[1] not in infos or infos[v[1]].state != "sent" for v in others):
            tally.add(f"{BUG}: another booking's message was not sent", (what, {
                v[1]: (infos[v[1]].state, infos[v[1]].error) if v[1] in infos else None for v in others}))
        elif any(released[v[1]] is None for v in others):
            tally.add(f"{BUG}: another booking was not released", what)
        else:
            tenant_id, booking = ids["victim"][:2]
            info = infos.get(booking)
            parked = [e for e in timeline_of(ctx.store, tenant_id, booking) if e["kind"] == "booking.parked"]
            if info is not None and info.state == "failed" and info.error:
                fate = f"message failed with the reason ({info.error.split(':')[0]})"
            elif info is not None and info.state == "planned" and info.error:
                fate = f"message retried with the reason ({info.error.split(':')[0]})"
            elif info is not None and info.state == "sent" or info is None and not parked:
                fate = "still works: sent or nothing to send"
            else:
                fate = f"{BUG}: left without a reason ({info.state if info else 'no message'})"
            if parked:
                fate += "; booking parked with the reason"
            elif released.get(booking) is not None:
                fate += "; released"
            tally.add(fate, what)
    ctx.close()
    return [tally]


def fuzz_tenant_files(folder: Path, examples: int, seed: int) -> list[Tally]:
    """Bad settings and zones in a tenant file: refused naming file and key; nothing of it loaded."""
    import yaml

    from notifier.services import TenantFilesInvalid, load_tenants
    from notifier.store.sql import Store, make_engine

    store = Store(make_engine(f"sqlite:///{folder / 'tenant-files.db'}"))
    store.migrate()
    tally = Tally("tenant files", "bad settings, numbers and zones in config/tenants/*.yaml")
    cases: list[tuple[dict, str]] = [({"settings": {name: {key: value}}}, f"settings.{name}.{key}")
                                     for name, key in numeric_settings() for value in (1e30, float("nan"), -2, "ten")]
    cases += [({"settings": bad}, "settings.") for bad in BAD_SETTINGS]
    cases += [({"timezone": zone}, "timezone") for zone in ("Mars/Olympus", "Invalid/Zone")]
    cases += [({"resources": [{"id": "r", "name": "R", "timezone": "Mars/Olympus"}]}, "resources.0.timezone"),
              ({"resources": [{"id": "r", "name": "R", "settings": {"late": {"delay_s": 1e30}}}]},
               "resources.0.settings.late.delay_s"),
              ({"company": {"name": "Salon\r\nX"}}, "company.name"), ({"channels": ["pigeon"]}, "channels.0")]
    for number, (change, key) in enumerate(cases):
        files = folder / f"tenant-files-{number}"
        files.mkdir()
        path = files / "bad.yaml"
        path.write_text(yaml.safe_dump({"id": f"bad-{number}", "name": "Bad", **change}))
        try:
            load_tenants(store, files, now=START)
        except TenantFilesInvalid as exc:
            named = all(p.startswith(f"{path}: ") for p in exc.problems) and any(key in p for p in exc.problems)
            with store.transaction() as tx:
                loaded = tx.tenant(f"bad-{number}") is not None
            tally.add("refused naming file, key and reason; nothing loaded" if named and not loaded
                      else f"{BUG}: refused without naming {key}, or loaded", (change, exc.problems))
        except Exception as exc:  # noqa: BLE001 - counted
            tally.add(f"{BUG}: load_tenants raised {exc.__class__.__name__}", change)
        else:
            tally.add(f"{BUG}: loaded", change)
    store.engine.dispose()
    return [tally]


# --- template bundles (N3, N6, R40) ---------------------------------------------------------------------

SANDBOX_PAYLOADS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__.__base__.__subclasses__() }}",
    "{{ customer.__class__.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__.os }}",
    "{{ namespace.__init__.__globals__.os }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ lipsum.__globals__.__builtins__.open('/etc/passwd').read() }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__init__.__globals__ }}",
    "{{ range.__self__ }}",
    "{{ ''|attr('__class__') }}",
    "{{ ''|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ customer|attr('__class__')|attr('__mro__') }}",
    "{{ '{0.__class__.__mro__}'.format(customer) }}",
    "{{ '{0.__init__.__globals__}'.format(cycler) }}",
    "{{ '%s'|format(customer.__class__) }}",
    "{{ customer.items.__self__.__class__ }}",
    "{{ booking.starts_at.__class__.__mro__ }}",
    "{{ booking.starts_at.astimezone.__self__.__class__ }}",
    "{% set x = customer.update({'name': 'pwned'}) %}{{ x }}",
    "{% set x = customer.pop('name') %}{{ x }}",
    "{{ customer.clear() }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ config }}", "{{ request }}", "{{ settings }}", "{{ self }}",
    "{{ links.confirm.__class__.__mro__ }}",
    "{% import 'os' as os %}{{ os }}",
    "{% include '../../../../etc/passwd' %}",
    "{% include '/etc/passwd' %}",
    "{% extends '../notifier.toml' %}",
]
# parse fine, fail when rendered: validation must report them, not the first send (N3)
RUNTIME_FAILURES = [
    "{{ 1 / 0 }}", "{{ booking.duration_min // 0 }}", "{{ links.confirm[10000] }}",
    "{{ booking.starts_at|date('xxxxx-invalid-pattern-{') }}", "{{ customer.name|int + booking }}",
    "{% include 'missing/template.j2' %}", "{{ booking.starts_at|date(none) }}",
    "{{ booking.starts_at + 1 }}", "{{ customer.name.nonexistent_method() }}", "{{ [][0] }}",
]
SYNTAX_BREAKERS = ["{%", "{{", "{% if %}", "{% endblock %}", "{{ customer.name", "{% for x in %}",
                   "{% block text %}", "{{ |upper }}", "{# unclosed", "{% raw %}", "{% endif %}"]
UNKNOWN_NAMES = ["{{ customer.password }}", "{{ booking.price }}", "{{ secrets }}", "{{ settings.link_secret }}",
                 "{{ tenant.webhook_secret }}", "{{ env }}", "{{ customer.phone }}", "{{ customer.email }}"]
MANIFESTS = [
    "whatsapp: [", "- a\n- b\n", "42", "whatsapp: 42", "whatsapp:\n  info: 7",
    "whatsapp:\n  info:\n    template: x\n    param_count: many\n    params: [a]\n    languages: {de: de}",
    "whatsapp:\n  info:\n    template: x\n    param_count: 1\n    params: 5\n    languages: {de: de}",
    "whatsapp:\n  info:\n    template: x\n    param_count: 1\n    params: ['__import__(\"os\")']\n    languages: x",
    "whatsapp:\n  nonsense_kind:\n    template: x\n    param_count: 0\n    params: []",
    "\x00\x01binary", "!!python/object/apply:os.system ['id']",
]


def _error_for(problems: list[Any], name: str | None = None) -> bool:
    return any(p.severity == "error" and (name is None or p.file == name or p.file.endswith(name))
               for p in problems)


def fuzz_bundles(folder: Path, examples: int, seed: int) -> list[Tally]:
    from jinja2.exceptions import SecurityError, TemplateError, UndefinedError

    from notifier.domain.model import Tenant
    from notifier.rendering.bundles import validate_bundle
    from notifier.rendering.environment import Renderer
    from notifier.settings import shipped_path

    rng = random.Random(seed)
    base = folder / "bundle"
    shutil.copytree(shipped_path("templates"), base)
    tenant = Tenant(id="t", name="T", company={"name": "Salon", "address": "Str. 1", "phone": "+49 30 1"})
    files = sorted(p for p in base.rglob("*.j2"))
    emails = [p for p in files if p.name.endswith(".email.j2")]
    sms = [p for p in files if p.name.endswith(".sms.j2")]

    def validated(tally: Tally, change: Callable[[], Path | None], example: str, *, name: str | None = None,
                  runtime: bool = False) -> None:
        """Apply `change` (returns the file it broke), validate, restore the bundle."""
        saved = {p: p.read_bytes() for p in base.rglob("*") if p.is_file() and not p.is_symlink()}
        manifest_before = (base / "bundle.yaml").read_bytes()
        try:
            broken = change()
            try:
                problems = validate_bundle(base, tenants=[tenant])
            except Exception as exc:  # noqa: BLE001 - counted: the validator itself failed
                tally.add(f"{BUG}: validate_bundle raised {exc.__class__.__name__}", example)
                return
            target = name or (str(broken.relative_to(base)) if broken else None)
            if _error_for(problems, target):
                tally.add("refused at validation, with file and reason", example)
            elif _error_for(problems):
                tally.add("refused at validation (reported elsewhere in the bundle)", example)
            elif runtime:
                tally.add(f"{BUG}: passed validation, fails at send time", example)
            else:
                tally.add(f"{BUG}: accepted", example)
        finally:
            for p in list(base.rglob("*")):
                if p.is_symlink() or (p.is_file() and p not in saved):
                    p.unlink()
            for p, data in saved.items():
                if not p.exists() or p.read_bytes() != data:
                    p.write_bytes(data)
            (base / "bundle.yaml").write_bytes(manifest_before)

    def insert(path: Path, snippet: str) -> Path:
        text = path.read_text(encoding="utf-8")
        at = text.find("{% block text %}")
        at = at + len("{% block text %}") if at >= 0 and rng.random() < 0.7 else rng.randrange(len(text) + 1)
        path.write_text(text[:at] + snippet + text[at:], encoding="utf-8")
        return path

    syntax = Tally("templates", "syntax broken at a random place")
    for _ in range(examples // 5):
        path, snippet = rng.choice(files), rng.choice(SYNTAX_BREAKERS)
        validated(syntax, lambda p=path, s=snippet: insert(p, s), f"{path.relative_to(base)}: {snippet}")
    unknown = Tally("templates", "unknown variables (secrets, personal data)")
    for snippet in UNKNOWN_NAMES:
        for path in (rng.choice(emails), rng.choice(sms)):
            validated(unknown, lambda p=path, s=snippet: insert(p, s), f"{path.relative_to(base)}: {snippet}")
    runtime = Tally("templates", "parse, but fail when rendered")
    for snippet in RUNTIME_FAILURES:
        for path in (rng.choice(emails), rng.choice(sms)):
            validated(runtime, lambda p=path, s=snippet: insert(p, s), f"{path.relative_to(base)}: {snippet}",
                      runtime=True)
    files_tally = Tally("templates", "files: undecodable, empty, huge, links out of the folder, none")

    def undecodable() -> Path:
        p = rng.choice(files)
        p.write_bytes(b"{% block text %}\xff\xfe\x00 caf\xe9 {% endblock %}")
        return p

    def emptied() -> Path:
        p = rng.choice(files)
        p.write_text("", encoding="utf-8")
        return p

    def huge() -> Path:
        p = rng.choice(sms)
        p.write_text("{% block text %}" + "x" * 1_000_000 + "{% endblock %}", encoding="utf-8")
        return p

    outside = folder / "outside.email.j2"  # a well-formed template elsewhere on the machine
    outside.write_text((base / "default" / "de" / "change.email.j2").read_text(encoding="utf-8"), encoding="utf-8")

    def link_out() -> Path:
        p = base / "default" / "de" / "leak.email.j2"
        p.symlink_to(outside)
        return p

    def all_gone() -> None:
        for p in files:
            p.rename(p.with_suffix(".bak"))

    for make, label in ((undecodable, "a template that is not UTF-8"), (emptied, "an empty template"),
                        (huge, "a 1 MB SMS"), (link_out, "a template that is a link out of the folder")):
        for _ in range(3):
            validated(files_tally, make, label)
    validated(files_tally, all_gone, "no templates at all")
    manifest = Tally("templates", "bundle.yaml broken (YAML, types, unknown kinds, tags)")
    for text in MANIFESTS:
        validated(manifest, lambda t=text: (base / "bundle.yaml").write_text(t, encoding="utf-8") and None,
                  f"bundle.yaml: {text[:60]}", name="bundle.yaml")

    sandbox = Tally("templates", "template injection (N6), rendered in the sandbox")
    context = {"customer": {"name": "Erika Mustermann", "first_name": "Erika", "language": "de"},
               "company": {"name": "Salon"}, "resource": {"name": "Anna", "type": "specialist"},
               "links": {"confirm": "https://x/l/c", "cancel": "https://x/l/x"},
               "booking": {"id": "b1", "starts_at": START, "ends_at": START, "service": "", "duration_min": 30,
                           "cancel_reason": "", "cancelled_by": "", "status": ""}}
    for payload in SANDBOX_PAYLOADS:
        renderer = Renderer(files={"default/de/info.email.j2": "{% block subject %}s{% endblock %}"
                                                               "{% block text %}" + payload + "{% endblock %}"})
        before = json.dumps(context, default=str)
        try:
            out = renderer.render("info", "email", "specialist", ("de",), context, timezone="Europe/Berlin",
                                  locale="de")
        except (SecurityError, UndefinedError):
            sandbox.add("stopped by the sandbox (SecurityError / undefined)", payload)
            continue
        except TemplateError as exc:
            sandbox.add(f"stopped: {exc.__class__.__name__}", payload)
            continue
        except Exception as exc:  # noqa: BLE001 - also a stop, but say which
            sandbox.add(f"stopped: {exc.__class__.__name__}", payload)
            continue
        leaked = any(word in out.text for word in ("<class", "<module", "__", "root:", "popen", "function"))
        changed = json.dumps(context, default=str) != before
        sandbox.add(f"{BUG}: escaped" if leaked or changed else "rendered harmlessly", (payload, out.text[:80]))
    return [syntax, unknown, runtime, files_tally, manifest, sandbox]


# --- link tokens (N4) ----------------------------------------------------------------------------------

def _web_context(folder: Path, name: str):
    from notifier.bootstrap import build
    from notifier.services import apply_events, load_tenants
    from notifier.settings import load_settings

    data = folder / name
    data.mkdir()
    (data / "clock").write_text(START.isoformat())
    settings = load_settings({"NOTIFIER_DATABASE_URL": f"sqlite:///{data / 'notifier.db'}",
                              "NOTIFIER_DATA_DIR": str(data), "NOTIFIER_CLOCK": f"file:{data / 'clock'}",
                              "NOTIFIER_LINK_SECRET": "bad-input-link-secret-0123456789",
                              "NOTIFIER_PUBLIC_URL": "https://notifier.example.org",
                              "NOTIFIER_TWILIO_AUTH_TOKEN": "twilio-token", "NOTIFIER_META_APP_SECRET": "meta-secret"})
    ctx = build(settings, channels={})
    ctx.store.migrate()
    load_tenants(ctx.store, settings.tenants_dir, now=START)
    events = [json.dumps({**_valid_event(b), "event_id": f"e-{b}"}) for b in ("b1", "b2")]
    apply_events(ctx.store, events, now=START, source="fuzz")
    return ctx


def _booking_states(ctx) -> dict[str, tuple]:
    from sqlalchemy import select

    from notifier.store import schema as t

    b = t.bookings.c
    with ctx.store.engine.connect() as conn:
        return {r.id: (r.status, r.confirmed_at) for r in conn.execute(select(b.id, b.status, b.confirmed_at))}


def fuzz_links(folder: Path, examples: int, seed: int) -> list[Tally]:
    from fastapi.testclient import TestClient
    from hypothesis import strategies as st

    from notifier.links import ALPHABET, BookingLinks
    from notifier.web.app import create_app

    ctx = _web_context(folder, "links")
    client = TestClient(create_app(ctx), follow_redirects=False)
    starts = (START + timedelta(days=2, hours=3)).isoformat()
    good = {b: ctx.links.token(TENANT, b) for b in ("b1", "b2")}
    with ctx.store.transaction() as tx:  # as dispatch records them before the first message leaves
        tx.save_links([(token, TENANT, b) for b, token in good.items()], START)
    before = _booking_states(ctx)

    def attempt(tally: Tally, token: str) -> None:
        """A token nobody was given must lead nowhere: every GET and POST refused, nothing changed."""
        if token in good.values():
            tally.add("a genuine token, reached by chance: not a forgery", token)
            return
        answers = [client.get(f"/l/{token}"), client.get(f"/l/{token}/calendar.ics")]
        answers += [client.post(f"/l/{token}/{action}", data={"visit": starts}) for action in ("confirm", "cancel")]
        codes = sorted({a.status_code for a in answers})
        if any(code >= 500 for code in codes):
            tally.add(f"{BUG}: server error", token)
        elif _booking_states(ctx) != before:
            tally.add(f"{BUG}: changed a booking", token)
        elif any(200 <= code < 400 for code in codes):
            tally.add(f"{BUG}: answered {codes}", token)
        else:
            tally.add(f"refused: {', '.join(map(str, codes))} (the page says the link is not valid)", token)

    def mutate(change: tuple[str, int, str, int]) -> str:
        op, index, text, other = change
        token = good["b1"]
        if op == "flip":
            i = index % len(token)
            return token[:i] + (text[:1] or "A") + token[i + 1:]
        if op == "truncate":
            return token[:index % len(token)]
        if op == "append":
            return token + text
        if op == "splice":  # the front of b1's token and the back of b2's
            k = index % len(token)
            return token[:k] + good["b2"][k:]
        return text  # anything at all

    tampered = Tally("links", "tampered, truncated, spliced, random")
    tokens = st.tuples(st.sampled_from(["flip", "truncate", "append", "splice", "random"]), st.integers(0, 500),
                       st.text(alphabet=ALPHABET + "-_.%", max_size=40), st.integers(0, 3)).map(mutate)
    _hypothesis_run(tokens.filter(lambda s: s and s not in (".", "..")), examples, seed,
                    lambda token: attempt(tampered, token))

    other = Tally("links", "another install's secret, another tenant, never recorded; a genuine one used")
    wrong = BookingLinks("another-secret-of-some-other-install", "https://x")
    for b in ("b1", "b2"):
        attempt(other, wrong.token(TENANT, b))
        attempt(other, ctx.links.token("studio-roma", b))  # ours, for a tenant that has no such booking
        attempt(other, ctx.links.token(TENANT, f"{b}-never-sent"))  # ours, never recorded
    # a genuine link acts on its own booking once, and its confirm cannot undo its cancel
    answer = client.post(f"/l/{good['b2']}/cancel", data={"visit": starts})
    states = _booking_states(ctx)
    other.add("genuine b2 link, cancel: cancels b2 and nothing else" if answer.status_code == 303
              and states["b2"][0] == "cancelled" and states["b1"] == before["b1"]
              else f"{BUG}: the genuine link did not do exactly its action", "b2 cancel")
    replay = client.post(f"/l/{good['b2']}/cancel", data={"visit": starts})
    other.add("replayed: says it is done, changes nothing" if replay.status_code == 303
              and _booking_states(ctx) == states else f"{BUG}: replay changed something", "b2 cancel again")
    confirm_after = client.post(f"/l/{good['b2']}/confirm", data={"visit": starts})
    other.add("b2 confirm after the cancel: refused, does not revive it"
              if _booking_states(ctx)["b2"][0] == "cancelled" and confirm_after.status_code == 409
              else f"{BUG}: a confirm revived a cancelled booking", "b2 confirm after cancel")
    ctx.close()
    return [tampered, other]


# --- callback endpoints (N5) ------------------------------------------------------------------------------

def fuzz_callbacks(folder: Path, examples: int, seed: int) -> list[Tally]:
    from fastapi.testclient import TestClient
    from hypothesis import strategies as st
    from sqlalchemy import select, update

    from notifier.store import schema as t
    from notifier.web.app import create_app, meta_signature, twilio_signature

    ctx = _web_context(folder, "callbacks")
    m = t.messages.c
    with ctx.store.engine.begin() as conn:
        ids = conn.execute(select(m.id).order_by(m.id).limit(3)).scalars().all()
        conn.execute(update(t.messages).where(m.id == ids[0]).values(state="sent", provider_message_id="SMgood",
                                                                     provider="twilio"))
        conn.execute(update(t.messages).where(m.id == ids[1]).values(state="sent", provider_message_id="wamid.good",
                                                                     provider="meta"))
        conn.execute(update(t.messages).where(m.id == ids[2]).values(
            state="sent", provider_message_id="<salon-berlin.b1.info@example.org>", provider="smtp"))
    client = TestClient(create_app(ctx), raise_server_exceptions=False)
    url = "https://notifier.example.org/callbacks/twilio"

    def states() -> dict[str, str]:
        with ctx.store.engine.connect() as conn:
            return dict(conn.execute(select(m.provider_message_id, m.state).where(m.id.in_(ids))).all())

    initial = states()

    def judge(tally: Tally, answer: Any, example: Any, *, forged: bool) -> None:
        if answer.status_code >= 500:
            tally.add(f"{BUG}: server error {answer.status_code}", example)
        elif forged and answer.status_code != 403:
            tally.add(f"{BUG}: a forged callback was taken ({answer.status_code})", example)
        elif forged and states() != initial:
            tally.add(f"{BUG}: a forged callback changed a message", example)
        elif forged:
            tally.add("refused: 403", example)
        else:
            tally.add(f"signed: {answer.status_code}" + (" (nothing to apply)" if answer.status_code == 204 else ""),
                      example)

    forms = st.dictionaries(st.sampled_from(["MessageSid", "SmsSid", "MessageStatus", "SmsStatus", "ErrorCode",
                                             "AccountSid", "To", "x"]) | st.text(max_size=8),
                            st.sampled_from(["SMgood", "delivered", "read", "failed", "undelivered", "queued"])
                            | st.text(max_size=40), max_size=6)
    signatures = st.sampled_from(["none", "random", "other-token", "other-url", "other-form", "empty"])

    def forged_twilio(case: tuple[dict[str, str], str, str]) -> None:
        form, how, junk = case
        headers = {}
        if how == "random":
            headers["X-Twilio-Signature"] = base64.b64encode(junk.encode()[:20].ljust(20, b"x")).decode()
        elif how == "other-token":
            headers["X-Twilio-Signature"] = twilio_signature("not-the-token", url, form)
        elif how == "other-url":
            headers["X-Twilio-Signature"] = twilio_signature("twilio-token", url + "?x=1", form)
        elif how == "other-form":
            headers["X-Twilio-Signature"] = twilio_signature("twilio-token", url, {**form, "MessageStatus": "read"}
                                                             if form.get("MessageStatus") != "read" else {})
        elif how == "empty":
            headers["X-Twilio-Signature"] = ""
        try:
            answer = client.post("/callbacks/twilio", data=form, headers=headers)
        except Exception as exc:  # noqa: BLE001 - counted
            twilio_forged.add(f"{BUG}: the client raised {exc.__class__.__name__}", case)
            return
        judge(twilio_forged, answer, case, forged=True)

    twilio_forged = Tally("callbacks", "Twilio, forged or missing signature")
    _hypothesis_run(st.tuples(forms, signatures, st.text(max_size=30)), examples, seed, forged_twilio)

    bodies = st.binary(max_size=300) | _json_values().map(lambda v: json.dumps(v, allow_nan=True).encode()) | \
        st.sampled_from([json.dumps({"entry": [{"changes": [{"value": {"statuses": [
            {"id": "wamid.good", "status": s}]}}]}]}).encode() for s in ("read", "delivered", "failed", "x")])

    def forged_meta(case: tuple[bytes, str]) -> None:
        body, how = case
        headers = {} if how == "none" else {"X-Hub-Signature-256": meta_signature(
            "meta-secret" if how == "other-body" else "wrong-secret", body + (b" " if how == "other-body" else b""))}
        judge(meta_forged, client.post("/callbacks/meta", content=body, headers=headers), case, forged=True)

    meta_forged = Tally("callbacks", "Meta, forged or missing signature")
    _hypothesis_run(st.tuples(bodies, st.sampled_from(["none", "wrong-secret", "other-body"])), examples, seed,
                    forged_meta)
    assert states() == initial

    # signed but malformed (what a provider bug, or someone holding the secret, could send)
    twilio_signed = Tally("callbacks", "Twilio, signed, malformed or unknown fields")
    _hypothesis_run(forms, examples, seed, lambda form: judge(twilio_signed, client.post(
        "/callbacks/twilio", data=form, headers={"X-Twilio-Signature": twilio_signature("twilio-token", url, form)}),
        form, forged=False))
    meta_signed = Tally("callbacks", "Meta, signed, malformed body")
    _hypothesis_run(bodies, examples, seed, lambda body: judge(meta_signed, client.post(
        "/callbacks/meta", content=body, headers={"X-Hub-Signature-256": meta_signature("meta-secret", body)}),
        body, forged=False))
    # signed, but for another provider's message: refused, nothing moves (issue 15)
    foreign = Tally("callbacks", "signed, another provider's message id (Twilio for Meta or email, Meta for Twilio "
                                 "or email)")
    before = states()
    for status in ("delivered", "read", "failed", "undelivered"):
        for sid in ("wamid.good", "<salon-berlin.b1.info@example.org>"):
            form = {"MessageSid": sid, "MessageStatus": status}
            answer = client.post("/callbacks/twilio", data=form,
                                 headers={"X-Twilio-Signature": twilio_signature("twilio-token", url, form)})
            foreign.add("refused 409, nothing moved" if answer.status_code == 409 and states() == before
                        else f"{BUG}: moved or not refused ({answer.status_code})", form)
        for sid in ("SMgood", "<salon-berlin.b1.info@example.org>"):
            body = json.dumps({"entry": [{"changes": [{"value": {"statuses": [{"id": sid, "status": status}]}}]}]})
            answer = client.post("/callbacks/meta", content=body.encode(),
                                 headers={"X-Hub-Signature-256": meta_signature("meta-secret", body.encode())})
            foreign.add("refused 409, nothing moved" if answer.status_code == 409 and states() == before
                        else f"{BUG}: moved or not refused ({answer.status_code})", body)
    final = states()  # signed statuses only ever moved forward (N5)
    order = ["sent", "delivered", "read"]
    for pid, state in final.items():
        if state != "failed" and order.index(state) < order.index(initial[pid]):
            meta_signed.add(f"{BUG}: a status moved backwards", (pid, state))
    ctx.close()
    return [twilio_forged, meta_forged, twilio_signed, meta_signed, foreign]


# --- the table --------------------------------------------------------------------------------------------

def table(tallies: list[Tally]) -> str:
    lines = ["| surface | inputs | tried | outcomes | bugs |", "| --- | --- | ---: | --- | ---: |"]
    for tally in tallies:
        outcomes = "; ".join(f"{name}: {n}" for name, n in tally.outcomes.most_common())
        lines.append(f"| {tally.surface} | {tally.family} | {tally.tried} | {outcomes} | {tally.bugs} |")
    return "\n".join(lines)


def run(examples: int, seed: int, stores: tuple[str, ...] = ("sqlite", "postgresql")) -> list[Tally]:
    from contextlib import ExitStack

    folder = Path(tempfile.mkdtemp(prefix="notifier-bad-input-"))
    try:
        tallies = []
        with ExitStack() as stack:
            for store in stores:
                begun = time.perf_counter()
                if store == "postgresql":
                    from bench.common import scratch_database

                    url, label = stack.enter_context(scratch_database()), "PostgreSQL"
                    loops = stack.enter_context(scratch_database())
                else:
                    url, label = f"sqlite:///{folder / 'events.db'}", "SQLite"
                    loops = f"sqlite:///{folder / 'loops.db'}"
                tallies += fuzz_events(folder, examples, seed, store_url=url, label=label)
                # a database of its own: the events' thousand due messages would fill the due sweep's claims
                tallies += fuzz_loops(folder, loops, label)
                print(f"bad input: fuzz_events on {label} in {time.perf_counter() - begun:.0f} s", file=sys.stderr)
        for surface in (fuzz_tenant_files, fuzz_bundles, fuzz_links, fuzz_callbacks):
            begun = time.perf_counter()
            tallies += surface(folder, examples, seed)
            print(f"bad input: {surface.__name__} in {time.perf_counter() - begun:.0f} s", file=sys.stderr)
        return tallies
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bad_input", description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=500, help="hypothesis examples per generated family")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both",
                        help="where the events go (default both; PostgreSQL at NOTIFIER_TEST_PG)")
    args = parser.parse_args(argv)
    import logging

    logging.disable(logging.CRITICAL)  # an event that fails is logged with its traceback: thousands here
    tallies = run(args.examples, args.seed, ("sqlite", "postgresql") if args.store == "both" else (args.store,))
    print(table(tallies))
    for tally in tallies:
        for outcome, example in tally.examples.items():
            if outcome.startswith(BUG):
                print(f"\n{tally.surface} / {tally.family} / {outcome}:\n  e.g. {example}")
    summary = {f"{t.surface}: {t.family}": {"tried": t.tried, "bugs": t.bugs} for t in tallies}
    print(json.dumps({"tried": sum(t.tried for t in tallies), "bugs": sum(t.bugs for t in tallies),
                      "examples": args.examples, "seed": args.seed, "store": args.store, "surfaces": summary},
                     separators=(",", ":")))
    return 0 if not any(t.bugs for t in tallies) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
