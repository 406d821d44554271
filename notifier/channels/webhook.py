"""Webhook: staff notices and follow-up activities, delivered to the booking system as a
signed JSON POST (R1). The booking system turns them into its notifications and CRM tasks.

Headers: `X-Notifier-Signature: sha256=<hex HMAC of the body>` with the shared secret,
`X-Notifier-Idempotency-Key` (stable per message: a retried delivery can be recognised).
"""

from __future__ import annotations

import hashlib
import hmac
import json

from notifier.channels.base import Outgoing, SendResult
from notifier.channels.http import HttpAdapter


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookChannel(HttpAdapter):
    def __init__(self, name: str, *, secret: str, timeout_s: float = 10.0) -> None:
        super().__init__(timeout_s=timeout_s)
        self.name = name
        self.secret = secret

    def send(self, message: Outgoing) -> SendResult:
        payload = {"type": f"notifier.{self.name}", "message_id": message.message_id,
                   "idempotency_key": message.idempotency_key, "title": message.subject or "",
                   "body": message.text, **message.metadata}
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        headers = {"Content-Type": "application/json", "X-Notifier-Signature": sign(self.secret, body),
                   "X-Notifier-Idempotency-Key": message.idempotency_key}
        self.call("POST", message.to, data=body, headers=headers,
                  permanent=lambda status, answer: f"webhook answered {status}: {answer}")
        return SendResult(provider_message_id=message.idempotency_key, provider_code="2xx")
