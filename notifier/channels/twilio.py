"""SMS and WhatsApp over Twilio's Messages API (form-encoded, basic auth, StatusCallback).

POST {api}/2010-04-01/Accounts/{AccountSid}/Messages.json with To, From (or
MessagingServiceSid), Body or ContentSid + ContentVariables, StatusCallback.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from notifier.channels.base import CannotTell, Outgoing, PermanentFailure, SendResult
from notifier.channels.http import HttpAdapter

# Twilio error codes that will not go away by retrying (https status 400 with these codes)
PERMANENT_CODES = {
    21211: "invalid 'To' number",
    21214: "'To' number cannot be reached",
    21408: "no permission to send to this region",
    21610: "the recipient unsubscribed (replied STOP)",
    21612: "the 'To' number cannot receive this message",
    21614: "'To' is not a mobile number",
    21655: "the ContentSid is not a template of this account",
    63016: "outside the WhatsApp session window: a template is needed",
    20003: "authentication failed",
}
TEMPORARY_CODES = {20429, 30001}  # too many requests, queue overflow
CONTENT_SID = re.compile(r"HX[0-9a-fA-F]{32}")  # a Content API template (twilio error 21655 otherwise)


def _permanent(status: int, body: Any) -> str | None:
    code = body.get("code") if isinstance(body, dict) else None
    if code in TEMPORARY_CODES:
        return None
    known = PERMANENT_CODES.get(code) if isinstance(code, int) else None
    message = body.get("message") if isinstance(body, dict) else None
    return f"twilio {code or status}: {known or message or 'refused'}"


class TwilioSMSChannel(HttpAdapter):
    name = "sms"
    provider = "twilio"
    reports_back = True  # its StatusCallback URL names our message (ReportsBack)

    def __init__(self, *, account_sid: str, auth_token: str, sender: str = "", messaging_service_sid: str = "",
                 api_url: str = "https://api.twilio.com", timeout_s: float = 10.0) -> None:
        super().__init__(timeout_s=timeout_s)
        self.account_sid, self.auth_token = account_sid, auth_token
        self.sender, self.messaging_service_sid = sender, messaging_service_sid
        self.api_url = api_url.rstrip("/")
        self.url = f"{self.api_url}/2010-04-01/Accounts/{account_sid}/Messages.json"

    def form(self, message: Outgoing) -> dict[str, str]:
        form = {"To": message.to, "Body": message.text}
        if message.messaging_service or message.sender:  # the tenant's own sender
            form.update({"MessagingServiceSid": message.messaging_service} if message.messaging_service
                         else {"From": message.sender})
        elif self.messaging_service_sid:
            form["MessagingServiceSid"] = self.messaging_service_sid
        else:
            form["From"] = self.sender
        if message.status_callback:  # naming the message: a copy whose answer was lost is known by its reports
            separator = "&" if "?" in message.status_callback else "?"
            form["StatusCallback"] = f"{message.status_callback}{separator}message={message.message_id}"
        return form

    def send(self, message: Outgoing) -> SendResult:
        body = self.call("POST", self.url, data=self.form(message), auth=(self.account_sid, self.auth_token),
                         permanent=_permanent)
        return SendResult(provider_message_id=str(body.get("sid")), provider_code=str(body.get("status", "queued")))

    def find_sent(self, message: Outgoing, *, since: datetime) -> list[SendResult]:
        """Twilio's copies of this message: the recipient's messages, newest first, matched on
        the body (ours renders the same text on every attempt). Not filtered by DateSent, which
        stays empty while Twilio still queues a message; paging stops at messages created a day
        before `since`."""
        form = self.form(message)
        if "Body" not in form:
            raise CannotTell("twilio lists a content template's rendered text, which we cannot compare")
        oldest = since - timedelta(days=1)
        copies: list[SendResult] = []
        params: dict[str, str] | None = {"To": form["To"], "PageSize": "100"}
        url: str | None = self.url
        while url:
            page = self.call("GET", url, params=params, auth=(self.account_sid, self.auth_token),
                             permanent=_permanent)
            for sent in page.get("messages", []):
                created = sent.get("date_created")
                if created and parsedate_to_datetime(created) < oldest:
                    return copies
                if sent.get("body") == form["Body"] and sent.get("status") not in ("failed", "undelivered"):
                    copies.append(SendResult(provider_message_id=str(sent.get("sid")),
                                             provider_code=str(sent.get("status", "queued"))))
            next_page = page.get("next_page_uri")
            url, params = (f"{self.api_url}{next_page}", None) if next_page else (None, None)
        return copies


class TwilioWhatsAppChannel(TwilioSMSChannel):
    """WhatsApp through Twilio: an approved template is a Content SID (HX...) with numbered
    variables. Dispatch looks the SID up for the tenant and the template's language
    (`dispatch.content_sid_of`); a template without one is refused here, never sent by name."""

    name = "whatsapp"

    def form(self, message: Outgoing) -> dict[str, str]:
        form = super().form(message)
        form["To"] = f"whatsapp:{message.to}"
        if "From" in form:
            form["From"] = f"whatsapp:{self.sender}"
        if message.template:
            if not CONTENT_SID.fullmatch(message.content_sid):
                raise PermanentFailure(f"twilio: WhatsApp template {message.template} "
                                       f"({message.template_language or '?'}) has no Content SID: map it under "
                                       f"[notifier.twilio_content] or the tenant's sender.whatsapp_content",
                                       code="content_sid")
            form.pop("Body")
            form["ContentSid"] = message.content_sid
            form["ContentVariables"] = json.dumps({str(i + 1): p for i, p in enumerate(message.params)})
        return form
