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
from pydantic import BaseModel, ConfigDict, Field

from notifier.channels.base import Outgoing, PermanentFailure, SendResult
from notifier.channels.http import HttpAdapter
from notifier.channels.outbound import AddressRefused, Network, guarded_pool_manager
from notifier.domain.model import Kind

STAFF_KINDS = tuple(k.value for k in Kind if k.to_staff)


class Reply(BaseModel):
    """A customer's message that notifier could not act on (R1), for the staff: an answer that
    means nothing known, or one the customer's page would have refused."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="what the customer wrote (or the button they pressed), at most 1,600 characters")
    channel: str = Field(json_schema_extra={"enum": ["sms", "whatsapp"]})
    received_at: str | None = Field(json_schema_extra={"format": "date-time"})
    intent: str | None = Field(None, json_schema_extra={"enum": ["confirm", "cancel"]},
                               description="what notifier read in it, when it read an answer it could not carry out")
    refused: str | None = Field(None, description="why the answer was not carried out, as the page would say: "
                                                  "outside_window, not_allowed, not_now, changed, expired")


class WebhookBody(BaseModel):
    """The JSON body of a staff notice or follow-up activity, as `WebhookChannel.send` writes it
    for a message `notifier.dispatch` prepared: docs/webhooks.schema.json is generated from this
    (`make schema`) and tests/unit/test_webhooks.py checks what is sent against that file."""

    model_config = ConfigDict(extra="forbid", title="notifier staff notice or follow-up activity", json_schema_extra={
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": "The body notifier POSTs (application/json, UTF-8) to the tenant's webhook URL for a "
                       "staff notice or a follow-up activity. Headers: X-Notifier-Signature: sha256=<hex "
                       "HMAC-SHA256 of the raw body, keyed with the webhook secret>; X-Notifier-Idempotency-Key: "
                       "the body's idempotency_key. Answer 2xx once stored: a 5xx, 408, 429, timeout or refused "
                       "connection is retried with backoff (Retry-After honoured), any other answer fails the "
                       "message for good (on the booking's timeline). See docs/events.md."})

    type: str = Field(json_schema_extra={"enum": ["notifier.staff", "notifier.activity", "customer.replied"]},
                      description="notifier.staff: a notice for the staff (R14, R18, R23, R33); notifier.activity: "
                                  "a follow-up task for the responsible staff member (R13, R17); customer.replied: "
                                  "the customer's message that notifier could not act on (R1), in `reply`")
    message_id: int = Field(description="notifier's id of the message; the same on every delivery attempt")
    idempotency_key: str = Field(description="tenant/booking/planning key, the same on every delivery attempt "
                                             "(also the X-Notifier-Idempotency-Key header): dedupe on it")
    title: str = Field(description="one line, rendered from the bundle's `subject` block")
    body: str = Field(description="plain text, rendered from the bundle's `text` block in the tenant's language")
    tenant_id: str
    booking_id: str
    kind: str = Field(json_schema_extra={"enum": list(STAFF_KINDS)},
                      description="staff_new_request, staff_confirmed, staff_cancelled, staff_released (notices); "
                                  "staff_reply (customer.replied); activity_unconfirmed, activity_late (activities)")
    resource_id: str = Field(description="the booked resource: the staff member, room or equipment")
    starts_at: str = Field(json_schema_extra={"format": "date-time"},
                           description="the visit's start, ISO 8601 with offset (UTC)")
    reply: Reply | None = Field(None, description="customer.replied only: the customer's message")


def json_schema() -> dict[str, Any]:
    """docs/webhooks.schema.json (`make schema`)."""
    return WebhookBody.model_json_schema()


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
