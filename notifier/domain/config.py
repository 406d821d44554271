"""What an admin writes in `config/tenants/*.yaml`: a tenant, its notification defaults and
its resources, validated by the same types as the events that change them later (N3).

Pure: pydantic and the contract's types only. Reading the file is the caller's business
(`services.load_tenants`); a file that does not fit is refused whole, with the key path and
the reason of each problem.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
