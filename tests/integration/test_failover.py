"""Issue 23 (N1, N2): provider failover within a channel, end to end.

Real Celery workers (two prefork children sharing the accounts' health through Redis), beat,
PostgreSQL, and two loopback SMS providers on Twilio's API, each an account of its own. With
provider one refusing connections, a batch of 1,000 SMS goes out through provider two, each
exactly once; provider one, back, gets nothing while its cool-down lasts and carries the
channel's traffic again once it has ended."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import timedelta

import redis
from sqlalchemy import func, select

from notifier.devtools import RunningClock, wait_for
from notifier.failover import Health
from notifier.fake_providers import FakeProviders
from notifier.services import apply_events
from notifier.store import schema as t
from tests.conftest import START, created, customer, make_context, settings_env
from tests.integration.test_dispatch_kill import pipeline_settings

ROMA = {"tenant": "studio-roma", "resource": {"id": "giulia", "name": "Giulia", "type": "specialist"}}
COOLDOWN_S = 15


def _book(ctx, numbers: range) -> None:
    events = [created(f"f{i}", starts_at=START + timedelta(days=3, hours=6), **ROMA,
                      cust=customer(f"cf{i}", language="it", email=None, phone=_phone(i),
                                    consents={"email": False, "sms": True}))
              for i in numbers]
    assert apply_events(ctx.store, [json.dumps(e) for e in events], now=START, source="test").applied == len(events)


def _phone(i: int) -> str:
    return f"+39333{i:07d}"


def _sent(ctx) -> int:
    c = t.messages.c
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(func.count()).where(c.kind == "info", c.state == "sent")).scalar_one()


def _carriers(ctx) -> Counter[str]:
    """The account on each sent info message's timeline entry."""
    with ctx.store.engine.connect() as conn:
        details = conn.execute(select(t.timeline.c.detail).where(t.timeline.c.kind == "message.sent")).scalars()
        return Counter(d.get("account") for d in details if d.get("kind") == "info")


def test_N1_N2_with_provider_one_refusing_1000_sms_go_through_provider_two_once_and_one_returns_after_its_cool_down(
        tmp_path, pg_url, redis_url, key_prefix, clock, procs):
    batch = 1000
    with FakeProviders(clock=clock.now) as one, \
            FakeProviders(account_sid="ACsecond", auth_token="second-token", clock=clock.now) as two:
        port = two.url.rsplit(":", 1)[1]
        settings = pipeline_settings(tmp_path, pg_url, redis_url, key_prefix, one, dispatch_batch=100,
                                     sms_accounts=f"http://ACsecond:second-token@127.0.0.1:{port}?name=second",
                                     failover_failures=3, failover_window_s=30, failover_cooldown_s=COOLDOWN_S,
                                     provider_timeout_s=5)
        ctx = make_context(settings)
        _book(ctx, range(batch))
        with ctx.store.engine.connect() as conn:  # 07:00 in Rome is quiet hours: the info waits for 08:00
            due = conn.execute(select(func.max(t.messages.c.due_at)).where(t.messages.c.kind == "info")).scalar_one()
        one.outage("refuse")
        group = procs(settings_env(settings))
        cooling = f"{key_prefix}notifier:health:sms:twilio:down"
        client = redis.Redis.from_url(redis_url)
        with RunningClock(clock, due):
            group.start("worker", "worker", "-Q", "sweep,sms", "-c", "2")
            group.start("beat", "beat")
            wait_for(lambda: _sent(ctx) == batch, f"{batch} SMS sent", group, timeout_s=600,
                     explain=lambda: f"sent {_sent(ctx)}, received by two: {len(two.received)}")

            # every message exactly once, all through provider two, no attempt left in doubt
            assert one.received == []
            assert sorted(m["to"] for m in two.received) == sorted(_phone(i) for i in range(batch))
            assert _carriers(ctx) == {"second": batch}
            with ctx.store.engine.connect() as conn:
                passed = sum("passed_over" in d for d in conn.execute(select(t.timeline.c.detail).where(
                    t.timeline.c.kind == "message.sent")).scalars())
                codes = Counter(conn.execute(select(t.send_attempts.c.provider_code)).scalars())
            assert codes == {"queued": batch}  # each message one attempt: the refusals were passed over at once
            # provider one was tried only while it was not known to be down: a few calls per cool-down
            assert passed < batch / 10, passed

            # provider one is back; while its cool-down lasts the channel keeps to provider two
            one.outage(None)
            remaining_ms = client.pttl(cooling)
            if remaining_ms > 5000:
                _book(ctx, range(batch, batch + 20))
                wait_for(lambda: _sent(ctx) == batch + 20, "20 more SMS sent", group, timeout_s=120)
                cooled_down = client.exists(cooling)
                assert one.received == [] or not cooled_down
            wait_for(lambda: not client.exists(cooling), "provider one's cool-down to end", group,
                     timeout_s=COOLDOWN_S + 60)
            before = len(two.received)
            total = _sent(ctx)
            _book(ctx, range(batch + 20, batch + 70))
            wait_for(lambda: _sent(ctx) == total + 50, "50 SMS after the cool-down", group, timeout_s=120)
        assert len(one.received) == 50 and len(two.received) == before  # provider one carries the channel again
        received = [m["to"] for m in one.received + two.received]
        booked = [*range(batch), *(range(batch, batch + 20) if total > batch else ()), *range(batch + 20, batch + 70)]
        assert sorted(received) == sorted(_phone(i) for i in booked)  # none twice, none lost
        ctx.close()


def test_N1_N2_workers_share_an_accounts_health_through_redis_and_its_key_ends_the_cool_down(redis_url, key_prefix):
    first = Health(failures=2, window_s=30, cooldown_s=2, client=redis.Redis.from_url(redis_url), prefix=key_prefix)
    second = Health(failures=2, window_s=30, cooldown_s=2, client=redis.Redis.from_url(redis_url), prefix=key_prefix)
    assert not first.failed("sms", "one")
    assert second.failed("sms", "one")  # two workers' failures add up
    assert first.down("sms", ["one", "two"]) == {"one"}
    client = redis.Redis.from_url(redis_url)
    assert 0 < client.pttl(f"{key_prefix}notifier:health:sms:one:down") <= 2000  # the key itself ends it
    deadline = time.monotonic() + 30
    while first.down("sms", ["one"]):
        assert time.monotonic() < deadline, "the cool-down never ended"
        time.sleep(0.1)
    assert second.down("sms", ["one", "two"]) == set()


def test_N5_a_second_accounts_reports_are_checked_with_its_own_token(tmp_path, pg_url, clock):
    """The message went out through the second account (the first refusing connections): that
    account signs its status reports and its customers' answers with its own token, which is
    accepted; a token of no account of ours is refused, and changes nothing."""
    from notifier.bootstrap import build_channels
    from notifier.web.app import twilio_signature
    from tests.conftest import api_client, make_settings
    from tests.integration.test_callbacks import PUBLIC, state_and_timeline
    from tests.integration.test_providers import book, info_row, run_due

    with FakeProviders() as one, FakeProviders(account_sid="ACsecond", auth_token="second-token") as two:
        one.outage("refuse")
        settings = make_settings(tmp_path, database_url=pg_url, twilio_account_sid=one.account_sid,
                                 twilio_auth_token=one.auth_token, twilio_from="+4930123456", twilio_api_url=one.url,
                                 public_url=PUBLIC, sms_accounts=f"http://ACsecond:second-token@"
                                                                 f"{two.url.removeprefix('http://')}?name=second")
        ctx = make_context(settings, channels=build_channels(settings))
        book(ctx, "+39 347 123 4567")
        clock.set(info_row(ctx).due_at)
        assert run_due(ctx)["sent"] == 1
        row = info_row(ctx)
        [sms] = two.received
        assert row.provider_message_id == sms["sid"] and one.received == []
        client = api_client(ctx)
        form = {"AccountSid": "ACsecond", "MessageSid": row.provider_message_id, "MessageStatus": "delivered"}
        url = PUBLIC + "/callbacks/twilio"
        forged = client.post("/callbacks/twilio", data=form,
                             headers={"X-Twilio-Signature": twilio_signature("no-account-of-ours", url, form)})
        assert forged.status_code == 403 and state_and_timeline(ctx, row.id)[0] == "sent"
        signed = client.post("/callbacks/twilio", data=form,
                             headers={"X-Twilio-Signature": twilio_signature("second-token", url, form)})
        assert signed.status_code == 204 and state_and_timeline(ctx, row.id)[0] == "delivered"
        # the customer's answer to the second account's number: signed with that account's token, taken;
        # naming it but signed with the first account's token, or naming no account of ours, refused
        inbound = {"AccountSid": "ACsecond", "MessageSid": "SMreply-1", "From": "+393471234567",
                   "To": "+4930123456", "Body": "Grazie"}
        url = PUBLIC + "/inbound/twilio"
        for token, answer in ((one.auth_token, 403), ("second-token", 200)):
            response = client.post("/inbound/twilio", data=inbound,
                                   headers={"X-Twilio-Signature": twilio_signature(token, url, inbound)})
            assert response.status_code == answer, (token, response.text)
        stranger = {**inbound, "AccountSid": "ACstranger"}
        assert client.post("/inbound/twilio", data=stranger, headers={
            "X-Twilio-Signature": twilio_signature("second-token", url, stranger)}).status_code == 403
        ctx.close()
