"""What an admin writes in `config/tenants/*.yaml`: a tenant, its notification defaults and
its resources, validated by the same types as the events that change them later (N3).

Pure: pydantic and the contract's types only. Reading the file is the caller's business
(`services.load_tenants`); a file that does not fit is refused whole, with the key path and
the reason of each problem.
"""

from __future__ import annotations

from email.headerregistry import Address
from email.utils import parseaddr
from typing import Annotated, Any, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from notifier.domain.events import Company, Id, Line, Zone
from notifier.domain.model import NotificationSettings, TenantSettings, WebhookUrl, validation_problems


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResourceConfig(_Config):
    id: Id
    name: Annotated[Line, Field(min_length=1, max_length=200)]
    type: Literal["specialist", "equipment"] = "specialist"
    timezone: Zone | None = None
    settings: NotificationSettings | None = None  # absent: the resource keeps what it has


def _address(value: str) -> str:
    """One email address, as mail systems read it (syntax only, never DNS)."""
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not one email address: {exc}") from None


def _mailbox(value: str) -> str:
    """A From header's mailbox: an address, with a display name or without
    ("Salon Lindenblatt <termine@lindenblatt.example>"), on one line."""
    if any(ch in value for ch in "\r\n\x00"):
        raise ValueError("must be one line")
    name, address = parseaddr(value)
    if not address or (not name and value.strip() != address):
        raise ValueError("expected an address, or a name and an address: Name <user@example.org>")
    return str(Address(display_name=name, addr_spec=_address(address))) if name else _address(address)


def _sms_sender(value: str) -> str:
    """What an SMS may come from: an E.164 number, or an alphanumeric sender id (1 to 11
    letters, digits and spaces, at least one letter; not every country delivers those)."""
    if value.startswith("+"):
        if not (value[1:].isascii() and value[1:].isdigit() and 8 <= len(value) <= 16):
            raise ValueError("a number must be in E.164: + and 7 to 15 digits")
        return value
    if not (1 <= len(value) <= 11 and value.isascii() and all(c.isalnum() or c == " " for c in value)
            and any(c.isalpha() for c in value)):
        raise ValueError("an alphanumeric sender id is 1 to 11 letters, digits and spaces, with a letter")
    return value


class SenderConfig(_Config):
    """Who the tenant's customers see a message from (and where their answers go); a key left
    out falls back to the settings (`mail_from`, `reply_to`, `twilio_from` /
    `twilio_messaging_service_sid`). Set by the operator's tenant file only: an event cannot
    make mail leave under another name."""

    mail_from: Annotated[str, Field(max_length=320), AfterValidator(_mailbox)] | None = None
    reply_to: Annotated[str, Field(max_length=320), AfterValidator(_mailbox)] | None = None
    sms_from: Annotated[str, AfterValidator(_sms_sender)] | None = None
    sms_messaging_service: Annotated[str, Field(pattern=r"^MG[0-9a-f]{32}$")] | None = None
    # Twilio's WhatsApp: the tenant's approved templates, name -> language code -> Content SID
    # (over the settings' `[notifier.twilio_content]`)
    whatsapp_content: dict[Annotated[str, Field(pattern=r"^[a-z0-9_]{1,512}$")],
                           dict[Annotated[str, Field(pattern=r"^[A-Za-z_]{2,8}$")],
                                Annotated[str, Field(pattern=r"^HX[0-9a-fA-F]{32}$")]]] | None = None

    @model_validator(mode="after")
    def _one_sms_sender(self) -> SenderConfig:
        if self.sms_from and self.sms_messaging_service:
            raise ValueError("sms_from and sms_messaging_service: give one (a messaging service picks its own number)")
        return self

    def values(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if v}


class TenantConfig(_Config):
    id: Id
    name: Annotated[Line, Field(min_length=1, max_length=200)]
    timezone: Zone = "Europe/Berlin"
    home_region: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] = "DE"
    language: Annotated[str, Field(pattern=r"^[a-z]{2}$")] = "en"
    channels: list[Literal["email", "sms", "whatsapp"]] = ["email"]
    company: Company = {}
    settings: TenantSettings = TenantSettings()
    # where staff notices and activities go (else the `staff_webhook_url` setting): the operator's
    webhook_url: WebhookUrl | None = None
    # the booking system hears of each message's outcome (docs/events.md, "Message events")
    message_events: bool = False
    sender: SenderConfig = SenderConfig()
    resources: Annotated[list[ResourceConfig], Field(max_length=10_000)] = []


class InvalidConfig(ValueError):
    """A tenant file that does not fit: one line per problem, each with its key path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def tenant_config(doc: Any) -> TenantConfig:
    """The parsed YAML document as a `TenantConfig`, or `InvalidConfig`."""
    if not isinstance(doc, dict):
        raise InvalidConfig([f"<top>: expected a mapping of tenant fields, got {type(doc).__name__}"])
    try:
        return TenantConfig.model_validate(doc)
    except ValidationError as exc:
        raise InvalidConfig(validation_problems(exc, limit=20, show_input=True)) from None
