"""Rate limits (issue 6): a token bucket that queues senders in order and never exceeds the rate."""

from notifier.channels.base import Outgoing
from notifier.channels.fake import FakeChannel
from notifier.ratelimit import LocalTokenBucket, RateLimited, parse_limits


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_burst_goes_at_once_then_each_send_waits_its_turn():
    clock = FakeClock()
    bucket = LocalTokenBucket(rate_per_s=10, burst=5, clock=clock)
    waits = [bucket.reserve() for _ in range(8)]
    assert waits[:5] == [0, 0, 0, 0, 0]
    assert [round(w, 3) for w in waits[5:]] == [0.1, 0.2, 0.3]
    clock.t += 10  # a quiet spell refills the bucket, but never beyond the burst
    assert [bucket.reserve() for _ in range(5)] == [0, 0, 0, 0, 0] and bucket.reserve() > 0


def test_sends_through_a_limited_adapter_never_exceed_the_rate():
    clock = FakeClock()
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # reservations are made up front: the clock need not move
        slept.append(seconds)

    fake = FakeChannel("sms")
    limited = RateLimited(fake, LocalTokenBucket(rate_per_s=20, burst=4, clock=clock), sleep=sleep)
    for i in range(24):
        limited.send(Outgoing(message_id=i, idempotency_key=str(i), to="+4915123456789", text="x"))
    assert len(fake.sent) == 24
    assert round(max(slept), 3) == round((24 - 4) / 20, 3)  # the 24th message waits exactly its share


def test_limits_are_configured_per_channel():
    assert parse_limits("sms=200, whatsapp=80") == {"sms": 200.0, "whatsapp": 80.0}
    assert parse_limits("") == {}
