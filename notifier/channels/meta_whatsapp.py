"""WhatsApp over Meta's Cloud API: business-initiated template messages (R44).

POST {graph}/{version}/{phone_number_id}/messages with a bearer token and a JSON body
naming the approved template, its language and the body parameters in order.
"""

from __future__ import annotations

from typing import Any

from notifier.channels.base import Outgoing, PermanentFailure, SendResult
from notifier.channels.http import HttpAdapter

# Cloud API error codes worth retrying; everything else in a 4xx is the message's fault
TEMPORARY_CODES = {4, 80007, 130429, 131000, 131016, 131056, 133004}
KNOWN = {
    131026: "message undeliverable (no WhatsApp account or too old a client)",
    131047: "more than 24 hours since the customer's last message",
    131051: "unsupported message type",
    132000: "the template's parameter count does not match",
    132001: "the template does not exist in this language",
    132015: "the template is paused",
    190: "access token invalid or expired",
    100: "invalid parameter",
}


def _permanent(status: int, body: Any) -> str | None:
    error = body.get("error", {}) if isinstance(body, dict) else {}
    code = error.get("code")
    if code in TEMPORARY_CODES:
        return None
    return f"whatsapp {code or status}: {KNOWN.get(code) or error.get('message') or 'refused'}"


class MetaWhatsAppChannel(HttpAdapter):
    name = "whatsapp"
    provider = "meta"
    reports_back = True  # status webhooks carry biz_opaque_callback_data (ReportsBack)

    def __init__(self, *, token: str, phone_number_id: str, api_url: str = "https://graph.facebook.com",
                 api_version: str = "v19.0", timeout_s: float = 10.0) -> None:
        super().__init__(timeout_s=timeout_s)
        self.token = token
        self.url = f"{api_url.rstrip('/')}/{api_version}/{phone_number_id}/messages"

    def payload(self, message: Outgoing) -> dict[str, Any]:
        if not message.template:
            raise PermanentFailure("whatsapp: business-initiated messages need an approved template (R44)")
        return {
            "messaging_product": "whatsapp", "recipient_type": "individual", "to": message.to.lstrip("+"),
            # Meta returns it in every status webhook of this message: a copy whose answer was lost is
            # recognised by its reports (`ReportsBack`)
            "biz_opaque_callback_data": str(message.message_id),
            "type": "template",
            "template": {"name": message.template, "language": {"code": message.template_language or "en"},
                         "components": [{"type": "body", "parameters": [{"type": "text", "text": p}
                                                                         for p in message.params]},
                                        # quick replies: a tap comes back with the payload (R11, R14, notifier/inbound.py)
                                        *({"type": "button", "sub_type": "quick_reply", "index": str(i),
                                           "parameters": [{"type": "payload", "payload": f"{b}:{message.message_id}"}]}
                                          for i, b in enumerate(message.buttons))]},
        }

    def send(self, message: Outgoing) -> SendResult:
        body = self.call("POST", self.url, json=self.payload(message),
                         headers={"Authorization": f"Bearer {self.token}"}, permanent=_permanent)
        messages = body.get("messages") or [{}]
        return SendResult(provider_message_id=str(messages[0].get("id")), provider_code="accepted")
