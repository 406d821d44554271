"""Provider failover within a channel: several accounts, tried in order, a down one skipped.

A channel may list several provider accounts (two SMTP relays; Twilio and a second provider
speaking Twilio's Messages API). `Failover` is the channel's adapter: each message goes to the
first account that is not cooling down. An account is *down* after `failures` down signals
(connection refused, 5xx, timeouts) within `window_s` with no success between them (as the
process that saw them knows); it is then skipped for `cooldown_s`, and takes traffic again
when the cool-down ends (its first calls are the probe: a refusal sends the message on to the
next account at once and soon puts the account back into cool-down).

Within one provider call, a failure after which the provider certainly does not have the
message (`refused`: no connection was made; a 5xx answer) hands the message to the next account
at once. A timeout, a connection lost mid-request or an unexpected error does not: the first
account may have taken the message, so the attempt ends there, in doubt, and dispatch settles
that doubt with that account (its reports, its Messages list) before any account sends the
message again (notifier/dispatch.py, docs/reliability.md).

Health is shared by every worker process through Redis (the rate limits' Redis), or kept per
process without one: a key per account and channel that expires with the cool-down, so nothing
has to end it; a Redis that is away is read as "all healthy" (a failure costs one more call).
Rate limits stay per account: each account has a token bucket of its own (bootstrap.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from notifier.channels.base import ChannelAdapter, Outgoing, SendResult, TemporaryFailure

log = logging.getLogger("notifier.failover")
# answers after which the provider certainly did not take the message: the next account may carry it
# (not 504: a gateway that gave up waiting may stand before a provider that took the message)
NOT_TAKEN = {"refused", "500", "502", "503", "421"}  # 421: an SMTP server closing the session
# down signals: these, and the answers after which we cannot tell (the account is slow or cut off)
DOWN_SIGNALS = NOT_TAKEN | {"504", "timeout", "connection"}


@dataclass(frozen=True)
class Account:
    """One provider account of a channel: its name (metrics, timeline, attempt rows) and adapter."""

    name: str
    adapter: ChannelAdapter


@dataclass
class Carried:
    """Which account made the call that ended a send, and the accounts passed over on the way."""

    account: str
    passed: list[str]


class AccountFailure(Exception):
    """A send that ended at `account` with the adapter's `failure` (TemporaryFailure,
    PermanentFailure, or anything else), after passing over the accounts in `passed`."""

    def __init__(self, failure: BaseException, account: str, passed: list[str]) -> None:
        super().__init__(str(failure))
        self.failure, self.account, self.passed = failure, account, passed


# KEYS[1] the account's failure count, KEYS[2] its cool-down; ARGV window ms, failures, cool-down ms
FAILED = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


class Health:
    """Which accounts are cooling down. Redis-backed when `client` is given (every worker
    process sees the same state), else in this process."""

    def __init__(self, *, failures: int, window_s: float, cooldown_s: float, client: Any = None, prefix: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures, self.window_s, self.cooldown_s = max(1, failures), window_s, cooldown_s
        self.client, self.prefix, self.clock = client, prefix, clock
        self._script = client.register_script(FAILED) if client is not None else None
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, float]] = {}  # account key -> (failures, window ends) (no Redis)
        self._down_until: dict[str, float] = {}  # account key -> cool-down ends (no Redis)
        self._failed_here: dict[str, float] = {}  # account key -> when this process last saw it fail

    def key(self, channel: str, account: str) -> str:
        return f"{self.prefix}notifier:health:{channel}:{account}"

    def down(self, channel: str, accounts: list[str]) -> set[str]:
        """The accounts of `accounts` cooling down now."""
        keys = [self.key(channel, a) for a in accounts]
        if self.client is not None:
            try:
                flags = self.client.mget([f"{k}:down" for k in keys])
            except Exception as exc:  # noqa: BLE001 - health is advice: without it every account is tried
                log.warning("provider health unreadable (%s): every account is tried", exc.__class__.__name__)
                return set()
            return {a for a, flag in zip(accounts, flags, strict=True) if flag}
        now = self.clock()
        with self._lock:
            return {a for a, k in zip(accounts, keys, strict=True) if self._down_until.get(k, 0.0) > now}

    def failed(self, channel: str, account: str) -> bool:
        """One down signal; True when it put the account into cool-down."""
        key = self.key(channel, account)
        now = self.clock()
        with self._lock:
            self._failed_here[key] = now
        if self.client is not None:
            try:
                tripped = bool(self._script(keys=[f"{key}:fails", f"{key}:down"], args=[
                    int(self.window_s * 1000), self.failures, int(self.cooldown_s * 1000)]))
            except Exception as exc:  # noqa: BLE001 - health is advice
                log.warning("provider health not recorded (%s)", exc.__class__.__name__)
                return False
        else:
            with self._lock:
                count, ends = self._counts.get(key, (0, now + self.window_s))
                count = count + 1 if ends > now else 1
                ends = ends if count > 1 else now + self.window_s
                tripped = count >= self.failures
                if tripped:
                    self._down_until[key] = now + self.cooldown_s
                    self._counts.pop(key, None)
                else:
                    self._counts[key] = (count, ends)
        if tripped:
            from notifier.observability.metrics import metrics

            metrics().provider_cooldowns.labels(channel, account).inc()
            log.warning("%s account %s is down: skipped for %.0f s", channel, account, self.cooldown_s)
        return tripped

    def succeeded(self, channel: str, account: str) -> None:
        """A call the account answered: its failure count starts again (a round trip only when this
        process saw it fail within the window)."""
        key = self.key(channel, account)
        with self._lock:
            seen = self._failed_here.get(key)
            if seen is None:
                return
            del self._failed_here[key]
            if self.client is None:
                self._counts.pop(key, None)
                return
        if self.clock() - seen < self.window_s:
            try:
                self.client.delete(f"{key}:fails")
            except Exception:  # noqa: BLE001 - health is advice
                pass


class Failover:
    """A channel's adapter over several provider accounts, in order (see the module's text)."""

    def __init__(self, channel: str, accounts: list[Account], health: Health) -> None:
        if not accounts:
            raise ValueError(f"{channel}: no provider account")
        self.name, self.accounts, self.health = channel, accounts, health
        first = accounts[0].adapter
        self.provider = first.provider  # the accounts speak one API: callbacks match on it
        self.reports_back = all(getattr(a.adapter, "reports_back", False) for a in accounts)

    def order(self) -> list[Account]:
        """The accounts to try now: those not cooling down, in order, then the others (when every
        account is down the channel still tries, as it did with one account)."""
        down = self.health.down(self.name, [a.name for a in self.accounts])
        return [a for a in self.accounts if a.name not in down] + [a for a in self.accounts if a.name in down]

    def carry(self, message: Outgoing, *, usable: Callable[[], bool] = lambda: True, first: Sequence[str] = ()
              ) -> tuple[SendResult, Carried] | None:
        """Send through the first account that takes the message; the accounts named in `first`
        are tried before the others, cooling down or not (an in-doubt message goes back to the
        relay that may hold it and drops a repeat). None when `usable()` said no right before a
        call (the claim has gone to another worker); `AccountFailure` when the send ended in a
        failure."""
        from notifier.ratelimit import take_turn

        passed: list[str] = []
        candidates = [a for a in self.accounts if a.name in first]
        candidates += [a for a in self.order() if a not in candidates]
        for i, account in enumerate(candidates):
            sender = take_turn(account.adapter)  # the account's own rate limit
            if not usable():
                return None
            try:
                result = sender.send(message)
            except TemporaryFailure as exc:
                if exc.code in DOWN_SIGNALS:
                    self.health.failed(self.name, account.name)
                if exc.code in NOT_TAKEN and i + 1 < len(candidates):
                    passed.append(account.name)
                    log.info("%s: %s %s; the next account carries message %s", self.name, account.name,
                             exc.code, message.message_id)
                    continue
                raise AccountFailure(exc, account.name, passed) from exc
            except Exception as exc:
                raise AccountFailure(exc, account.name, passed) from exc
            self.health.succeeded(self.name, account.name)
            return result, Carried(account.name, passed)
        raise AssertionError("unreachable: the last candidate returns or raises")

    def send(self, message: Outgoing) -> SendResult:
        """The adapter interface (a console test send): the failure as the adapter raised it."""
        try:
            carried = self.carry(message)
        except AccountFailure as exc:
            raise exc.failure from None
        assert carried is not None
        return carried[0]

    def close(self) -> None:
        for account in self.accounts:
            account.adapter.close()


def send_through(adapter: Any, message: Outgoing, *, usable: Callable[[], bool], first: Sequence[str] = ()
                 ) -> tuple[SendResult, Carried] | None:
    """One message through a channel's adapter, a `Failover` or a single account: what `carry`
    returns, with a single account's failure wrapped in `AccountFailure` the same way."""
    if isinstance(adapter, Failover):
        return adapter.carry(message, usable=usable, first=first)
    from notifier.ratelimit import take_turn

    [account] = accounts_of(adapter)
    sender = take_turn(adapter)  # a rate limit's wait comes before the claim's check, not between it and the call
    if not usable():
        return None
    try:
        return sender.send(message), Carried(account.name, [])
    except Exception as exc:
        raise AccountFailure(exc, account.name, []) from exc


def accounts_of(adapter: Any) -> list[Account]:
    """A channel adapter's accounts: a `Failover`'s, or the one adapter (named by its provider)."""
    if isinstance(adapter, Failover):
        return adapter.accounts
    name = getattr(adapter, "account", None) or getattr(adapter, "provider", None) or getattr(adapter, "name", "")
    return [Account(str(name), adapter)]
