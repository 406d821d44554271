"""Issue 23 (N1, N2): provider failover within a channel (notifier/failover.py).

A channel with several provider accounts sends through the first that is up; one that refuses
or answers 5xx hands the message to the next at once; one found down is skipped for its
cool-down and takes traffic again after it. A message whose answer was lost at one account is
never sent through another before that account has been asked about it."""

from __future__ import annotations

import pytest

from notifier.channels.base import Outgoing, TemporaryFailure
from notifier.channels.fake import FakeChannel
from notifier.domain.model import Channel
from notifier.failover import Account, AccountFailure, Failover, Health
from notifier.services import timeline_of
from notifier.settings import SettingsError
from tests.conftest import created, make_context, make_settings
from tests.unit.test_services import apply, messages, run_due


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def down(code: str):
    def behaviour(message: Outgoing) -> None:
        raise TemporaryFailure(f"down ({code})", code=code)
    return behaviour


def two_accounts(clock: Clock, *, failures: int = 2) -> tuple[FakeChannel, FakeChannel, Failover]:
    one, two = FakeChannel("sms"), FakeChannel("sms")
    health = Health(failures=failures, window_s=30, cooldown_s=60, clock=clock)
    return one, two, Failover("sms", [Account("one", one), Account("two", two)], health)


def outgoing(i: int = 1) -> Outgoing:
    return Outgoing(message_id=i, idempotency_key=f"k{i}", to="+4915112345678", text=f"text {i}")


def test_N1_an_account_that_refuses_hands_the_message_to_the_next_at_once():
    clock = Clock()
    one, two, failover = two_accounts(clock)
    one.behaviour = down("refused")
    result, carried = failover.carry(outgoing())
    assert (carried.account, carried.passed) == ("two", ["one"])
    assert result.provider_message_id == "fake-sms-1" and len(two.sent) == 1 and one.sent == []


def test_N1_a_down_account_is_skipped_for_its_cool_down_then_takes_traffic_again():
    clock = Clock()
    one, two, failover = two_accounts(clock, failures=2)
    one.behaviour = down("503")
    calls = []
    real = one.send
    one.send = lambda m: (calls.append(m), real(m))[1]  # type: ignore[method-assign]
    for i in range(5):
        assert failover.carry(outgoing(i))[1].account == "two"
    assert len(calls) == 2  # two down signals put it into cool-down: the next three went straight to two
    one.behaviour = None  # back, but still cooling down
    clock.now = 59
    assert failover.carry(outgoing(6))[1].account == "two"
    clock.now = 61  # the cool-down is over: the first account carries again
    assert failover.carry(outgoing(7))[1].account == "one"
    assert len(one.sent) == 1


def test_N1_a_success_between_failures_keeps_an_account_in_service():
    clock = Clock()
    one, _two, failover = two_accounts(clock, failures=2)
    for i in range(4):  # refused, answered, refused, answered: never two in a row
        one.behaviour = down("refused") if i % 2 == 0 else None
        failover.carry(outgoing(i))
    assert failover.health.down("sms", ["one", "two"]) == set()


def test_N2_an_answer_lost_at_one_account_is_not_sent_through_the_next():
    clock = Clock()
    one, two, failover = two_accounts(clock)
    one.behaviour = down("timeout")  # the request went out: the first account may have the message
    with pytest.raises(AccountFailure) as failed:
        failover.carry(outgoing())
    assert failed.value.account == "one" and failed.value.failure.code == "timeout"
    assert two.sent == []


def test_N1_when_every_account_is_down_the_channel_still_tries_them_in_order():
    clock = Clock()
    one, two, failover = two_accounts(clock, failures=1)
    one.behaviour = two.behaviour = down("refused")
    with pytest.raises(AccountFailure):
        failover.carry(outgoing())
    assert failover.health.down("sms", ["one", "two"]) == {"one", "two"}
    one.behaviour = None
    assert failover.carry(outgoing(2))[1].account == "one"


def test_N1_a_redis_that_is_away_leaves_every_account_in_service():
    import redis

    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    health = Health(failures=1, window_s=30, cooldown_s=60, client=unreachable)
    assert health.failed("sms", "one") is False
    assert health.down("sms", ["one"]) == set()


# --- through dispatch ----------------------------------------------------------------------------

@pytest.fixture
def pair(tmp_path, clock):
    """A context whose email channel has two accounts (relays) with in-process health."""
    one, two = FakeChannel("email"), FakeChannel("email")
    health = Health(failures=2, window_s=30, cooldown_s=60)
    failover = Failover("email", [Account("relay-1", one), Account("relay-2", two)], health)
    ctx = make_context(make_settings(tmp_path), channels={Channel.EMAIL: failover})
    yield ctx, one, two
    ctx.close()


def test_N1_the_timeline_and_attempts_say_which_account_carried_a_message(pair):
    from sqlalchemy import select

    from notifier.store import schema as t

    ctx, one, two = pair
    one.behaviour = down("refused")
    apply(ctx, created("b1"))
    assert run_due(ctx)["sent"] == 1
    [sent] = [e["detail"] for e in timeline_of(ctx.store, "salon-berlin", "b1") if e["kind"] == "message.sent"]
    assert sent["account"] == "relay-2" and sent["passed_over"] == ["relay-1"]
    with ctx.store.engine.connect() as conn:
        assert conn.execute(select(t.send_attempts.c.account)).scalars().all() == ["relay-2"]
    assert len(two.sent) == 1 and one.sent == []


def test_N2_a_message_in_doubt_waits_for_its_account_rather_than_going_out_through_another(pair):
    ctx, one, two = pair
    calls = []

    def answer_lost_then_down(message):
        calls.append(message)
        if len(calls) == 1:
            raise TemporaryFailure("timeout after 10 s", code="timeout")  # nothing taken, but we cannot know
        raise TemporaryFailure("cannot connect", code="refused")

    lookups = []
    real_find = one.find_sent

    def find_sent(message, *, since):
        lookups.append(message)
        if one.behaviour is answer_lost_then_down:
            raise TemporaryFailure("cannot connect", code="refused")
        return real_find(message, since=since)

    one.behaviour, one.find_sent = answer_lost_then_down, find_sent
    apply(ctx, created("b1"))
    info = lambda: [r for r in messages(ctx) if r.kind == "info"][0]  # noqa: E731
    assert run_due(ctx)["retried"] == 1  # in doubt at relay-1
    for _ in range(2):  # relay-1 cannot be asked: the message waits, relay-2 sends nothing
        ctx.clock.set(info().due_at)
        assert run_due(ctx)["retried"] == 1
    assert two.sent == [] and len(lookups) == 2
    one.behaviour = None  # relay-1 is back: asked, it has no copy, and the message goes out once
    ctx.clock.set(info().due_at)
    assert run_due(ctx)["sent"] == 1
    assert len(lookups) == 3 and len(one.sent) + len(two.sent) == 1


def test_N1_accounts_and_relays_are_read_from_their_urls_and_a_bad_one_is_named(tmp_path):
    settings = make_settings(tmp_path, sms_accounts="https://AC2:tok%2Fen@sms.example.com/api?from=%2B4930123&"
                                                    "name=backup, http://AC3:t3@127.0.0.1:8080",
                             smtp_relays="smtps://u:p@relay.example.com?name=second")
    backup, third = settings.sms_account_list
    assert (backup.name, backup.user, backup.password, backup.base_url, backup.options["from"]) == (
        "backup", "AC2", "tok/en", "https://sms.example.com/api", "+4930123")
    assert (third.name, third.base_url) == ("sms-3", "http://127.0.0.1:8080")
    [relay] = settings.smtp_relay_list
    assert (relay.name, relay.scheme, relay.host, relay.port) == ("second", "smtps", "relay.example.com", None)
    assert settings.twilio_auth_tokens == ("tok/en", "t3")
    with pytest.raises(SettingsError) as refused:
        make_settings(tmp_path, sms_accounts="https://sms.example.com", smtp_relays="ftp://x:secret@host")
    text = str(refused.value)
    assert "NOTIFIER_SMS_ACCOUNTS: account 1" in text and "NOTIFIER_SMTP_RELAYS: account 1" in text
    assert "secret" not in text


def test_N1_a_channel_with_several_accounts_gets_a_failover_adapter_and_a_rate_limit_per_account(tmp_path):
    from notifier.bootstrap import build_channels
    from notifier.ratelimit import RateLimited

    settings = make_settings(tmp_path, twilio_account_sid="AC1", twilio_auth_token="t1", twilio_from="+4930123",
                             sms_accounts="https://AC2:t2@sms.example.com?name=backup",
                             smtp_relays="smtp://relay.example.com:2525", rate_limits="sms=10,backup=5")
    channels = build_channels(settings)
    sms, email = channels[Channel.SMS], channels[Channel.EMAIL]
    assert isinstance(sms, Failover) and [a.name for a in sms.accounts] == ["twilio", "backup"]
    assert isinstance(email, Failover) and [a.name for a in email.accounts] == ["smtp", "smtp-2"]
    first, backup = (a.adapter for a in sms.accounts)
    assert isinstance(first, RateLimited) and isinstance(backup, RateLimited)
    assert (first.bucket.rate_per_s, backup.bucket.rate_per_s) == (10, 5)  # each account its own bucket
    assert backup.adapter.account == "backup" and backup.url.startswith("https://sms.example.com/2010-04-01/")
    assert sms.provider == "twilio" and sms.reports_back
    for adapter in channels.values():
        adapter.close()


def test_N1_one_account_is_the_channel_as_before(tmp_path):
    from notifier.bootstrap import build_channels

    channels = build_channels(make_settings(tmp_path))
    assert not isinstance(channels[Channel.EMAIL], Failover)
    assert channels[Channel.EMAIL].account == "smtp"


def test_N2_a_relay_that_drops_repeats_is_named_by_its_header_and_a_bad_header_is_refused(tmp_path):
    from notifier.bootstrap import build_channels
    from notifier.channels.base import Outgoing
    from notifier.channels.email import relay_key
    from notifier.failover import accounts_of

    settings = make_settings(tmp_path, smtp_idempotency_header="Resend-Idempotency-Key",
                             smtp_relays="smtp://relay.example.com:2525?name=backup&idempotency_header=X-EE-Idempotency-Key,"
                                         "smtp://plain.example.com?name=plain")
    relays = {a.name: a.adapter for a in accounts_of(build_channels(settings)[Channel.EMAIL])}
    assert {name: (a.dedupes, a.idempotency_header) for name, a in relays.items()} == {
        "smtp": (True, "Resend-Idempotency-Key"), "backup": (True, "X-EE-Idempotency-Key"), "plain": (False, "")}
    mail = relays["backup"].build(Outgoing(message_id=1, idempotency_key="t1/b1/info", to="a@example.org", text="hi"))
    assert mail["X-EE-Idempotency-Key"] == "t1/b1/info"
    assert "Resend-Idempotency-Key" not in relays["plain"].build(
        Outgoing(message_id=1, idempotency_key="t1/b1/info", to="a@example.org", text="hi"))
    long = "t" * 200 + "/" + "b" * 200 + "/info"  # over the relays' 256 characters: the same digest every time
    assert relay_key(long) == relay_key(long) != long and len(relay_key(long)) <= 256
    with pytest.raises(SettingsError) as refused:
        make_settings(tmp_path, smtp_idempotency_header="Resend-Idempotency-Key: x",
                      smtp_relays="smtp://relay.example.com?name=backup&idempotency_header=Bad%0AHeader")
    text = str(refused.value)
    assert "NOTIFIER_SMTP_IDEMPOTENCY_HEADER: 'Resend-Idempotency-Key: x' is not a header name" in text
    assert "NOTIFIER_SMTP_RELAYS (backup): 'Bad\\nHeader' is not a header name" in text
