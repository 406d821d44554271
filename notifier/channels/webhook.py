"""Webhook: staff notices and follow-up activities, delivered to the booking system as a
signed JSON POST (R1). The booking system turns them into its notifications and CRM tasks.

Headers: `X-Notifier-Signature: sha256=<hex HMAC of the body>` with the shared secret,
`X-Notifier-Idempotency-Key` (stable per message: a retried delivery can be recognised).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading

import requests

from notifier.channels.base import Outgoing, PermanentFailure, SendResult, TemporaryFailure


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookChannel:
    def __init__(self, name: str, *, secret: str, timeout_s: float = 10.0) -> None:
        self.name = name
        self.secret = secret
        self.timeout_s = timeout_s
        self._local = threading.local()  # one pooled session per sending thread

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def send(self, message: Outgoing) -> SendResult:
        payload = {"type": f"notifier.{self.name}", "message_id": message.message_id,
                   "idempotency_key": message.idempotency_key, "title": message.subject or "",
                   "body": message.text, **message.metadata}
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        headers = {"Content-Type": "application/json", "X-Notifier-Signature": sign(self.secret, body),
                   "X-Notifier-Idempotency-Key": message.idempotency_key}
        try:
            response = self._session().post(message.to, data=body, headers=headers, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise TemporaryFailure(f"webhook: {exc.__class__.__name__}") from exc
        code = str(response.status_code)
        if response.status_code == 429 or response.status_code >= 500 or response.status_code == 408:
            retry_after = response.headers.get("Retry-After")
            raise TemporaryFailure(f"webhook answered {code}", code=code,
                                   retry_after_s=float(retry_after) if retry_after and retry_after.isdigit()
                                   else None)
        if response.status_code >= 400:
            raise PermanentFailure(f"webhook answered {code}: {response.text[:200]}", code=code)
        return SendResult(provider_message_id=response.headers.get("X-Request-Id") or message.idempotency_key,
                          provider_code=code)

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
