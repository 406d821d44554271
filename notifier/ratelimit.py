"""Provider rate limits shared by every worker: a token bucket in Redis (one per provider
account), or in process for the embedded default.

`reserve(n)` takes n tokens at once and says how long to wait before using them; the
bucket may go into debt, so callers queue up in order and the rate is never exceeded,
however many workers and threads share it, without polling.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from notifier.channels.base import ChannelAdapter, Outgoing, SendResult

# KEYS[1] bucket; ARGV: rate per second, burst, tokens wanted. Redis' own clock, so hosts agree.
RESERVE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - at) * rate) - want
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 60000)
if tokens >= 0 then return '0' end
return tostring(-tokens / rate)
"""


class RedisTokenBucket:
    def __init__(self, client, key: str, *, rate_per_s: float, burst: float | None = None) -> None:
        self.client, self.key = client, key
        self.rate_per_s = rate_per_s
        self.burst = burst if burst is not None else max(1.0, rate_per_s / 10)
        self._script = client.register_script(RESERVE)

    def reserve(self, tokens: float = 1.0) -> float:
        return float(self._script(keys=[self.key], args=[self.rate_per_s, self.burst, tokens]))


class LocalTokenBucket:
    def __init__(self, *, rate_per_s: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst if burst is not None else max(1.0, rate_per_s / 10)
        self.clock = clock
        self._tokens = self.burst
        self._at = clock()
        self._lock = threading.Lock()

    def reserve(self, tokens: float = 1.0) -> float:
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s) - tokens
            self._at = now
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate_per_s


class RateLimited:
    """An adapter that waits for its turn in the bucket before each send."""

    def __init__(self, adapter: ChannelAdapter, bucket, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.adapter, self.bucket, self.sleep = adapter, bucket, sleep
        self.name = adapter.name

    def send(self, message: Outgoing) -> SendResult:
        return self.take_turn().send(message)

    def take_turn(self) -> ChannelAdapter:
        """Wait for a token; the adapter to call at once, without waiting again."""
        wait_s = self.bucket.reserve(1)
        if wait_s > 0:
            self.sleep(wait_s)  # a reservation: the token is ours at that moment
        return self.adapter

    def close(self) -> None:
        self.adapter.close()

    def __getattr__(self, name: str):  # the adapter's other abilities (find_sent) pass through
        return getattr(self.adapter, name)


def take_turn(adapter: ChannelAdapter) -> ChannelAdapter:
    """The adapter to make a provider call on now, after the rate limit's wait if it has one
    (dispatch checks its claim between the two, so that check is right before the call)."""
    turn = getattr(adapter, "take_turn", None)
    return turn() if turn is not None else adapter


def parse_limits(spec: str) -> dict[str, float]:
    """"sms=200,whatsapp=80" -> {"sms": 200.0, "whatsapp": 80.0} (messages per second)."""
    limits = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        limits[name.strip()] = float(value)
    return limits
