"""python -m bench chaos: a bounded fault-injection run on loopback (issue 9, N1, N2, N5).

About 20,000 messages on every channel (email to an SMTP sink, SMS over the loopback Twilio API,
WhatsApp over the loopback Meta Cloud API, staff notices and activities to a webhook sink), sent
by the real processes (two ingesters, two beats, two Celery worker pools, the web app for status
callbacks) while the run, at random moments:

- SIGKILLs Celery worker processes (a pool child, which Celery replaces, or the whole worker with
  its children, which the run restarts), at least `--kills` times;
- restarts Redis (broker and event list) twice: once cleanly (SIGTERM), once as a crash (SIGKILL);
- stops PostgreSQL for 10 s;
- makes the providers and sinks flap: 5xx / 451 refusals, 429 with Retry-After, slow answers, no
  answers (timeouts, nothing accepted) and lost answers (accepted, then a timeout), at a low rate
  all along and in storms;
- takes the loopback Twilio/Meta API down (connections refused) for `OUTAGE_S`: SMS has a second
  account (a second loopback Twilio API, `NOTIFIER_SMS_ACCOUNTS`), which carries it meanwhile
  (issue 23: provider failover); WhatsApp, with one account, waits;
- publishes every event once more at a later moment (duplicates) and shuffles each wave (reordered
  events, later revisions before earlier ones);
- posts Twilio and Meta status callbacks, signed, out of order and duplicated.

With `--starve` (issue 17) the same faults come on a starved machine: CPU hogs keep it
oversubscribed about three times over (two busy processes per core beside the pipeline's own
work), and Celery worker processes (a pool child, or a whole worker with its children) are
paused with SIGSTOP for longer than the lease, then resumed, as a stalled VM or a long GC would:
a claim may lapse only when its worker is gone, and a worker that comes back must not send
what it no longer holds.

PostgreSQL and Redis are the run's own (a cluster initdb'd into a temporary folder, a
redis-server with an append-only file as docs/operations.md deploys it), on free ports: the
machine's shared services are never stopped.

Timing is real time. Bookings are published in waves; each booking's events are published
together and every message they imply falls due at least `INFO_DELAY_S` later, so the outcome
does not depend on how fast the faults let the events in. What the events imply is worked out
afterwards by a reference: the same events, once each and in order, applied by the same code to
an SQLite store with no faults. Each message the reference plans is looked for at its provider
or sink: received once (`delivered_once`), never (`lost`), or more than once (`duplicates`, or
`duplicates_unavoidable` where the provider accepted a message, the outcome could not be
recorded (the worker was killed, or the provider's answer was lost) and the provider cannot be
asked (SMTP, Meta, webhooks); each is listed with its evidence in the run's report file).

Email goes to a relay that drops a repeated message by its idempotency key, as Resend's SMTP
does by `Resend-Idempotency-Key` (`NOTIFIER_SMTP_IDEMPOTENCY_HEADER`): a copy sent again after a
lost answer or a killed worker reaches the relay and no further, and is counted in
`repeats_dropped_by_the_receiver`. `--plain-smtp` runs the same against a relay that cannot
(Postfix, most SMTP services): such copies are delivered twice, and counted as unavoidable.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import (
    ROOT,
    PrivatePostgres,
    PrivateRedis,
    flapping_provider_process,
    free_port,
    niced,
    record,
)
from notifier.devtools import Ticker

TENANT = "chaos-salon"
MAIL_DOMAIN = "chaos.example.org"  # a name email validation accepts (.test is reserved)
VISIT_AFTER_S = 3600  # a visit starts an hour after its booking: nothing about the visit itself is due
INFO_DELAY_S = 60  # the first message of a booking falls due this long after its events are published
# the tenant's timings (seconds before the visit), so that every message falls due in the run
CONFIRM_OFFSET_S = VISIT_AFTER_S - 70
ACTIVITY_OFFSET_S = VISIT_AFTER_S - 90
REMINDER_OFFSET_S = VISIT_AFTER_S - 100
MOVE_BY_S = 30  # a rescheduled visit moves this much later
LAST_DUE_S = VISIT_AFTER_S - REMINDER_OFFSET_S + MOVE_BY_S + 30  # after its wave, the last due time
WORKER_QUEUES = "sweep,email,sms,whatsapp,staff,activity"
CHILDREN = 2  # prefork children per worker pool
DISPATCH_CONCURRENCY = 16  # sends in flight per child
DISPATCH_BATCH = 50  # messages a dispatch task claims at once
ASKABLE = {"sms"}  # channels whose provider says whether it has a message (Twilio's Messages list)
MAIL_IDEMPOTENCY_HEADER = "Resend-Idempotency-Key"  # the relay drops a repeat of a key it took (not --plain-smtp)
REPORTS_NAME_THE_MESSAGE = {"sms", "whatsapp"}  # Twilio's and Meta's status callbacks say which message they are about
# per channel, what can still reach someone twice after every way to find the first copy was tried
# (docs/reliability.md, "Where a message can still reach someone twice")
WHY_UNAVOIDABLE = {
    "email": "none: the relay drops a repeated idempotency key (NOTIFIER_SMTP_IDEMPOTENCY_HEADER)",
    "email (plain SMTP)": "a relay that cannot drop repeats can be neither asked nor heard from: a copy whose "
                          "answer was lost, or whose worker died before writing the answer down, is sent again "
                          "(with the same Message-ID)",
    "whatsapp": "Meta cannot be asked: a copy whose answer was lost or whose worker died before writing it "
                "down is found only by its status reports, and was sent again when none had come in time",
    "sms": "none: Twilio is asked (its Messages list) and reports naming the message",
    "staff": "none: the receiver drops a repeated idempotency key",
    "activity": "none: the receiver drops a repeated idempotency key",
}
HANG_S = 3.0  # a provider that does not answer hangs this long; clients give up after TIMEOUT_S
TIMEOUT_S = 2.0
CALM = dict(error_rate=0.02, throttle_rate=0.005, slow_rate=0.02, unanswered_rate=0.002, lost_answer_rate=0.001)
STORM = dict(error_rate=0.3, throttle_rate=0.05, slow_rate=0.2, unanswered_rate=0.05, lost_answer_rate=0.02)
OFF = {k: 0.0 for k in CALM}
RECEIPT_AFTER_KILL_S = 1.5  # a copy answered slowly (slow_s) reaches its sink after its sender died
RECORD_WITHIN_S = 3.0  # a received copy's outcome is committed within this (the commit under way, then its own)
LEASE_S = 30  # NOTIFIER_LEASE_S of the run
OUTAGE_S = 20.0  # provider one refuses connections this long; SMS fails over to the second account
COOLDOWN_S = 10  # NOTIFIER_FAILOVER_COOLDOWN_S of the run (production: 60)
SECOND = {"account_sid": "ACsecond", "auth_token": "second-token"}  # the second SMS account
# --starve: the pipeline, its PostgreSQL and Redis, and the CPU hogs run this much nicer than what
# stands for the world outside (the loopback providers, the sinks, the callback poster: other
# machines in production), so the starvation falls on the pipeline's host, not on its providers;
# as root the harness is raised by as much, so the pipeline competes with other work as usual
STARVED_NICE = 5


def tenant_yaml(hook_url: str) -> str:
    settings = {
        "channel_policy": "all", "quiet_hours": {"enabled": False},
        "info": {"enabled": True, "delay_s": INFO_DELAY_S, "channels": ["whatsapp", "sms", "email"]},
        "confirmation": {"enabled": True, "offset_s": CONFIRM_OFFSET_S, "repetitions": 0,
                         "channels": ["whatsapp", "sms", "email"],
                         "activity_enabled": True, "activity_offset_s": ACTIVITY_OFFSET_S},
        "reminder": {"enabled": True, "offset_s": REMINDER_OFFSET_S, "channels": ["whatsapp", "sms", "email"]},
        "change": {"enabled": True, "channels": ["email", "sms"]},
        "cancellation": {"enabled": True, "inform_customer_on_staff_cancel": True,
                         "inform_staff_on_customer_cancel": True, "channels": ["email", "sms"]},
        "late": {"enabled": False, "activity_enabled": False, "release_enabled": False},
        "feedback": {"enabled": False},
        "staff": {"enabled": True, "channels": ["staff"]},
    }
    return json.dumps({  # JSON is YAML
        "id": TENANT, "name": "Salon Chaos", "timezone": "Europe/Berlin", "home_region": "DE", "language": "de",
        "webhook_url": hook_url,
        "channels": ["email", "sms", "whatsapp"],
        "company": {"name": "Salon Chaos", "address": "Teststrasse 9, 10115 Berlin", "phone": "+49 30 5550199"},
        "settings": settings,
        "resources": [{"id": "anna", "name": "Anna Weber", "type": "specialist"},
                      {"id": "sauna", "name": "Sauna 2", "type": "equipment"}]}, indent=1)


# --- the workload ------------------------------------------------------------------------------------

# scenario: its events (besides booking.created) and how often it is drawn
SCENARIOS = {
    "plain": 0.34,  # info, the confirmation request, the unconfirmed activity, reminder
    "moved": 0.14,  # + booking.rescheduled: a change notice, everything about the visit anchored anew
    "cancelled_by_staff": 0.08,  # the customer is told (R19 setting on)
    "cancelled_by_customer": 0.08,  # the staff is told (R14)
    "request": 0.08,  # an online request waiting for approval: request received + new request to staff
    "accepted": 0.1,  # created in a confirmation-kind status: the acceptance + staff notice, then as plain
    "confirmed": 0.08,  # booking.confirmed: no confirmation requests, no activity
    "consent_later": 0.1,  # customer.updated (revision 1) adds WhatsApp
}


@dataclass
class Workload:
    base: datetime
    wave_every_s: float
    waves: list[list[str]] = field(default_factory=list)  # what is published at each wave, in order
    canonical: list[list[str]] = field(default_factory=list)  # each event once, in order, per wave
    scenarios: Counter = field(default_factory=Counter)
    duplicates: int = 0
    displaced: int = 0  # events published before one that precedes them

    def wave_at(self, w: int) -> datetime:
        return self.base + timedelta(seconds=w * self.wave_every_s)

    @property
    def unique_events(self) -> int:
        return sum(len(w) for w in self.canonical)


def _event(type_: str, at: datetime, revision: int, data: dict[str, Any]) -> dict[str, Any]:
    return {"schema_version": 1, "event_id": uuid.uuid4().hex, "type": type_, "occurred_at": at.isoformat(),
            "tenant_id": TENANT, "revision": revision, "data": data}


def booking_events(i: int, scenario: str, at: datetime, rng: random.Random) -> list[dict[str, Any]]:
    """The events of booking `i` (its own customer, phone and address), in revision order."""
    starts = at + timedelta(seconds=VISIT_AFTER_S + rng.randrange(30))
    resource = rng.choice([{"id": "anna", "name": "Anna Weber", "type": "specialist"},
                           {"id": "sauna", "name": "Sauna 2", "type": "equipment"}])
    customer = {"id": f"k{i}", "name": f"Kunde {i}", "email": f"k{i}@{MAIL_DOMAIN}", "phone": f"+49151{i:08d}",
                "language": "de", "privacy_accepted": True,
                "consents": {"email": True, "sms": True, "whatsapp": scenario != "consent_later"}}
    data: dict[str, Any] = {"booking_id": f"b{i}", "customer": customer, "resource": resource,
                            "starts_at": starts.isoformat(), "ends_at": (starts + timedelta(minutes=45)).isoformat()}
    if scenario == "request":
        data.update(needs_approval=True, source="online")
    elif scenario == "accepted":
        data.update(needs_approval=True, source="online",
                    status={"id": "ok", "name": "Bestaetigt", "kind": "confirmation"})
    events = [_event("booking.created", at, 1, data)]
    later = at + timedelta(seconds=1)
    if scenario == "moved":
        moved = starts + timedelta(seconds=MOVE_BY_S)
        events.append(_event("booking.rescheduled", later, 2, {
            "booking_id": f"b{i}", "starts_at": moved.isoformat(),
            "ends_at": (moved + timedelta(minutes=45)).isoformat()}))
    elif scenario.startswith("cancelled_by_"):
        events.append(_event("booking.cancelled", later, 2, {"booking_id": f"b{i}",
                                                             "by": scenario.removeprefix("cancelled_by_")}))
    elif scenario == "confirmed":
        events.append(_event("booking.confirmed", later, 2, {"booking_id": f"b{i}", "via": "phone"}))
    elif scenario == "consent_later":
        events.append(_event("customer.updated", later, 1, {"customer": {
            **customer, "consents": {"email": True, "sms": True, "whatsapp": True}}}))
    return events


def make_workload(bookings: int, *, waves: int, wave_every_s: float, base: datetime, seed: int,
                  duplicate_rate: float = 0.1) -> Workload:
    rng = random.Random(seed)
    work = Workload(base=base, wave_every_s=wave_every_s)
    names, weights = list(SCENARIOS), list(SCENARIOS.values())
    late_copies: dict[int, list[str]] = defaultdict(list)
    for w in range(waves):
        at = work.wave_at(w)
        canonical: list[str] = []
        per_booking: list[list[str]] = []
        for i in range(w * bookings // waves, (w + 1) * bookings // waves):
            scenario = rng.choices(names, weights)[0]
            work.scenarios[scenario] += 1
            bodies = [json.dumps(e, separators=(",", ":")) for e in booking_events(i, scenario, at, rng)]
            canonical.extend(bodies)
            per_booking.append(bodies)
        published = [b for bodies in per_booking for b in bodies]
        rng.shuffle(published)  # reordered: a later revision often comes first
        position = {body: k for k, body in enumerate(published)}
        work.displaced += sum(1 for bodies in per_booking if len(bodies) > 1 and position[bodies[1]] < position[bodies[0]])
        for body in canonical:
            if rng.random() < duplicate_rate:  # published again, in this wave or one of the next two
                late_copies[w + rng.randrange(3)].append(body)
                work.duplicates += 1
        work.canonical.append(canonical)
        work.waves.append(published)
    for w in range(waves):
        copies = late_copies.get(w, [])
        if w == waves - 1:
            copies = [b for k, v in late_copies.items() if k >= w for b in v]
        for body in copies:
            work.waves[w].insert(rng.randrange(len(work.waves[w]) + 1), body)
    return work


# --- flapping sinks: SMTP and webhooks -----------------------------------------------------------------

class Flappy:
    """A sink's misbehaviour: the rates of notifier.fake_providers.Flapping, drawn per request."""

    def __init__(self, seed: int) -> None:
        from notifier.fake_providers import Flapping

        self.flapping = Flapping(hang_s=HANG_S)
        self.injected: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.received: list[dict[str, Any]] = []
        self._keys: set[str] = set()

    def flap(self, **rates: float) -> None:
        with self._lock:
            for name, value in rates.items():
                setattr(self.flapping, name, float(value))

    def draw(self) -> str | None:
        with self._lock:
            fault = self.flapping.pick(self._random.random())
            if fault:
                self.injected[fault] += 1
            return fault

    def keep(self, entry: dict[str, Any]) -> None:
        entry["received_at"] = time.time()
        with self._lock:
            self.received.append(entry)

    def repeat(self, key: str) -> bool:
        """Whether a delivery with this key came before (a receiver's idempotency check); this one
        is noted, in the same step, so two copies at once are told apart."""
        with self._lock:
            seen = key in self._keys
            self._keys.add(key)
            return seen

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.received)


class FlappingMailSink(Flappy):
    """An SMTP relay on loopback (aiosmtpd) keeping each message's Message-ID and recipient.
    Errors are 451 (try again later); a lost answer is a message taken in whose connection then
    dies before the 250 (a late 250 is no loss: clients wait minutes for it, RFC 5321 4.5.3.2).
    With `idempotency_header` it drops a message whose key it took before, as Resend does: answered
    250 and marked `repeat` (counted, never delivered twice)."""

    def __init__(self, seed: int, idempotency_header: str = "") -> None:
        super().__init__(seed)
        self.idempotency_header = idempotency_header
        import asyncio
        from email.parser import BytesHeaderParser

        from aiosmtpd.controller import Controller

        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
                fault = sink.draw()
                if fault == "slow":
                    await asyncio.sleep(sink.flapping.slow_s)
                if fault in ("error", "throttle"):
                    return "451 4.3.0 try again later"
                if fault == "unanswered":
                    await asyncio.sleep(sink.flapping.hang_s)
                    return "451 4.3.0 timed out"
                headers = BytesHeaderParser().parsebytes(envelope.content)
                message_id = " ".join(str(headers["Message-ID"]).split())  # a long one comes folded
                key = headers[idempotency_header] if idempotency_header else None
                sink.keep({"message_id": message_id, "to": envelope.rcpt_tos[0], "fault": fault,
                           "repeat": key is not None and sink.repeat(str(key))})
                if fault == "lost_answer":
                    server.transport.abort()  # taken on; the 250 never reaches the client
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> "FlappingMailSink":
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


class FlappingHookSink(Flappy):
    """The booking system's webhook endpoint for staff notices and activities: keeps each
    delivery's idempotency key. Errors are 503; a lost answer is a delivery kept before a hang.
    As docs/reliability.md asks of a booking system's receiver, it acts on a key once: a repeat is
    answered 200 and marked `repeat` (counted, never shown twice to the staff)."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fault = sink.draw()
                status = 200
                if fault == "slow":
                    time.sleep(sink.flapping.slow_s)
                if fault in ("error", "throttle"):
                    status = 503 if fault == "error" else 429
                elif fault == "unanswered":
                    time.sleep(sink.flapping.hang_s)
                    status = 503
                else:
                    payload = json.loads(body)
                    sink.keep({"key": payload["idempotency_key"], "channel": payload["type"].split(".")[-1],
                               "fault": fault, "repeat": sink.repeat(payload["idempotency_key"])})
                    if fault == "lost_answer":
                        time.sleep(sink.flapping.hang_s)
                try:
                    self.send_response(status)
                    if status == 429:
                        self.send_header("Retry-After", "1")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def __enter__(self) -> "FlappingHookSink":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the pipeline's processes -------------------------------------------------------------------------

class Processes:
    """The pipeline's processes, each in its own session (so a whole worker dies with its pool),
    logs in one folder; killed ones are restarted, and ones that exit by themselves are counted
    and restarted as a supervisor (compose's restart policy, Kubernetes) would."""

    def __init__(self, env: dict[str, str], logs: Path, faults: "FaultLog", *, nice: int = 0) -> None:
        self.env, self.logs, self.faults, self.nice = env, logs, faults, nice
        self.args: dict[str, list[str]] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.starts: Counter[str] = Counter()
        self.expected_down: set[str] = set()
        self.unexpected_exits: list[dict[str, Any]] = []
        self.stopped = False
        self._lock = threading.RLock()

    def start(self, name: str, *args: str) -> None:
        with self._lock:
            self.args[name] = list(args)
            self.starts[name] += 1
            log = (self.logs / f"{name}.{self.starts[name]}.log").open("wb")
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "notifier.cli", *args], env=self.env,
                                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True, preexec_fn=niced(self.nice))
            log.close()
            self.expected_down.discard(name)

    def pool_children(self, name: str) -> list[int]:
        pid = self.procs[name].pid
        out: list[int] = []
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                out.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            pass
        return out

    def kill_child(self, name: str, rng: random.Random) -> int | None:
        return self._signal_child(name, rng, signal.SIGKILL)

    def _signal_child(self, name: str, rng: random.Random, sig: int) -> int | None:
        """`sig` to one of `name`'s pool children, chosen at random: its pid (None: none there)."""
        children = self.pool_children(name)
        if not children:
            return None
        victim = rng.choice(children)
        try:
            os.kill(victim, sig)
        except ProcessLookupError:
            return None
        return victim

    def pause(self, name: str, rng: random.Random, *, whole: bool) -> tuple[int, bool] | None:
        """SIGSTOP a pool child of `name`, or the whole worker (its process group): (pid, whole)."""
        with self._lock:
            if name in self.expected_down or self.procs[name].poll() is not None:
                return None
            if whole:
                pid = self.procs[name].pid
                os.killpg(pid, signal.SIGSTOP)
                return pid, True
            victim = self._signal_child(name, rng, signal.SIGSTOP)
            return (victim, False) if victim is not None else None

    @staticmethod
    def resume(pid: int, whole: bool) -> None:
        try:
            if whole:
                os.killpg(pid, signal.SIGCONT)
            else:
                os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass  # killed while it was paused (a kill fault): nothing to resume

    def kill_all(self, name: str) -> int:
        with self._lock:
            proc = self.procs[name]
            self.expected_down.add(name)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            return proc.pid

    def restart(self, name: str) -> None:
        with self._lock:
            if self.stopped or self.procs[name].poll() is None:  # the run is over, or it is back already
                return
            self.start(name, *self.args[name])

    def supervise(self) -> None:
        """Restart what exited without being killed by the run (and say so)."""
        with self._lock:
            for name, proc in list(self.procs.items()):
                if proc.poll() is not None and name not in self.expected_down:
                    log = self.logs / f"{name}.{self.starts[name]}.log"
                    tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
                    self.unexpected_exits.append({"at": time.time(), "process": name, "code": proc.returncode,
                                                  "log": f"{log.name}", "tail": tail})
                    self.faults.note("unexpected_exit", process=name, code=proc.returncode, log=log.name)
                    self.restart(name)

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            for proc in self.procs.values():
                if proc.poll() is None:
                    for sig in (signal.SIGTERM, signal.SIGCONT):  # a paused one wakes to its SIGTERM
                        try:
                            os.killpg(proc.pid, sig)
                        except ProcessLookupError:
                            pass
            deadline = time.monotonic() + 20
            for proc in self.procs.values():
                try:
                    proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


class FaultLog:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def note(self, kind: str, *, count: bool = False, **detail: Any) -> None:
        with self._lock:
            self.entries.append({"at": time.time(), "kind": kind, **detail})
            if count:
                self.counts[kind] += 1
        print(f"chaos: {time.strftime('%H:%M:%S')} {kind} {detail or ''}", file=sys.stderr, flush=True)

    def window(self, kind: str) -> list[tuple[float, float]]:
        """(start, end) of the outages logged as `<kind>.down` / `<kind>.up`."""
        out, start = [], None
        for entry in self.entries:
            if entry["kind"] == f"{kind}.down":
                start = entry["at"]
            elif entry["kind"] == f"{kind}.up" and start is not None:
                out.append((start, entry["at"]))
                start = None
        return out

    def kills(self) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["kind"] in ("worker_child_sigkill", "worker_sigkill")]

    def pauses(self) -> list[dict[str, Any]]:
        """Each SIGSTOP, with the moment of its SIGCONT (`resumed_at`)."""
        out = []
        for k, entry in enumerate(self.entries):
            if entry["kind"] in ("worker_child_paused", "worker_paused"):
                resumed = next((e["at"] for e in self.entries[k + 1:]
                                if e["kind"] == "worker_resumed" and e.get("pid") == entry.get("pid")), None)
                out.append({**entry, "resumed_at": resumed})
        return out


# --- status callbacks, as Twilio and Meta send them ---------------------------------------------------

class Callbacks:
    """Signed status callbacks for what the providers accepted: each message gets its statuses
    in random order, some twice, at random moments; a refused post (the web app's database down)
    is posted again later, as Meta does (Twilio does not retry: see docs/reliability.md)."""

    def __init__(self, web_url: str, providers: Any, *, tokens: dict[str, str], app_secret: str, seed: int) -> None:
        import requests

        self.web_url, self.providers = web_url, providers
        self.tokens, self.app_secret = tokens, app_secret  # each Twilio account signs its own reports
        self.rng = random.Random(seed)
        self._local = threading.local()
        self._requests = requests
        self.pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="callback")  # providers post in parallel
        self.posts: dict[str, list[tuple[float, str, bool]]] = defaultdict(list)  # id -> (when, status, taken)
        self.seen: set[str] = set()
        self.final: dict[str, str] = {}  # provider message id -> the furthest status reported
        self.queue: list[tuple[float, str, str, str, str | None]] = []  # (when, provider, id, status, reference)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def discover(self) -> None:
        from notifier.domain.delivery import ORDER, PROVIDER_STATUS

        now = time.time()
        for m in self.providers.received():
            pid = m.get("sid") or m.get("id")
            if pid in self.seen:
                continue
            self.seen.add(pid)
            provider = m["provider"]
            path = ["queued", "sent", "delivered"] if provider == "twilio" else ["sent", "delivered", "read"]
            statuses = path[:self.rng.randrange(2, len(path) + 1)]
            self.final[pid] = max(statuses, key=lambda s: ORDER[PROVIDER_STATUS[s]])
            posts = statuses + [s for s in statuses if self.rng.random() < 0.3]  # some twice
            self.rng.shuffle(posts)
            self.counts["reordered"] += posts != sorted(posts, key=lambda s: ORDER[PROVIDER_STATUS[s]])
            self.counts["duplicated"] += len(posts) - len(statuses)
            # what the provider reports with: Twilio posts to the message's StatusCallback URL (which
            # names our message), Meta returns the message's biz_opaque_callback_data
            reference = m.get("status_callback") if provider == "twilio" else m.get("biz_opaque_callback_data")
            sender = f"{provider}:{m['account_sid']}" if provider == "twilio" else provider
            with self._lock:
                for status in posts:
                    self.queue.append((now + self.rng.uniform(1, 20), sender, pid, status, reference))

    def post_due(self, *, everything: bool = False) -> int:
        now = time.time()
        with self._lock:
            due = [c for c in self.queue if everything or c[0] <= now]
            self.queue = [c for c in self.queue if not (everything or c[0] <= now)]
        failed = []
        for (_, provider, pid, status, reference), ok in zip(due, self.pool.map(lambda c: self._post(*c[1:]), due),
                                                             strict=True):
            if not ok:
                failed.append((time.time() + 2, provider, pid, status, reference))
        with self._lock:
            self.queue.extend(failed)
        return len(failed)

    def _post(self, provider: str, pid: str, status: str, reference: str | None) -> bool:
        from notifier.web.app import meta_signature, twilio_signature

        if not hasattr(self._local, "session"):
            self._local.session = self._requests.Session()
        session = self._local.session
        try:
            if provider.startswith("twilio:"):
                account = provider.split(":", 1)[1]
                form = {"AccountSid": account, "MessageSid": pid, "MessageStatus": status}
                url = reference or f"{self.web_url}/callbacks/twilio"
                signature = twilio_signature(self.tokens[account], url, form)
                answer = session.post(url, data=form, timeout=10, headers={"X-Twilio-Signature": signature})
            else:
                report = {"id": pid, "status": status, "timestamp": str(int(time.time()))}
                if reference is not None:
                    report["biz_opaque_callback_data"] = reference
                body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
                    "field": "messages", "value": {"statuses": [report]}}]}]}).encode()
                answer = session.post(f"{self.web_url}/callbacks/meta", data=body, timeout=10, headers={
                    "X-Hub-Signature-256": meta_signature(self.app_secret, body),
                    "Content-Type": "application/json"})
            ok = answer.status_code == 204
        except Exception:  # noqa: BLE001 - the web app restarting or its database down
            ok = False
        with self._lock:
            self.counts["posted" if ok else "refused"] += 1
            self.posts[pid].append((time.time(), status, ok))
        return ok

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self.queue)


# --- the run --------------------------------------------------------------------------------------------

@dataclass
class Config:
    messages: int
    seed: int
    kills: int
    waves: int
    spread_s: float
    drain_s: float
    keep: bool
    storms: int
    starve: bool = False
    hogs: int = 0  # CPU-bound processes beside the pipeline (--starve)
    pauses: int = 0  # SIGSTOPs of worker processes longer than the lease (--starve)
    plain_smtp: bool = False  # email through a relay that cannot drop repeats


def _estimate_per_booking() -> float:
    """Messages per booking, on average over the scenario mix (measured once by the reference)."""
    return 8.0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="about this many messages (default 20000)")
    parser.add_argument("--spread-s", type=float, default=120.0,
                        help="bookings are published over this many seconds (default 120)")
    parser.add_argument("--waves", type=int, default=12)
    parser.add_argument("--kills", type=int, default=24, help="SIGKILLs of worker processes (at least 20)")
    parser.add_argument("--storms", type=int, default=3, help="spells of heavy provider flapping")
    parser.add_argument("--drain-s", type=float, default=240.0,
                        help="after the faults, the longest wait for the pipeline to settle")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the run folder (logs, report) afterwards")
    parser.add_argument("--starve", action="store_true",
                        help="the same faults on a starved machine: CPU hogs, and workers paused past their lease")
    parser.add_argument("--hogs", type=int, default=None,
                        help="with --starve: CPU-bound processes beside the pipeline (default two per core)")
    parser.add_argument("--pauses", type=int, default=6,
                        help="with --starve: SIGSTOPs of worker processes, each longer than the lease")
    parser.add_argument("--plain-smtp", action="store_true",
                        help="email through a relay that cannot drop a repeated message (no idempotency header)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    config = Config(messages=args.messages, seed=seed, kills=args.kills, waves=args.waves, spread_s=args.spread_s,
                    drain_s=args.drain_s, keep=args.keep, storms=args.storms, starve=args.starve,
                    hogs=(args.hogs if args.hogs is not None else 2 * (os.cpu_count() or 1)) if args.starve else 0,
                    pauses=args.pauses if args.starve else 0, plain_smtp=args.plain_smtp)
    figures, keep_dir = run(config)
    command = ("python -m bench chaos " + " ".join(argv)).strip()
    name = "chaos" + ("_starve" if config.starve else "") + ("_plain_smtp" if config.plain_smtp else "")
    record(name, command, figures, notes=NOTES, summary=(
        f"{figures['expected']} messages under {sum(figures['faults_injected'].values())} faults"
        f"{' on a starved machine' if config.starve else ''} (load {figures['load_average']['max']:.1f} at most): "
        f"lost {figures['lost']}, duplicates {figures['duplicates']} "
        f"(+{figures['duplicates_unavoidable']} unavoidable)"))
    if keep_dir:
        print(f"chaos: the run folder (logs, report.json) is kept at {keep_dir}", file=sys.stderr)
    return 0 if figures["lost"] == 0 and figures["duplicates"] == 0 else 1


NOTES = ("Loopback only; PostgreSQL and Redis are the run's own (initdb'd cluster, redis-server with "
         "appendonly/everysec), stopped and restarted by the run. `expected`: messages the events imply (a "
         "fault-free reference applies the same events once, in order, to SQLite). `delivered_once`, `lost`, "
         "`duplicates` (avoidable: received twice although the outcome was known or the provider could be "
         "asked), `duplicates_unavoidable` (the provider accepted, the outcome could not be recorded - worker "
         "killed or answer lost - and the provider cannot be asked: SMTP, Meta, webhooks; by cause). "
         "docs/reliability.md explains the bound.")


def run(config: Config) -> tuple[dict[str, Any], str | None]:
    rng = random.Random(config.seed)
    started = time.time()
    folder = Path(tempfile.mkdtemp(prefix="notifier-chaos-"))
    (folder / "logs").mkdir()
    (folder / "tenants").mkdir()
    faults = FaultLog()
    keep = config.keep
    load = LoadSampler()
    running: list[Processes] = []
    harness_nice = _raise_own_priority() if config.starve else 0
    try:
        nice = STARVED_NICE if config.starve else 0
        with PrivatePostgres(database="chaos", nice=nice) as pg, PrivateRedis(nice=nice) as redis_server, \
                flapping_provider_process(latency_s=0.02, seed=config.seed) as one, \
                flapping_provider_process(latency_s=0.02, seed=config.seed + 4, **SECOND) as two, \
                FlappingMailSink(config.seed + 1, "" if config.plain_smtp else MAIL_IDEMPOTENCY_HEADER) as mail, \
                FlappingHookSink(config.seed + 2) as hooks, \
                CpuHogs(config.hogs), load:
            providers = TwoAccounts(one, two)
            try:
                figures, anomalies = _run(config, rng, folder, faults, pg, redis_server, providers, mail, hooks,
                                          running)
            finally:  # an interrupted run leaves nothing behind (a paused worker included)
                for procs in running:
                    procs.stop()
        figures["seconds"] = round(time.time() - started, 1)
        figures["started_utc"] = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M UTC")
        figures["load_average"] = load.summary()
        figures["email_relay"] = ("plain SMTP: cannot drop a repeated message" if config.plain_smtp else
                                  f"drops a repeated message by its {MAIL_IDEMPOTENCY_HEADER}")
        figures["what_can_reach_someone_twice_by_channel"] = {
            channel: WHY_UNAVOIDABLE["email (plain SMTP)" if channel == "email" and config.plain_smtp else channel]
            for channel in ("email", "sms", "whatsapp", "staff", "activity")}
        figures["starved"] = {"cpu_hogs": config.hogs, "cores": os.cpu_count(), "pauses": config.pauses,
                              "pause_s": [round(LEASE_S + 3, 1), round(LEASE_S + 10, 1)],
                              "nice": {"harness": harness_nice, "pipeline_and_hogs": harness_nice + STARVED_NICE}
                              } if config.starve else None
        keep = keep or anomalies
        return figures, str(folder) if keep else None
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def _raise_own_priority() -> int:
    """The harness (this process, and the providers and sinks it starts) one step above the rest of
    the machine where it may (as root), so that the pipeline and the hogs, STARVED_NICE below it,
    compete with other work at the ordinary priority; elsewhere they run below it. The niceness."""
    try:
        return os.nice(-STARVED_NICE)
    except PermissionError:
        return os.nice(0)


class CpuHogs:
    """`n` busy processes (a loop with nothing in it) for the length of the run: the machine
    oversubscribed, the pipeline's processes waiting for a core like everyone else."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "CpuHogs":
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=niced(STARVED_NICE))
                      for _ in range(self.n)]
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


class LoadSampler(Ticker):
    """The machine's 1-minute load average before the run and every 5 s during it."""

    def __init__(self) -> None:
        super().__init__(5.0, "load")
        self.before = os.getloadavg()[0]
        self.samples: list[float] = []

    def __enter__(self) -> "LoadSampler":
        self.before = os.getloadavg()[0]
        super().__enter__()
        return self

    def tick(self) -> None:
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        during = self.samples or [self.before]
        return {"before": round(self.before, 2), "mean": round(sum(during) / len(during), 2),
                "max": round(max(during), 2)}


def _env(folder: Path, pg: PrivatePostgres, redis_url: str, providers: Any, mail: FlappingMailSink,
         web_port: int) -> dict[str, str]:
    second = urlsplit(providers.two.url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env.update({
        "PYTHONPATH": str(ROOT), "NOTIFIER_DATABASE_URL": pg.url, "NOTIFIER_BROKER_URL": redis_url,
        "NOTIFIER_EVENTS_URL": redis_url, "NOTIFIER_DATA_DIR": str(folder / "data"),
        "NOTIFIER_TENANTS_PATH": str(folder / "tenants"), "NOTIFIER_LOG_LEVEL": "INFO",
        "NOTIFIER_SMTP_HOST": "127.0.0.1", "NOTIFIER_SMTP_PORT": str(mail.port),
        "NOTIFIER_MAIL_FROM": f"Salon Chaos <notifier@{MAIL_DOMAIN}>",
        "NOTIFIER_TWILIO_ACCOUNT_SID": providers.account_sid, "NOTIFIER_TWILIO_AUTH_TOKEN": providers.auth_token,
        "NOTIFIER_TWILIO_FROM": "+4930123456", "NOTIFIER_TWILIO_API_URL": providers.url,
        "NOTIFIER_WHATSAPP_PROVIDER": "meta", "NOTIFIER_META_TOKEN": providers.meta_token,
        "NOTIFIER_META_PHONE_NUMBER_ID": "1055", "NOTIFIER_META_API_URL": providers.url,
        "NOTIFIER_META_APP_SECRET": "chaos-app-secret", "NOTIFIER_WEBHOOK_SECRET": "chaos-webhook-secret",
        "NOTIFIER_LINK_SECRET": "chaos-link-secret-0123456789",
        "NOTIFIER_PUBLIC_URL": f"http://127.0.0.1:{web_port}",
        "NOTIFIER_PROVIDER_TIMEOUT_S": str(TIMEOUT_S), "NOTIFIER_SMTP_TIMEOUT_S": str(TIMEOUT_S),
        "NOTIFIER_WEBHOOK_TIMEOUT_S": str(TIMEOUT_S), "NOTIFIER_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32",
        # compressed for a run of minutes: sweeps every second, claims back after 30 s, retries
        # after 2 s doubling up to 20 s (production: 2 s, 120 s, 30 s to an hour)
        "NOTIFIER_SWEEP_INTERVAL_S": "1", "NOTIFIER_SWEEP_BATCH": "2000", "NOTIFIER_DISPATCH_BATCH": str(DISPATCH_BATCH),
        "NOTIFIER_DISPATCH_CONCURRENCY": str(DISPATCH_CONCURRENCY), "NOTIFIER_LEASE_S": str(LEASE_S), "NOTIFIER_MAX_ATTEMPTS": "10",
        "NOTIFIER_RETRY_BASE_S": "2", "NOTIFIER_RETRY_MAX_S": "20", "NOTIFIER_HOUSEKEEPING_INTERVAL_S": "60",
        # SMS has a second account on the second loopback Twilio API: it carries SMS while the first is down
        "NOTIFIER_SMS_ACCOUNTS": f"http://{SECOND['account_sid']}:{SECOND['auth_token']}@{second.netloc}?name=second",
        "NOTIFIER_FAILOVER_COOLDOWN_S": str(COOLDOWN_S),
        "NOTIFIER_SMTP_IDEMPOTENCY_HEADER": mail.idempotency_header,
    })
    return env


def _run(config: Config, rng: random.Random, folder: Path, faults: FaultLog, pg: PrivatePostgres,
         redis_server: PrivateRedis, providers: TwoAccounts, mail: FlappingMailSink, hooks: FlappingHookSink,
         running: list[Processes]) -> tuple[dict[str, Any], bool]:
    import redis as redis_lib
    import requests

    (folder / "tenants" / f"{TENANT}.yaml").write_text(tenant_yaml(hooks.url))
    web_port = free_port()
    env = _env(folder, pg, redis_server.url, providers, mail, web_port)
    subprocess.run([sys.executable, "-m", "notifier.cli", "init"], env=env, cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    procs = Processes(env, folder / "logs", faults, nice=STARVED_NICE if config.starve else 0)
    running.append(procs)
    for name in ("ingest-1", "ingest-2"):
        procs.start(name, "ingest")
    for name in ("beat-1", "beat-2"):
        procs.start(name, "beat")
    for name in ("worker-a", "worker-b"):
        procs.start(name, "worker", "-Q", WORKER_QUEUES, "-c", str(CHILDREN), "-n", f"{name}@%h")
    procs.start("web", "web", "--port", str(web_port))
    web_url = f"http://127.0.0.1:{web_port}"
    deadline = time.monotonic() + 60
    while True:  # the web app answers (callbacks need it); the others connect as they come
        try:
            if requests.get(f"{web_url}/health", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        procs.supervise()
        if time.monotonic() > deadline:
            raise RuntimeError("the web app did not come up")
        time.sleep(0.2)

    bookings = max(config.waves, round(config.messages / _estimate_per_booking()))
    base = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    work = make_workload(bookings, waves=config.waves, wave_every_s=config.spread_s / max(config.waves - 1, 1),
                         base=base, seed=config.seed)
    faults.counts["event_duplicated"] = work.duplicates
    faults.counts["event_reordered"] = work.displaced
    active_s = config.spread_s + LAST_DUE_S
    t0 = base.timestamp()
    stop = threading.Event()
    callbacks = Callbacks(web_url, providers, tokens=providers.tokens, app_secret="chaos-app-secret",
                          seed=config.seed + 3)
    published: list[float] = []

    def publisher() -> None:
        client = redis_lib.Redis.from_url(redis_server.url, socket_timeout=5, socket_connect_timeout=2)
        for w, bodies in enumerate(work.waves):
            _sleep_until(t0 + w * work.wave_every_s, stop)
            while not stop.is_set():
                try:  # a booking system publishing while Redis restarts tries again
                    for i in range(0, len(bodies), 500):
                        client.rpush("notifier.events", *bodies[i:i + 500])
                    break
                except redis_lib.RedisError:
                    time.sleep(0.2)
                    # a half-published wave is published again from its start: duplicates by event_id
            published.append(time.time())

    def schedule() -> list[tuple[float, str, Callable[[], None]]]:
        plan: list[tuple[float, str, Callable[[], None]]] = []
        for k in range(config.kills):
            at = 5 + (active_s - 10) * (k + rng.random()) / config.kills
            plan.append((at, "kill", lambda: _kill(procs, rng, faults)))
        plan.append((active_s * rng.uniform(0.3, 0.6), "pg", lambda: _pg_outage(pg, faults, 10.0)))
        plan.append((active_s * rng.uniform(0.15, 0.3), "redis", lambda: _redis_restart(redis_server, faults, False)))
        plan.append((active_s * rng.uniform(0.65, 0.85), "redis", lambda: _redis_restart(redis_server, faults, True)))
        plan.append((active_s * rng.uniform(0.2, 0.7), "outage", lambda: _provider_outage(providers, faults, OUTAGE_S)))
        for s in range(config.storms):
            at = active_s * (s + rng.random()) / max(config.storms, 1)
            plan.append((at, "storm", lambda: _storm(providers, mail, hooks, faults, 8.0)))
        for k in range(config.pauses):  # each over (resumed) before the faults end
            at = 5 + (active_s - 60) * (k + rng.random()) / config.pauses
            seconds, whole = LEASE_S + rng.uniform(3.0, 10.0), rng.random() < 0.4
            plan.append((at, "pause", lambda s=seconds, w=whole: _pause(procs, rng, faults, s, whole=w)))
        return sorted(plan, key=lambda item: item[0])

    outages: list[threading.Thread] = []

    def chaos() -> None:
        for at, what, action in schedule():
            _sleep_until(t0 + at, stop)
            if stop.is_set():
                return
            if what in ("pg", "redis", "storm", "pause", "outage"):
                outages.append(threading.Thread(target=action, daemon=True))
                outages[-1].start()
            else:
                action()

    def call_back() -> None:
        while not stop.is_set():
            try:
                callbacks.discover()
                callbacks.post_due()
            except Exception as exc:  # noqa: BLE001 - keep calling back; the provider process is ours
                print(f"chaos: callbacks: {exc!r}", file=sys.stderr)
            stop.wait(3.0)

    for sink in (mail, hooks):
        sink.flap(**CALM)
    providers.flap(hang_s=HANG_S, **CALM)
    threads = [threading.Thread(target=f, daemon=True, name=f.__name__) for f in (publisher, chaos, call_back)]
    for thread in threads:
        thread.start()
    while time.time() < t0 + active_s:
        procs.supervise()
        time.sleep(0.5)
    threads[1].join()  # the last fault is under way
    for outage in outages:
        outage.join()  # and over: the database and Redis back, every paused worker resumed
    for sink in (mail, hooks):
        sink.flap(**OFF)
    providers.flap(**OFF)
    faults.note("faults_end")
    threads[0].join()

    # drain: what is due gets sent, claims of killed workers come back, callbacks arrive
    from notifier.store.sql import Store, make_engine

    store = Store(make_engine(pg.url))
    settled_since = None
    all_sent = False
    drain_deadline = time.time() + config.drain_s
    while time.time() < drain_deadline:
        procs.supervise()
        try:
            open_ = _open_messages(store)
        except Exception:  # noqa: BLE001 - the database may still be restarting
            open_ = -1
        if open_ == 0 and not all_sent:
            all_sent = True
            faults.note("all_due_messages_recorded")
        if open_ == 0 and callbacks.pending == 0:
            settled_since = settled_since or time.time()
            if time.time() - settled_since > 5:
                break
        else:
            settled_since = None
        time.sleep(1.0)
    stop.set()
    threads[2].join()
    callbacks.discover()
    while callbacks.post_due(everything=True) and time.time() < drain_deadline + 60:
        time.sleep(1.0)
    callbacks.pool.shutdown()
    faults.note("drained", open_messages=_open_messages(store))
    procs.stop()

    injected = dict(faults.counts)
    for kind, n in providers.faults().items():
        injected[f"provider_{kind}"] = n
    for prefix, sink in (("smtp", mail), ("webhook", hooks)):
        for kind, n in sink.injected.items():
            injected[f"{prefix}_{kind}"] = n
    injected["callback_duplicated"] = callbacks.counts["duplicated"]
    injected["callback_reordered"] = callbacks.counts["reordered"]

    provider_log = providers.received()
    verdict = verify(store, work, folder, provider_log, mail.snapshot(), hooks.snapshot(), faults, callbacks,
                     mail_drops_repeats=bool(mail.idempotency_header))
    store.engine.dispose()
    figures = {
        "expected": verdict["expected"], "delivered_once": verdict["delivered_once"], "lost": verdict["lost"],
        "duplicates": verdict["duplicates"], "duplicates_unavoidable": verdict["duplicates_unavoidable"],
        "duplicates_unavoidable_by_cause": verdict["unavoidable_by_cause"],
        "duplicates_by_cause": verdict["avoidable_by_cause"],
        "duplicates_by_channel": verdict["duplicates_by_channel"],
        "duplicates_unavoidable_by_channel": verdict["unavoidable_by_channel"],
        "repeats_dropped_by_the_receiver": verdict["receiver_dropped"],  # webhooks; email at its relay
        "duplicates_unavoidable_per_kill_max": verdict["unavoidable_per_kill_max"],
        "duplicates_unavoidable_bound_per_kill": unavoidable_bound_per_kill(),
        "expected_by_channel": verdict["expected_by_channel"], "failed_recorded": verdict["failed"],
        "sms_found_at_provider_not_resent": verdict["reconciled"],
        # which account carried the SMS (provider one was down for OUTAGE_S): failover, issue 23
        "sms_by_account": dict(Counter("twilio" if r["account_sid"] == providers.account_sid else "second"
                                       for r in provider_log if r["provider"] == "twilio")),
        "sms_by_account_during_outage": _during_outage(provider_log, faults, providers.account_sid),
        "unexpected_received": verdict["unexpected"], "store_mismatches": verdict["store_mismatches"],
        "status_callbacks": {"posted": callbacks.counts["posted"], "refused_then_retried": callbacks.counts["refused"],
                             "final_state_wrong": verdict["callback_state_wrong"]},
        "events": {"unique": work.unique_events, "published": sum(len(w) for w in work.waves),
                   "not_processed": verdict["events_not_processed"], "dead_letters": verdict["dead_letters"],
                   "late_for_their_messages": verdict["late_ingest"]},
        "faults_injected": injected,
        "unexpected_process_exits": Counter(e["process"].rsplit("-", 1)[0] for e in procs.unexpected_exits),
        "processes": {"ingesters": 2, "beats": 2, "worker_pools": 2, "children_per_pool": CHILDREN, "web": 1},
        "sends_in_flight_per_child": DISPATCH_CONCURRENCY, "lease_s": LEASE_S,
        "seed": config.seed,
    }
    figures["unexpected_process_exits"] = dict(figures["unexpected_process_exits"])
    anomalies = bool(verdict["lost"] or verdict["duplicates"] or verdict["unexpected"] or verdict["store_mismatches"]
                     or verdict["callback_state_wrong"] or verdict["events_not_processed"] or procs.unexpected_exits)
    report = {"figures": figures, "details": verdict["details"], "faults": faults.entries,
              "unexpected_exits": procs.unexpected_exits}
    (folder / "report.json").write_text(json.dumps(report, indent=1, default=str))
    return figures, anomalies


def unavoidable_bound_per_kill() -> int:
    """What one SIGKILL (or pause past the lease) can cost at most on channels that cannot be
    asked: per pool child, the messages whose provider call was under way or whose outcome was
    waiting for the commit in progress, all of them claims of the one batch the child holds at a
    time; a whole worker takes its CHILDREN children with it."""
    return CHILDREN * DISPATCH_BATCH


def _sleep_until(moment: float, stop: threading.Event) -> None:
    while not stop.is_set() and time.time() < moment:
        stop.wait(min(0.5, moment - time.time()))


def _kill(procs: Processes, rng: random.Random, faults: FaultLog) -> None:
    deadline = time.monotonic() + 5
    while not (standing := [n for n in ("worker-a", "worker-b") if n not in procs.expected_down]):
        if time.monotonic() > deadline:  # both down, waiting for their restart: a kill fewer
            return
        time.sleep(0.2)
    name = rng.choice(standing)
    if rng.random() < 0.65:
        pid = procs.kill_child(name, rng)
        if pid is not None:
            faults.note("worker_child_sigkill", count=True, process=name, pid=pid)
            return
    pid = procs.kill_all(name)
    faults.note("worker_sigkill", count=True, process=name, pid=pid)
    delay = rng.uniform(1.0, 3.0)
    threading.Timer(delay, lambda: procs.restart(name)).start()


def _pause(procs: Processes, rng: random.Random, faults: FaultLog, seconds: float, *, whole: bool) -> None:
    """A worker process stopped (SIGSTOP) for `seconds`, longer than the lease, then resumed:
    its claims lapse and are handed out again; when it resumes it must not send what it no
    longer holds."""
    standing = [n for n in ("worker-a", "worker-b") if n not in procs.expected_down]
    if not standing:
        return
    name = rng.choice(standing)
    paused = procs.pause(name, rng, whole=whole)
    if paused is None:
        return
    pid, whole = paused
    faults.note("worker_paused" if whole else "worker_child_paused", count=True, process=name, pid=pid,
                seconds=round(seconds, 1))
    time.sleep(seconds)
    procs.resume(pid, whole)
    faults.note("worker_resumed", process=name, pid=pid)


def _pg_outage(pg: PrivatePostgres, faults: FaultLog, seconds: float) -> None:
    faults.note("postgres.down", mode="fast")
    faults.counts["postgres_stopped_10s"] += 1
    pg.stop("fast")
    time.sleep(seconds)
    pg.start()
    faults.note("postgres.up")


def _redis_restart(server: PrivateRedis, faults: FaultLog, crash: bool) -> None:
    kind = "redis_crash_restart" if crash else "redis_restart"
    faults.note("redis.down", how="SIGKILL" if crash else "SIGTERM")
    faults.counts[kind] += 1
    server.stop(crash=crash)
    time.sleep(1.0)
    server.start()
    faults.note("redis.up")


def _provider_outage(providers: TwoAccounts, faults: FaultLog, seconds: float) -> None:
    """Provider one (Twilio's SMS account and Meta's API) refuses connections for `seconds`."""
    import requests

    faults.note("provider_outage.down", account="twilio", mode="refuse")
    faults.counts["provider_outage_refused_20s"] += 1
    providers.one.outage("refuse", for_s=seconds)  # it comes back by itself: refused, it cannot be told to
    time.sleep(seconds)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(f"{providers.one.url}/_fake/faults", timeout=2)
            break
        except requests.RequestException:
            time.sleep(0.2)
    providers.one.flap(**providers.rates)  # what it missed while it was down (a storm's end)
    faults.note("provider_outage.up")


def _during_outage(provider_log: list[dict[str, Any]], faults: FaultLog, first_sid: str) -> dict[str, int]:
    """The SMS each account took while provider one was down (refusing connections)."""
    windows = faults.window("provider_outage")
    return dict(Counter("twilio" if r["account_sid"] == first_sid else "second" for r in provider_log
                        if r["provider"] == "twilio" and any(a <= r["received_at"] <= b for a, b in windows)))


class TwoAccounts:
    """The run's two provider processes as one: `one` is Twilio (SMS) and Meta (WhatsApp), `two`
    a second SMS account on Twilio's API. Flapping, receipts and faults are both's."""

    def __init__(self, one: Any, two: Any) -> None:
        self.one, self.two = one, two
        self.url, self.account_sid, self.auth_token, self.meta_token = one.url, one.account_sid, one.auth_token, \
            one.meta_token
        self.tokens = {one.account_sid: one.auth_token, two.account_sid: two.auth_token}
        self.rates: dict[str, float] = {}  # the flapping both were last told

    def received(self) -> list[dict[str, Any]]:
        return self.one.received() + self.two.received()

    def flap(self, **rates: float) -> None:
        """Both flap alike; provider one, down (refusing connections), is told once it is back."""
        import requests

        self.rates = {**self.rates, **rates}
        self.two.flap(**rates)
        try:
            self.one.flap(**rates)
        except requests.ConnectionError:
            pass  # _provider_outage applies `rates` when it is back

    def faults(self) -> dict[str, int]:
        return dict(Counter(self.one.faults()) + Counter(self.two.faults()))


def _storm(providers: Any, mail: Flappy, hooks: Flappy, faults: FaultLog, seconds: float) -> None:
    faults.note("provider_storm.begin")
    faults.counts["provider_storm_8s"] += 1
    providers.flap(**STORM)
    mail.flap(**STORM)
    hooks.flap(**STORM)
    time.sleep(seconds)
    providers.flap(**CALM)
    mail.flap(**CALM)
    hooks.flap(**CALM)
    faults.note("provider_storm.end")


def _open_messages(store: Any) -> int:
    from sqlalchemy import func, select

    from notifier.store import schema as t

    c = t.messages.c
    with store.engine.connect() as conn:  # due, or tried and waiting (a retry, a wait for the provider's reports)
        return conn.execute(select(func.count()).where(c.state.in_(["planned", "queued", "sending"]),
                                                       (c.due_at <= datetime.now(UTC)) | (c.attempts > 0))
                            ).scalar_one()


# --- what should have happened, and what did -------------------------------------------------------------

def _dedup_key(c: Any) -> Any:
    """A message's identity as one string, tenant/booking/key (what its unique index says)."""
    return (c.tenant_id + "/" + c.booking_id + "/" + c.key).label("dedup_key")


def reference_plan(work: Workload, folder: Path) -> dict[str, dict[str, Any]]:
    """The messages the events imply: each event once, in order, applied to an SQLite store with
    no faults. dedup_key -> the planned message."""
    from sqlalchemy import select

    from notifier.services import apply_events, load_tenants
    from notifier.store import schema as t
    from notifier.store.sql import Store, make_engine

    store = Store(make_engine(f"sqlite:///{folder / 'reference.db'}"))
    store.migrate()
    load_tenants(store, folder / "tenants", now=work.base)
    for w, bodies in enumerate(work.canonical):
        apply_events(store, bodies, now=work.wave_at(w), source="reference")
    c = t.messages.c
    with store.engine.connect() as conn:
        rows = conn.execute(select(_dedup_key(c), c.booking_id, c.key, c.kind, c.channel, c.due_at)
                            .where(c.state == "planned")).all()
    store.engine.dispose()
    return {r.dedup_key: dict(r._mapping) for r in rows}


def verify(store: Any, work: Workload, folder: Path, provider_log: list[dict[str, Any]],
           mail_log: list[dict[str, Any]], hook_log: list[dict[str, Any]], faults: FaultLog,
           callbacks: Callbacks, *, mail_drops_repeats: bool = False) -> dict[str, Any]:
    from sqlalchemy import func, select

    from notifier.domain.delivery import PROVIDER_STATUS
    from notifier.store import schema as t

    expected = reference_plan(work, folder)
    m, a, cu, b = t.messages.c, t.send_attempts.c, t.customers.c, t.bookings.c
    with store.engine.connect() as conn:
        live = {r.dedup_key: dict(r._mapping) for r in conn.execute(
            select(m.id, _dedup_key(m), m.booking_id, m.kind, m.channel, m.state, m.attempts, m.provider_message_id,
                   m.sent_at, m.error, cu.phone)
            .join(t.bookings, (b.tenant_id == m.tenant_id) & (b.id == m.booking_id))
            .join(t.customers, (cu.tenant_id == b.tenant_id) & (cu.id == b.customer_id)))}
        attempts: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for r in conn.execute(select(a.message_id, a.started_at, a.outcome, a.provider_code, a.duration_ms)
                              .order_by(a.id)):
            attempts[r.message_id].append({"started_at": r.started_at.timestamp(), "outcome": r.outcome,
                                           "code": r.provider_code, "ms": r.duration_ms})
        processed = set(conn.execute(select(t.processed_events.c.event_id)).scalars())
        processed_at = {r.event_id: r.processed_at for r in conn.execute(
            select(t.processed_events.c.event_id, t.processed_events.c.processed_at))}
        dead = conn.execute(select(func.count()).select_from(t.dead_letters)).scalar_one()
        sent_entries = Counter(conn.execute(select(t.timeline.c.message_id).where(
            t.timeline.c.kind == "message.sent")).scalars())
        written_down: dict[int, list[float]] = defaultdict(list)  # provider answers' receipts (notifier/receipts.py)
        for message_id, at in conn.execute(select(t.receipts.c.message_id, t.receipts.c.received_at)):
            written_down[message_id].append(at.timestamp())

    # receipts, grouped into logical messages: per recipient and text, the link tokens' time stamps
    # left out (a message retried after a temporary failure is rendered with its new due time);
    # each booking has its own customer and at most one message per kind and channel
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in provider_log:
        if r["provider"] == "twilio":
            groups[("sms", r["to"], _unstamped(r["body"]))].append({**r, "pid": r["sid"]})
        else:
            groups[("whatsapp", r["to"], r["template"], tuple(_unstamped(p) for p in r["params"]))].append(
                {**r, "pid": r["id"]})
    by_pid = {}
    for key, receipts in groups.items():
        for receipt in receipts:
            by_pid[receipt["pid"]] = key
    receiver_dropped: Counter[str] = Counter()  # repeats the receiver recognised by their key and dropped
    mail_by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in mail_log:
        if r.get("repeat"):
            receiver_dropped["email"] += 1
        else:
            mail_by_id[r["message_id"]].append({**r, "pid": r["message_id"]})
    hooks_by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in hook_log:
        if r.get("repeat"):
            receiver_dropped[r["channel"]] += 1
        else:
            hooks_by_key[r["key"]].append({**r, "pid": r["key"]})

    used_groups: set[tuple] = set()
    matched: dict[str, list[dict[str, Any]]] = {}
    unmatched_rows: list[str] = []
    for key, exp in expected.items():
        row = live.get(key)
        channel = exp["channel"]
        if channel == "email":
            mid = f"<{key.replace('/', '.')}@{MAIL_DOMAIN}>"
            matched[key] = mail_by_id.pop(mid, [])
        elif channel in ("staff", "activity"):
            matched[key] = hooks_by_key.pop(key, [])
        else:
            group = by_pid.get(row["provider_message_id"]) if row and row["provider_message_id"] else None
            if group is None:
                unmatched_rows.append(key)
                matched[key] = []
            else:
                used_groups.add(group)
                matched[key] = groups[group]
    # SMS and WhatsApp the store does not know it sent: pair them with expected rows of that phone
    orphans: dict[tuple[str, str], list[tuple]] = defaultdict(list)
    for group in groups:
        if group not in used_groups:
            orphans[(group[0], group[1].removeprefix("whatsapp:"))].append(group)
    for key in unmatched_rows:
        row, channel = live.get(key), expected[key]["channel"]
        phone = (row or {}).get("phone") or ""
        candidates = orphans.get((channel, phone), [])
        if candidates:
            group = candidates.pop()
            used_groups.add(group)
            matched[key] = groups[group]
    rows_of_phone: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in live.values():
        rows_of_phone[(row["channel"], row["phone"] or "")].append(row)
    unexpected = [{"channel": g[0], "group": list(g[1:]), "receipts": v,
                   "store_rows_of_that_phone": [
                       {k: r[k] for k in ("id", "dedup_key", "state", "attempts", "provider_message_id", "error")}
                       | {"expected": r["dedup_key"] in expected, "attempt_rows": attempts.get(r["id"], [])}
                       for r in rows_of_phone.get((g[0], g[1].removeprefix("whatsapp:")), [])]}
                  for g, v in groups.items() if g not in used_groups]
    unexpected += [{"channel": "email", "message_id": k, "receipts": len(v)} for k, v in mail_by_id.items()]
    unexpected += [{"channel": "webhook", "key": k, "receipts": len(v)} for k, v in hooks_by_key.items()]

    kills = faults.kills() + faults.pauses()  # a worker paused past its lease is gone for the others
    pg_down = faults.window("postgres")
    details: dict[str, list[dict[str, Any]]] = {"lost": [], "duplicates": [], "duplicates_unavoidable": [],
                                                "store_mismatches": [], "callback_state_wrong": []}
    counts: Counter[str] = Counter()
    avoidable_causes: Counter[str] = Counter()
    unavoidable_causes: Counter[str] = Counter()
    duplicates_by_channel: dict[str, Counter[str]] = {"avoidable": Counter(), "unavoidable": Counter()}
    unavoidable_by_channel: dict[str, Counter[str]] = defaultdict(Counter)
    by_channel: Counter[str] = Counter()
    failed = 0
    for key, receipts in matched.items():
        exp, row = expected[key], live.get(key) or {}
        by_channel[exp["channel"]] += 1
        if row.get("state") == "failed":
            failed += 1
        if not receipts:
            counts["lost"] += 1
            details["lost"].append({"dedup_key": key, "message_id": row.get("id"), "channel": exp["channel"],
                                    "store_state": row.get("state"), "error": row.get("error"),
                                    "attempts": row.get("attempts"), "attempt_rows": attempts.get(row.get("id"), [])})
            continue
        pids = {r["pid"] for r in receipts}
        if row.get("state") not in ("sent", "delivered", "read") or (
                exp["channel"] in ("sms", "whatsapp") and row.get("provider_message_id") not in pids):
            details["store_mismatches"].append({"dedup_key": key, "message_id": row.get("id"),
                                                "store_state": row.get("state"),
                                                "provider_message_id": row.get("provider_message_id"),
                                                "received": len(receipts)})
        elif sent_entries.get(row["id"], 0) != 1:
            details["store_mismatches"].append({"dedup_key": key, "message_id": row["id"],
                                                "timeline_sent_entries": sent_entries.get(row["id"], 0)})
        if len(receipts) == 1:
            counts["delivered_once"] += 1
            continue
        evidence = _duplicate_evidence(key, exp["channel"], row, receipts, attempts.get(row.get("id"), []),
                                       kills, pg_down)
        # the status reports of the copies, as posted (when, status, taken): they name the message,
        # and a copy reported before its message was claimed again is found by them
        evidence["reports"] = {r["pid"]: callbacks.posts.get(r["pid"], []) for r in receipts
                               if exp["channel"] in ("sms", "whatsapp")}
        first, second = evidence["receipts"][0], evidence["receipts"][1]
        reported = [at for at, _, taken in callbacks.posts.get(first["pid"], []) if taken]
        if evidence["unavoidable"] and exp["channel"] in REPORTS_NAME_THE_MESSAGE and reported \
                and min(reported) < second["at"] - 1.0:  # dispatch could have found the first copy by its report
            evidence.update(unavoidable=False, cause=f"{evidence['cause']}, reported before the resend")
        written = written_down.get(row.get("id"), [])
        if evidence["cause"] == "worker_killed" and any(at < second["at"] - 1.0 for at in written):
            # the killed worker had written the first copy's answer down: its next claim could have found it
            evidence.update(unavoidable=False, cause="worker_killed, receipt written before the resend")
        if evidence["unavoidable"] and exp["channel"] == "email" and mail_drops_repeats:
            # the relay drops a repeated key: a second delivery means the key was not sent, or changed
            evidence.update(unavoidable=False, cause=f"{evidence['cause']}, the relay did not drop the repeat")
        if evidence["unavoidable"]:
            counts["duplicates_unavoidable"] += 1
            unavoidable_causes[evidence["cause"]] += 1
            unavoidable_by_channel[exp["channel"]][evidence["cause"]] += 1
            details["duplicates_unavoidable"].append(evidence)
        else:
            counts["duplicates"] += 1
            avoidable_causes[evidence["cause"]] += 1
            details["duplicates"].append(evidence)
        duplicates_by_channel["unavoidable" if evidence["unavoidable"] else "avoidable"][exp["channel"]] += 1

    # status callbacks: every message ends in the furthest status its provider reported (N5)
    rows_by_pid = {r["provider_message_id"]: r for r in live.values() if r["provider_message_id"]}
    for pid, status in callbacks.final.items():
        row = rows_by_pid.get(pid)
        want = PROVIDER_STATUS[status].value
        if row is not None and row["state"] != want:
            details["callback_state_wrong"].append({
                "message_id": row["id"], "provider_message_id": pid, "want": want, "store_state": row["state"],
                "callbacks_posted": callbacks.posts.get(pid, []), "attempt_rows": attempts.get(row["id"], []),
                "received_at": next((r["received_at"] for r in provider_log if r.get("sid", r.get("id")) == pid),
                                    None)})

    # events: each one processed; each booking's events in before its first message fell due
    unique_ids = {json.loads(body)["event_id"]: w for w, bodies in enumerate(work.canonical) for body in bodies}
    not_processed = [e for e in unique_ids if e not in processed]
    late = sum(1 for e, w in unique_ids.items() if e in processed_at
               and processed_at[e] > work.wave_at(w) + timedelta(seconds=INFO_DELAY_S))
    # the bound: a killed process takes with it the outcomes it had not committed yet, at most the
    # claims of the batch it held, per pool child
    per_kill: Counter[float] = Counter()
    for d in details["duplicates_unavoidable"]:
        if d["cause"] in ("worker_killed", "worker_paused") and d["kills_near_first_copy"]:
            per_kill[d["kills_near_first_copy"][0]["at"]] += 1
    return {
        "unavoidable_per_kill_max": max(per_kill.values(), default=0),
        "reconciled": sum(1 for rows in attempts.values() for r in rows if r["outcome"] == "reconciled"),
        "expected": len(expected), "delivered_once": counts["delivered_once"], "lost": counts["lost"],
        "duplicates": counts["duplicates"], "duplicates_unavoidable": counts["duplicates_unavoidable"],
        "avoidable_by_cause": dict(avoidable_causes), "unavoidable_by_cause": dict(unavoidable_causes),
        "duplicates_by_channel": {k: dict(v) for k, v in duplicates_by_channel.items()},
        "unavoidable_by_channel": {channel: {"by_cause": dict(causes), "why": WHY_UNAVOIDABLE[
            channel if channel != "email" or mail_drops_repeats else "email (plain SMTP)"]}
                                   for channel, causes in sorted(unavoidable_by_channel.items())},
        "receiver_dropped": dict(receiver_dropped),
        "expected_by_channel": dict(by_channel), "failed": failed, "unexpected": len(unexpected),
        "store_mismatches": len(details["store_mismatches"]),
        "callback_state_wrong": len(details["callback_state_wrong"]),
        "events_not_processed": len(not_processed), "dead_letters": dead, "late_ingest": late,
        "details": {**details, "unexpected": unexpected[:200], "events_not_processed": not_processed[:200]},
    }


LINK_TOKEN = re.compile(r"(/l/[A-Za-z0-9_-]+)\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def _unstamped(text: str | None) -> str:
    """A message's text with its links' time stamps and signatures left out."""
    return LINK_TOKEN.sub(r"\1", text or "")


def _duplicate_evidence(key: str, channel: str, row: dict[str, Any], receipts: list[dict[str, Any]],
                        attempt_rows: list[dict[str, Any]], kills: list[dict[str, Any]],
                        pg_down: list[tuple[float, float]]) -> dict[str, Any]:
    """Why a message arrived twice, from the timeline of the run: the first copy's lost answer,
    a worker killed between the copies with an attempt left unrecorded, or the database down
    when the first outcome was to be recorded."""
    receipts = sorted(receipts, key=lambda r: r["received_at"])
    first = receipts[0]["received_at"]
    unrecorded = (row.get("attempts") or 0) - len(attempt_rows)
    # the first copy's outcome is recorded within a second or two of its receipt (the commit under
    # way, then its own); a copy answered slowly was received up to slow_s after its sender died
    db_down = [w for w in pg_down if w[0] - RECORD_WITHIN_S <= first <= w[1]]
    # with the database down the sender holds the outcome, and its claim, until it is back (D2):
    # a kill any time before then loses the outcome just as a kill at the copy does
    recorded_by = max([first + RECORD_WITHIN_S] + [w[1] + RECORD_WITHIN_S for w in db_down])
    killed = [k for k in kills if first - RECEIPT_AFTER_KILL_S <= k["at"] <= recorded_by]
    # the provider took the first copy and the sender saw a timeout: a lost answer, injected as
    # such, or a slow answer that came too late for the client on a busy machine
    timed_out = any(a["outcome"] == "temporary" and a["code"] in ("timeout", "connection")
                    and first - 1 <= a["started_at"] <= first + TIMEOUT_S + HANG_S for a in attempt_rows)
    # a kill before a database outage: since dispatch waits out an outage while its claims hold
    # (D2), an outcome lost in an outage is one whose worker was killed while it waited
    if any(r.get("fault") == "lost_answer" for r in receipts[:-1]) or timed_out:
        cause = "answer_lost"
    elif killed and unrecorded > 0:  # killed, or paused past the lease: either way gone for the others
        cause = "worker_killed" if any(k["kind"].endswith("sigkill") for k in killed) else "worker_paused"
    elif db_down and unrecorded > 0:
        cause = "database_down_when_recording"
    else:
        cause = "unexplained"
    unavoidable = channel not in ASKABLE and cause in ("answer_lost", "worker_killed", "worker_paused")
    return {"dedup_key": key, "message_id": row.get("id"), "channel": channel, "cause": cause,
            "unavoidable": unavoidable, "receipts": [{"at": r["received_at"], "fault": r.get("fault"),
                                                      "pid": r["pid"]} for r in receipts],
            "store": {"state": row.get("state"), "attempts": row.get("attempts"),
                      "provider_message_id": row.get("provider_message_id")},
            "attempt_rows": attempt_rows, "unrecorded_attempts": unrecorded,
            "kills_near_first_copy": [{"at": k["at"], "kind": k["kind"], "process": k.get("process"),
                                       "pid": k.get("pid"), "resumed_at": k.get("resumed_at")} for k in killed],
            "postgres_down": db_down}
