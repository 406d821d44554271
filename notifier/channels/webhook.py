"""Webhook: staff notices and follow-up activities, delivered to the booking system as a
signed JSON POST (R1). The booking system turns them into its notifications and CRM tasks.

Headers: `X-Notifier-Signature: sha256=<hex HMAC of the body>` with the shared secret,
`X-Notifier-Idempotency-Key` (stable per message: a retried delivery can be recognised).

The URL is the operator's (a tenant's file or `staff_webhook_url`); connections to non-public
addresses are refused unless allowed (notifier/channels/outbound.py). What the receiver answers
is not kept: the timeline records the status code and its standard phrase only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import urllib3

from notifier.channels.base import Outgoing, PermanentFailure, SendResult
from notifier.channels.http import HttpAdapter
from notifier.channels.outbound import AddressRefused, Network, guarded_pool_manager


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _phrase(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


class WebhookChannel(HttpAdapter):
    provider = "webhook"

    def __init__(self, name: str, *, secret: str, timeout_s: float = 10.0,
                 allowed_networks: Sequence[Network] = ()) -> None:
        self.allowed_networks = tuple(allowed_networks)
        super().__init__(timeout_s=timeout_s)
        self.name = name
        self.secret = secret

    def pool_manager(self, **kwargs: Any) -> urllib3.PoolManager:
        return guarded_pool_manager(self.allowed_networks, **kwargs)

    def send(self, message: Outgoing) -> SendResult:
        payload = {"type": f"notifier.{self.name}", "message_id": message.message_id,
                   "idempotency_key": message.idempotency_key, "title": message.subject or "",
                   "body": message.text, **message.metadata}
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        headers = {"Content-Type": "application/json", "X-Notifier-Signature": sign(self.secret, body),
                   "X-Notifier-Idempotency-Key": message.idempotency_key}
        try:
            self.call("POST", message.to, data=body, headers=headers, keep_answer=False,
                      permanent=lambda status, _answer: f"webhook answered {_phrase(status)}")
        except AddressRefused as exc:
            raise PermanentFailure(f"webhook address refused: {exc}", code="refused") from None
        return SendResult(provider_message_id=message.idempotency_key, provider_code="2xx")
