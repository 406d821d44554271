"""Finding K1 (docs/reliability.md; `python -m bench chaos`): a worker outlives Redis crashing
(SIGKILL) and coming back a second later on the same port, with acks_late batches in flight.

The worker used to exit (status 0) on some of these restarts: Celery 5.7 closes the broken
connection on a connection error, kombu's `Connection.collect()` drops the transport's broker
address when a channel fails to close, and the channel with the batches' unacknowledged messages,
closed next, then needs that address to restore them: `AttributeError: 'NoneType' object has no
attribute 'hostname'`, which neither kombu nor Celery counts as a connection error, so the
worker shut down ("Unrecoverable error"). A batch in flight that finished after the reconnect
failed the same way when it acknowledged. It happens when the broker's connection loss is
noticed first on another socket (the control channel's) while the task channel is waiting in
BRPOP, so each round below crashes Redis with two batches under way and free pool slots.

Nothing is lost either way, and the database is what shows it: the messages a batch held are
claimed rows, recorded `sent` by the batch when it finishes, and handed out again by the due
sweep if their claim lapses (a batch the crash took out of Redis). Kombu's restore of the
unacknowledged deliveries (at close, or after the visibility timeout) only brings back tasks
that find nothing left to claim. The test counts what the provider received: every message once."""

from __future__ import annotations

import json
from datetime import timedelta

from bench.common import PrivateRedis
from notifier.devtools import RunningClock, wait_for
from notifier.fake_providers import FakeProviders
from notifier.services import apply_events
from tests.conftest import START, created, customer, make_context, settings_env
from tests.integration.test_dispatch_kill import pipeline_settings

ROMA = {"tenant": "studio-roma", "resource": {"id": "giulia", "name": "Giulia", "type": "specialist"}}
ROUNDS = 6
BEFORE, AFTER = 6, 3  # SMS booked before each crash (two batches of 3 in flight), and after it
LEASE_S = 8
LOST = "Connection to broker lost"


def _book(ctx, tag: str, count: int) -> list[str]:
    """`count` bookings whose info message goes out by SMS; their phone numbers."""
    phones = [f"+39333{tag}{i:05d}" for i in range(count)]
    events = [created(f"b{tag}{i}", starts_at=START + timedelta(days=3, hours=6), **ROMA,
                      cust=customer(f"c{tag}{i}", language="it", email=None, phone=phone,
                                    consents={"email": False, "sms": True}))
              for i, phone in enumerate(phones)]
    assert apply_events(ctx.store, [json.dumps(e) for e in events], now=START, source="test").applied == count
    return phones


def test_N1_N2_a_worker_outlives_redis_crash_restarts_with_batches_in_flight_and_loses_nothing(
        tmp_path, pg_url, clock, procs):
    # 07:00 in Rome is quiet hours: the info messages of these bookings fall due at 08:00
    due = START + timedelta(hours=1)
    with PrivateRedis() as broker, FakeProviders(latency_s=0.7, clock=clock.now) as provider:
        settings = pipeline_settings(tmp_path, pg_url, broker.url, "k1", provider, lease_s=LEASE_S,
                                     dispatch_batch=3, dispatch_concurrency=1)
        ctx = make_context(settings)
        group = procs(settings_env(settings))
        worker_log = tmp_path / "worker.log"

        def received(phones: list[str]) -> int:
            crashed = [line for line in worker_log.read_text(errors="replace").splitlines()
                       if "Unrecoverable error" in line]
            assert not crashed, f"the worker gave up on the broker: {crashed[0][:300]}"
            got = [m["to"] for m in provider.received]
            return sum(phone in got for phone in phones)

        booked: list[str] = []
        with RunningClock(clock, due):
            # four pool processes for two batches of three: slots free, so the task channel
            # waits in BRPOP while the batches' deliveries are unacknowledged
            group.start("worker", "worker", "-Q", "sweep,sms", "-c", "4")
            group.start("beat", "beat")
            for n in range(ROUNDS):
                before = _book(ctx, f"{n}0", BEFORE)
                booked += before
                wait_for(lambda before=before: 1 <= received(before) < BEFORE - 2,
                         f"round {n}: two batches under way", group, timeout_s=90)
                losses = worker_log.read_text(errors="replace").count(LOST)
                broker.stop(crash=True)  # SIGKILL: the worker's connections end at once
                # down until the worker has noticed and closed the broken connection (where it
                # used to give up); then Redis starts again on the same port, from its AOF
                wait_for(lambda losses=losses: worker_log.read_text(errors="replace").count(LOST) > losses,
                         f"round {n}: the worker to notice the broker is gone", group, timeout_s=30)
                broker.start()
                after = _book(ctx, f"{n}1", AFTER)  # new work, for the reconnected worker only
                booked += after
                wait_for(lambda after=after: received(after) == AFTER,
                         f"round {n}: the worker to send what was booked after the restart", group, timeout_s=90)
                wait_for(lambda before=before: received(before) == BEFORE,
                         f"round {n}: the batches in flight at the crash to be sent", group, timeout_s=90)

        assert group.procs["worker"].poll() is None
        # the crashes came while deliveries were unacknowledged, the case that used to end the worker
        assert "unacknowledged message(s)" in worker_log.read_text(errors="replace")
        got = sorted(m["to"] for m in provider.received)
        assert got == sorted(booked), "a message was sent twice or lost"
        ctx.close()
