"""Leases: the claims a worker process holds on messages, kept alive while it works on them.

A dispatch task claims its batch (`queued` to `sending`: a lease and a new claim token per
message, `Store.claim_batch_for_send`) and hands the claims to its process's `Leases` until
each outcome is recorded. Meanwhile:

- A heartbeat thread extends the lease of every claim the process holds, every quarter of a
  lease, in one statement (`Store.renew_claims`). However slow its renders, provider calls or
  commits, a live worker keeps its claims; they lapse only when it is gone: killed, or paused
  longer than the lease (a stalled VM, a long GC, SIGSTOP), which the rest of the system cannot
  tell apart.
- Before each provider call, `usable(message)` says whether the claim still holds. It does
  while the last renewal runs at least half a lease longer: the due sweep takes back only
  leases that have run out, so nobody can have taken the message. Otherwise the claims are
  renewed there and then and the database answers by the token. A worker that was paused past
  its lease finds its claims gone and does not send.
- Recording an outcome is fenced by the same token (`dispatch.record`): it applies only while
  the row is still `sending` under it, so a stale worker's late write cannot overwrite the new
  holder's.

A claim found lost is dropped: the message belongs to whoever claimed it after. Times are the
application's clock (the one the sweep compares leases with), so a simulated clock that jumps
past a lease is a lapse here too, answered by the database.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Protocol

log = logging.getLogger("notifier.leases")


class Claimed(Protocol):
    """What identifies a claim: the message and the token it was claimed under (`MessageRow`)."""

    @property
    def id(self) -> int: ...

    @property
    def claim_token(self) -> int: ...


class Leases:
    """The claims of one worker process, and the thread that keeps them alive."""

    def __init__(self, store: Any, clock: Any, lease_s: float, *, renew_every_s: float | None = None,
                 patience_s: float | None = None) -> None:
        self.store, self.clock = store, clock
        self.lease = timedelta(seconds=lease_s)
        self.margin = self.lease / 2  # a claim is used without asking while its lease runs this much longer
        self.renew_every_s = renew_every_s if renew_every_s is not None else lease_s / 4
        # how long a provider call waits for a database that cannot confirm its claim, at most
        self.patience_s = patience_s if patience_s is not None else lease_s
        self.lost = 0  # claims found taken by another worker since the process started
        self._held: dict[int, tuple[int, datetime]] = {}  # message id -> (claim token, lease runs until)
        self._lock = threading.Lock()  # guards _held
        self._renewing = threading.Lock()  # one renewal at a time; others wait and use its answer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    # --- the claims ------------------------------------------------------------------------------
    def hold(self, claims: Iterable[Claimed], until: datetime) -> None:
        """Claims just taken, whose leases run until `until`: kept alive from now on."""
        with self._lock:
            for claim in claims:
                self._held[claim.id] = (claim.claim_token, until)
            self._start()

    def release(self, claims: Iterable[Claimed]) -> None:
        """Claims whose outcome is recorded (or which were lost): no longer renewed."""
        with self._lock:
            for claim in claims:
                if self._held.get(claim.id, (None,))[0] == claim.claim_token:
                    del self._held[claim.id]

    def holds(self, claim: Claimed) -> bool:
        with self._lock:
            return self._held.get(claim.id, (None,))[0] == claim.claim_token

    def usable(self, claim: Claimed) -> bool:
        """May a provider call be made under this claim now? Checked immediately before each one.
        True while the lease is known to run at least `margin` longer; otherwise the claims are
        renewed now and the database answers. While it cannot (an outage), the call waits up to
        `patience_s`; a claim still unconfirmed then is given up (released: its lease runs out
        and the sweep hands the message out again)."""
        if self._comfortable(claim):
            return True
        deadline = time.monotonic() + self.patience_s
        delay_s = 0.2
        while True:
            with self._renewing:
                if self._comfortable(claim):  # renewed by another thread meanwhile
                    return True
                if not self.holds(claim):
                    return False
                try:
                    self._renew_all()
                except Exception as exc:  # noqa: BLE001 - the database away: wait for it, within patience
                    log.warning("cannot confirm the claim on message %s: %s", claim.id, exc.__class__.__name__)
                else:
                    return self._comfortable(claim)
            if time.monotonic() + delay_s > deadline:
                log.warning("giving up message %s: its claim could not be confirmed for %.0f s", claim.id,
                            self.patience_s)
                self.release([claim])
                return False
            time.sleep(delay_s)  # backoff while the database is away, not synchronisation
            delay_s = min(delay_s * 2, 2.0)

    def _comfortable(self, claim: Claimed) -> bool:
        token, until = self._held.get(claim.id, (None, None))  # one dict read: atomic, no lock to queue on
        return token == claim.claim_token and until is not None and self.clock.now() + self.margin <= until

    # --- the heartbeat ---------------------------------------------------------------------------
    def renew(self) -> None:
        """Extend every held claim's lease now (the heartbeat's step); claims found taken are dropped."""
        with self._renewing:
            self._renew_all()

    def _renew_all(self) -> None:
        with self._lock:
            pairs = [(message_id, token) for message_id, (token, _) in self._held.items()]
        if not pairs:
            return
        until = self.clock.now() + self.lease  # read before the write: the stored lease is never shorter
        held, done = self.store.renew_claims(pairs, until)
        with self._lock:
            for message_id, token in pairs:
                if self._held.get(message_id, (None,))[0] != token:
                    continue  # recorded and released meanwhile
                if message_id in held:
                    self._held[message_id] = (token, until)
                elif message_id in done:  # its outcome was committed an instant ago; released next
                    del self._held[message_id]
                else:
                    del self._held[message_id]
                    self.lost += 1
                    log.warning("lost the claim on message %s (token %s): its lease ran out and another "
                                "worker took it; this worker will not send it", message_id, token)

    def _start(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self._pid = os.getpid()  # a forked child starts a heartbeat of its own
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        wait_s = self.renew_every_s
        while not self._stop.wait(wait_s):
            try:
                self.renew()
                wait_s = self.renew_every_s
            except Exception as exc:  # noqa: BLE001 - the heartbeat outlives a database outage
                log.warning("could not renew leases: %s: %s", exc.__class__.__name__, exc)
                wait_s = min(1.0, self.renew_every_s)  # try again soon: the claims are running out

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
