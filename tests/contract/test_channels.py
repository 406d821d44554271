"""One contract, every channel (R1, R5, N2, P3): each adapter against a real server on loopback
that speaks its provider's protocol (SMTP, Twilio, Meta Cloud API, webhook), and the fake.

The contract: a good message is accepted once and arrives as sent; a provider that is down
or busy is a temporary failure (honouring Retry-After); a bad recipient is permanent."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pytest

from notifier.channels.base import ChannelAdapter, Outgoing, PermanentFailure, TemporaryFailure
from notifier.channels.email import SMTPChannel
from notifier.channels.fake import FakeChannel
from notifier.channels.meta_whatsapp import MetaWhatsAppChannel
from notifier.channels.outbound import parse_networks
from notifier.channels.twilio import TwilioSMSChannel, TwilioWhatsAppChannel
from notifier.channels.webhook import WebhookChannel
from notifier.devtools import HttpSink, MailSink
from notifier.fake_providers import FakeProviders


@dataclass
class Rig:
    adapter: ChannelAdapter
    good: Outgoing
    bad_recipient: Outgoing
    received: Callable[[], list]
    fail_next: Callable[[int, dict[str, str] | None], None]  # (status, headers)
    retry_after: bool = True  # whether the protocol can say when to come back


REMINDER_SID = "HX" + "0123456789abcdef" * 2  # Twilio's Content SID of booking_reminder_v1 in German


def outgoing(to: str, **kw) -> Outgoing:
    return Outgoing(message_id=1, idempotency_key="t/b1/reminder/customer/20261203T1400Z", to=to,
                    text="Erinnerung: morgen 15:00 bei Anna", subject="Erinnerung", **kw)


@pytest.fixture(params=["fake", "smtp", "twilio-sms", "twilio-whatsapp", "meta-whatsapp", "webhook"])
def rig(request) -> Iterator[Rig]:
    kind = request.param
    if kind == "fake":
        failures: list[Exception] = []

        def behaviour(message):
            if failures:
                raise failures.pop(0)
            if message.to == "nobody":
                raise PermanentFailure("no such recipient")

        fake = FakeChannel(behaviour=behaviour)
        yield Rig(fake, outgoing("kunde@example.org"), outgoing("nobody"), lambda: fake.sent,
                  lambda status, headers: failures.append(TemporaryFailure(
                      str(status), retry_after_s=float((headers or {}).get("Retry-After", 0)) or None)))
        return
    if kind == "smtp":
        with MailSink() as sink:
            sink.refuse.add("nobody@example.org")

            def fail(status, headers):  # SMTP knows only "451 try later", without a time
                sink.temporary_failures += 1

            yield Rig(SMTPChannel(host="127.0.0.1", port=sink.port, mail_from="n@example.org"),
                      outgoing("kunde@example.org"), outgoing("nobody@example.org"), lambda: sink.messages, fail,
                      retry_after=False)
        return
    if kind == "webhook":
        with HttpSink() as hooks:
            def fail(status, headers):
                hooks.script.append((status, headers or {}))

            yield Rig(WebhookChannel("staff", secret="s" * 20, allowed_networks=parse_networks("127.0.0.1")),
                      outgoing(hooks.url),
                      outgoing(hooks.url.replace("/hooks", "/gone")), lambda: hooks.requests, fail)
        return
    with FakeProviders() as providers:
        providers.invalid_numbers.add("+4915100000000")
        common = dict(account_sid=providers.account_sid, auth_token=providers.auth_token, api_url=providers.url)
        if kind == "twilio-sms":
            adapter: ChannelAdapter = TwilioSMSChannel(sender="+4930123456", **common)
            good = outgoing("+4915123456789")
        elif kind == "twilio-whatsapp":
            adapter = TwilioWhatsAppChannel(sender="+4930123456", **common)
            good = outgoing("+4915123456789", template="booking_reminder_v1", template_language="de",
                            params=("Erika", "03.12.2026", "15:00", "Anna"), content_sid=REMINDER_SID)
        else:
            adapter = MetaWhatsAppChannel(token=providers.meta_token, phone_number_id="1055",
                                          api_url=providers.url)
            good = outgoing("+4915123456789", template="booking_reminder_v1", template_language="de",
                            params=("Erika", "03.12.2026", "15:00", "Anna"))
        yield Rig(adapter, good, replace(good, to="+4915100000000"), lambda: providers.received,
                  lambda status, headers: providers.script((status, headers or {})))


def test_a_good_message_is_accepted_once_and_arrives(rig):
    result = rig.adapter.send(rig.good)
    assert result.provider_message_id
    [arrived] = rig.received()
    text = str(arrived)
    assert rig.good.to.lstrip("+") in text.replace("whatsapp:", "") or "Erinnerung" in text


def test_a_provider_that_is_down_is_a_temporary_failure_and_the_next_try_works(rig):
    rig.fail_next(503, None)
    with pytest.raises(TemporaryFailure):
        rig.adapter.send(rig.good)
    assert rig.adapter.send(rig.good).provider_message_id
    assert len(rig.received()) == 1


def test_a_busy_provider_says_when_to_come_back(rig):
    rig.fail_next(429, {"Retry-After": "7"})
    with pytest.raises(TemporaryFailure) as caught:
        rig.adapter.send(rig.good)
    assert caught.value.retry_after_s == (7 if rig.retry_after else None)


def test_a_bad_recipient_is_a_permanent_failure(rig):
    with pytest.raises(PermanentFailure) as caught:
        rig.adapter.send(rig.bad_recipient)
    assert caught.value.reason
    assert rig.received() == []


def test_N2_an_adapter_that_can_find_a_sent_message_finds_exactly_that_one(rig):
    """What dispatch asks about an attempt that ended unrecorded: the provider's copy is found
    (same recipient, same text) and nothing else is; adapters that cannot tell say so."""
    from datetime import UTC, datetime

    from notifier.channels.base import CannotTell

    find = getattr(rig.adapter, "find_sent", None)
    if find is None:  # no way to ask these providers: the bound in docs/reliability.md
        assert isinstance(rig.adapter, (SMTPChannel, WebhookChannel, MetaWhatsAppChannel))
        return
    since = datetime.now(UTC)
    try:
        assert find(rig.good, since=since) == []
    except CannotTell:
        assert rig.good.template  # only a content template cannot be compared
        return
    first = rig.adapter.send(rig.good)
    assert [c.provider_message_id for c in find(rig.good, since=since)] == [first.provider_message_id]
    second = rig.adapter.send(rig.good)  # the same text again (two bookings may read the same)
    assert [c.provider_message_id for c in find(rig.good, since=since)] == [second.provider_message_id,
                                                                            first.provider_message_id]
    assert find(replace(rig.good, text="another text"), since=since) == []
    assert find(replace(rig.good, to="+4915199999999"), since=since) == []


def test_R44_twilio_whatsapp_sends_the_templates_content_sid_never_its_name():
    """Twilio knows an approved template by its Content SID; a template that has none for the
    tenant and language fails for good, with the template named, and nothing is sent."""
    with FakeProviders() as providers:
        adapter = TwilioWhatsAppChannel(sender="+4930123456", account_sid=providers.account_sid,
                                        auth_token=providers.auth_token, api_url=providers.url)
        message = outgoing("+4915123456789", template="booking_reminder_v1", template_language="de",
                           params=("Erika", "03.12.2026"), content_sid=REMINDER_SID)
        adapter.send(message)
        [sent] = providers.received
        assert sent["content_sid"] == REMINDER_SID and sent["variables"] == {"1": "Erika", "2": "03.12.2026"}
        assert sent["body"] is None and sent["to"] == "whatsapp:+4915123456789"
        with pytest.raises(PermanentFailure, match="booking_reminder_v1 \\(de\\) has no Content SID"):
            adapter.send(replace(message, content_sid=""))
        with pytest.raises(PermanentFailure, match="has no Content SID"):
            adapter.send(replace(message, content_sid="booking_reminder_v1"))
        assert len(providers.received) == 1
