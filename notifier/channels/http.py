"""What the HTTP provider adapters share: pooled sessions per thread, and turning the
provider's answer into a result or a typed failure (temporary: retry; permanent: record)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from notifier.channels.base import PermanentFailure, TemporaryFailure


def retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        return max((parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds(), 0.0)
    except (TypeError, ValueError):
        return None


class HttpAdapter:
    """Base for adapters that call a provider's REST API."""

    name = "http"

    def __init__(self, *, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self._local = threading.local()

    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        return session

    def call(self, method: str, url: str, *, permanent: Callable[[int, Any], str | None], **kwargs: Any) -> Any:
        """One request; 5xx, 408, 429, timeouts and connection errors are temporary; other 4xx
        are permanent unless `permanent(status, body)` returns None (then temporary)."""
        try:
            response = self.session().request(method, url, timeout=self.timeout_s, **kwargs)
        except requests.Timeout as exc:
            raise TemporaryFailure(f"{self.name}: timeout after {self.timeout_s:.0f} s", code="timeout") from exc
        except requests.RequestException as exc:
            raise TemporaryFailure(f"{self.name}: {exc.__class__.__name__}", code="connection") from exc
        try:
            body = response.json()
        except ValueError:
            body = {"raw": response.text[:300]}
        status = response.status_code
        if status < 300:
            return body
        wait = retry_after_s(response.headers.get("Retry-After"))
        if status in (408, 429) or status >= 500:
            raise TemporaryFailure(f"{self.name} answered {status}", code=str(status), retry_after_s=wait)
        reason = permanent(status, body)
        if reason is None:
            raise TemporaryFailure(f"{self.name} answered {status}: {body}", code=str(status), retry_after_s=wait)
        raise PermanentFailure(reason, code=str(status))

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
