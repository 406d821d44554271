"""The one interface every channel adapter implements.

`send` returns a `SendResult` or raises `TemporaryFailure` (retry later; honour
`retry_after_s` when the provider said so) or `PermanentFailure` (record, never retry).
Adapters only send; the dispatch service claims, records attempts and retries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str  # e.g. "text/calendar; method=REQUEST"
    data: bytes


@dataclass(frozen=True)
class Outgoing:
    """One rendered message, ready for a provider."""

    message_id: int
    idempotency_key: str  # stable per message: providers that support it dedupe on it
    to: str  # email address or E.164 phone number
    text: str
    subject: str | None = None
    html: str | None = None
    attachments: tuple[Attachment, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, object] = field(default_factory=dict)  # ids and kind for machine receivers
    # WhatsApp business-initiated messages: a pre-approved provider template and its parameters (R44)
    template: str | None = None
    template_language: str | None = None
    params: tuple[str, ...] = ()
    buttons: tuple[str, ...] = ()  # the template's quick-reply buttons in order: confirm, cancel (R11, R14)
    status_callback: str | None = None  # where the provider reports delivery statuses
    # the tenant's sender identity (empty: the adapter's own, from the settings): email From and
    # Reply-To; an SMS's From number or alphanumeric id, or its Twilio messaging service
    sender: str = ""
    reply_to: str = ""
    messaging_service: str = ""
    # Twilio's WhatsApp: the Content SID (HX...) of `template` in `template_language` for the tenant
    content_sid: str = ""


@dataclass(frozen=True)
class SendResult:
    provider_message_id: str
    provider_code: str | None = None


class ChannelError(Exception):
    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class TemporaryFailure(ChannelError):
    """Worth another try: 5xx, timeouts, throttling."""

    def __init__(self, reason: str, *, code: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(reason, code=code)
        self.retry_after_s = retry_after_s


class PermanentFailure(ChannelError):
    """Will never work as it is: invalid address, unsubscribed, unauthorised."""


class CannotTell(ChannelError):
    """The provider cannot say whether it accepted this message (see `FindsSent`)."""


class ChannelAdapter(Protocol):
    name: str  # the channel
    provider: str  # who issues its message ids (smtp, twilio, meta, webhook): status callbacks match on both

    def send(self, message: Outgoing) -> SendResult: ...

    def close(self) -> None: ...


class FindsSent(Protocol):
    """An adapter whose provider can say whether it already accepted a message. Dispatch asks
    before sending a message whose earlier attempt ended unrecorded (a worker killed between
    the provider's answer and the commit), so that message is recorded, not sent again.

    `find_sent` returns every copy the provider holds of this text to this recipient since
    `since`, newest first; dispatch takes one that no other message of ours has recorded (two
    messages may read the same)."""

    def find_sent(self, message: Outgoing, *, since: datetime) -> list[SendResult]: ...


class ReportsBack(Protocol):
    """An adapter whose provider's status reports name the message they are about (Twilio's
    StatusCallback URL carries `message=<Outgoing.message_id>`; Meta returns
    `biz_opaque_callback_data`). When the provider took a message and its answer never reached
    us (a timeout; a worker killed, or paused past its lease, before the commit), its reports
    still come, and dispatch finds the copy by them instead of sending a second one. After a
    lost answer the next attempt waits `report_wait_s` for them."""

    reports_back: bool

