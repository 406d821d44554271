"""What notifier tells the booking system: the events of the outbound queue, typed (version 1).

Each is one JSON object, an envelope around a typed ``data`` payload:

    {"schema_version": 1, "event_id": "...", "type": "message.failed", "tenant_id": "salon-berlin",
     "data": {"message_id": 4711, "booking_id": "B-1001", "kind": "reminder", "channel": "sms", ...}}

They are written to the outbox in the transaction that makes the change and published after
its commit, at least once: ``event_id`` is the same on every publication of one event, so a
consumer dedupes on it. The message events (``message.*``) are sent only for tenants that opted
in (their tenant file's ``message_events: true``); their ``message_id`` names the message for
good: one ``message.sent``, then at most one each of ``delivered`` and ``read``, or one
``message.failed``; or one ``message.withdrawn``. A resend by an operator is a new message
(``resend_of`` names the failed one).

Pure: pydantic and the standard library only. `make schema` writes docs/outbound.schema.json.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, create_model

from notifier.domain.model import MessageState

SCHEMA_VERSION = 1

# the message's state after the change -> the event that announces it
MESSAGE_EVENTS: dict[MessageState, str] = {
    MessageState.SENT: "message.sent",
    MessageState.DELIVERED: "message.delivered",
    MessageState.READ: "message.read",
    MessageState.FAILED: "message.failed",
    MessageState.WITHDRAWN: "message.withdrawn",
}


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MessageData(_Data):
    """What happened to one message. Nothing of the customer (no address, no name): the
    booking system knows its customer, and `booking_id` names the booking."""

    message_id: int = Field(description="notifier's id of the message: the same in every event about it")
    booking_id: str
    kind: str = Field(description="reminder, confirmation, info, ... (docs/events.md)")
    channel: Literal["email", "sms", "whatsapp", "staff", "activity"]
    recipient: Literal["customer", "staff"]
    at: AwareDatetime = Field(description="when notifier learnt it (UTC)")
    reason: str | None = Field(None, description="message.failed, message.withdrawn: why, in words")
    code: str | None = Field(None, description="message.failed: the provider's code, when it gave one")
    provider_message_id: str | None = Field(None, description="message.sent: the provider's id of the message")
    by: str | None = Field(None, description="an operator's action: who (API key id and name, or cli:<user>)")
    resend_of: int | None = Field(None, description="an operator's resend: the failed message it repeats")


class BookingData(_Data):
    booking_id: str
    starts_at: AwareDatetime
    resource_id: str
    at: AwareDatetime
    via: Literal["sms", "whatsapp"] | None = Field(None, description="the customer answered by message on this "
                                                                      "channel (R11, R14); absent: on their page")


class CancelledData(BookingData):
    reason: str | None = None


class CountersData(_Data):
    booking_id: str
    resource_id: str
    starts_at: AwareDatetime
    red: bool
    late: bool
    late_counter: bool


class SlotReleasedData(_Data):
    booking_id: str
    resource_id: str
    starts_at: AwareDatetime
    reason: Literal["cancelled_by_customer", "not_marked_arrived"]
    at: AwareDatetime | None = None
    red: bool | None = None
    late: bool | None = None
    late_counter: bool | None = None


class ConsentData(_Data):
    customer_id: str
    channel: Literal["sms", "whatsapp"]
    consent: bool = Field(description="false: the customer opted out of the channel; true: opted in again")
    via: Literal["reply", "provider"] = Field(description="reply: the customer's message (STOP, START, ...); "
                                                          "provider: the provider refused as the customer had "
                                                          "opted out with it (Twilio 21610, WhatsApp 131050)")
    keyword: str | None = Field(None, description="reply: the word the customer sent, as notifier read it")
    at: AwareDatetime


class ActivityData(_Data):
    booking_id: str
    message_id: int
    kind: str
    delivered_as: str | None
    at: AwareDatetime


def _envelope(type_: str, data: type[_Data], doc: str) -> type[BaseModel]:
    return create_model(f"Outbound_{type_.replace('.', '_')}", __doc__=doc,
                        __config__=ConfigDict(extra="forbid", title=type_),
                        schema_version=(Literal[1], ...), event_id=(str, ...), type=(Literal[type_], ...),
                        tenant_id=(str, ...), data=(data, ...))


OUTBOUND_TYPES: dict[str, tuple[type[_Data], str]] = {
    "message.sent": (MessageData, "a provider took the message"),
    "message.delivered": (MessageData, "the provider reported it delivered"),
    "message.read": (MessageData, "the provider reported it read (WhatsApp)"),
    "message.failed": (MessageData, "the message failed for good (a provider's refusal, no address, retries "
                                    "used up, or a provider's report that it was not delivered)"),
    "message.withdrawn": (MessageData, "the message will not go: it no longer applies, or an operator withdrew it"),
    "booking.confirmed_by_customer": (BookingData, "the customer confirmed on their page (R11)"),
    "booking.cancelled_by_customer": (CancelledData, "the customer cancelled on their page (R14)"),
    "slot.released": (SlotReleasedData, "the slot is free again (R14, R18)"),
    "counters.changed": (CountersData, "a booking's markers changed (R12, R16)"),
    "customer.consent_changed": (ConsentData, "the customer withdrew or restored consent for a channel by "
                                              "message, or its provider says they opted out (R3): the booking "
                                              "system should record it; notifier keeps it either way"),
    "activity.created": (ActivityData, "a follow-up activity reached the booking system's webhook (R13, R17)"),
}
_MODELS = tuple(_envelope(type_, data, doc) for type_, (data, doc) in OUTBOUND_TYPES.items())
_adapter: TypeAdapter[Any] = TypeAdapter(Annotated[Union[_MODELS], Field(discriminator="type")])  # noqa: UP007


def message_event(state: MessageState, *, message_id: int, booking_id: str, kind: str, channel: str,
                  recipient: str, at: datetime, reason: str | None = None, code: str | None = None,
                  provider_message_id: str | None = None, by: str | None = None,
                  resend_of: int | None = None) -> tuple[str, dict[str, Any]]:
    """(type, data) of the event announcing that a message reached `state`."""
    data: dict[str, Any] = {"message_id": message_id, "booking_id": booking_id, "kind": kind, "channel": channel,
                            "recipient": recipient, "at": at.isoformat()}
    optional = {"reason": reason, "code": code, "provider_message_id": provider_message_id, "by": by,
                "resend_of": resend_of}
    data.update((k, v) for k, v in optional.items() if v is not None)
    return MESSAGE_EVENTS[state], data


def validate(event: dict[str, Any]) -> Any:
    """An outbound event as published, checked against its type's model (tests, consumers' docs)."""
    return _adapter.validate_python(event)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the outbound events, as exported to docs/outbound.schema.json."""
    schema = _adapter.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"notifier outbound event (schema_version {SCHEMA_VERSION})"
    return schema
