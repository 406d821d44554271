"""In-memory channel for unit tests: records what was sent, fails on request."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

from notifier.channels.base import Outgoing, SendResult


class FakeChannel:
    provider = "fake"

    def __init__(self, name: str = "email", *, behaviour: Callable[[Outgoing], None] | None = None) -> None:
        self.name = name
        self.sent: list[Outgoing] = []
        self.behaviour = behaviour  # may raise TemporaryFailure / PermanentFailure
        self._lock = threading.Lock()

    def send(self, message: Outgoing) -> SendResult:
        if self.behaviour is not None:
            self.behaviour(message)
        with self._lock:
            self.sent.append(message)
            return SendResult(provider_message_id=f"fake-{self.name}-{len(self.sent)}", provider_code="ok")

    def find_sent(self, message: Outgoing, *, since: datetime) -> list[SendResult]:
        """Like a provider that can be asked (FindsSent): the copies of this message, newest first."""
        with self._lock:
            return [SendResult(provider_message_id=f"fake-{self.name}-{number}", provider_code="ok")
                    for number, earlier in reversed(list(enumerate(self.sent, start=1)))
                    if (earlier.to, earlier.text, earlier.subject) == (message.to, message.text, message.subject)]

    def close(self) -> None:
        pass
