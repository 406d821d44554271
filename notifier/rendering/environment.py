"""Rendering messages from the admins' Jinja templates, sandboxed (N6).

Templates live under `<root>/<resource_type>/<language>/<kind>.<channel>.j2`, with
`<root>/default/...` for wording both resource types share. One file
holds every part of a message as blocks: `subject`, `text` and `html` for email,
`text` for SMS and staff notices. Dates and times are formatted with babel in the
customer's language and the tenant's zone: `{{ booking.starts_at|date }}`,
`{{ booking.starts_at|time }}`, `{{ booking.starts_at|datetime('full') }}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_datetime, format_time
from jinja2 import FileSystemLoader, StrictUndefined, TemplateNotFound, pass_context
from jinja2.sandbox import ImmutableSandboxedEnvironment

PARTS = ("subject", "text", "html")


class TemplateMissing(LookupError):
    """No template for this kind, channel, resource type and any fallback language."""


@dataclass(frozen=True)
class Rendered:
    subject: str | None
    text: str
    html: str | None
    template: str  # which file it came from


def _plain(text: str) -> str:
    """CLDR puts narrow and no-break spaces in dates ("4:30\u202fPM"); one of them would force
    an SMS from GSM-7 into UCS-2 and halve its length. A plain space reads the same."""
    return text.replace("\u202f", " ").replace("\xa0", " ")


def _moment(ctx: Any, value: datetime) -> tuple[datetime, str]:
    zone = ZoneInfo(ctx["_tz"])
    return value.astimezone(zone), ctx["_locale"]


@pass_context
def _date(ctx: Any, value: datetime, fmt: str = "full") -> str:
    moment, locale = _moment(ctx, value)
    return _plain(format_date(moment.date(), format=fmt, locale=locale))


@pass_context
def _time(ctx: Any, value: datetime, fmt: str = "short") -> str:
    moment, locale = _moment(ctx, value)
    return _plain(format_time(moment, format=fmt, tzinfo=moment.tzinfo, locale=locale))


@pass_context
def _datetime(ctx: Any, value: datetime, fmt: str = "medium") -> str:
    moment, locale = _moment(ctx, value)
    return _plain(format_datetime(moment, format=fmt, tzinfo=moment.tzinfo, locale=locale))


class Renderer:
    """Compiled templates are cached by the Jinja environment (per root directory)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.env = ImmutableSandboxedEnvironment(
            loader=FileSystemLoader(str(self.root)),
            undefined=StrictUndefined,
            autoescape=False,  # html blocks escape with |e; text parts must stay plain
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            auto_reload=False,
            cache_size=2000,
        )
        self.env.filters.update(date=_date, time=_time, datetime=_datetime)

    def path_for(self, kind: str, channel: str, resource_type: str, languages: tuple[str, ...]) -> str:
        """The resource type's own template (R41), else the shared `default/` one, per language."""
        for language in languages:
            for folder in (resource_type, "default"):
                name = f"{folder}/{language}/{kind}.{channel}.j2"
                if (self.root / name).is_file():
                    return name
        raise TemplateMissing(f"no template for {kind}.{channel} ({resource_type}) in {', '.join(languages)}")

    def render(self, kind: str, channel: str, resource_type: str, languages: tuple[str, ...],
               context: Mapping[str, Any], *, timezone: str, locale: str) -> Rendered:
        name = self.path_for(kind, channel, resource_type, languages)
        try:
            template = self.env.get_template(name)
        except TemplateNotFound as exc:  # pragma: no cover - raced with a file removal
            raise TemplateMissing(str(exc)) from exc
        ctx = template.new_context(dict(context, _tz=timezone, _locale=locale))
        parts: dict[str, str | None] = {}
        for part in PARTS:
            block = template.blocks.get(part)
            parts[part] = "".join(block(ctx)).strip() if block else None
        if not parts["text"]:
            raise TemplateMissing(f"{name} has no 'text' block")
        return Rendered(subject=parts["subject"], text=parts["text"], html=parts["html"], template=name)


@lru_cache(maxsize=8)
def renderer_for(root: str) -> Renderer:
    return Renderer(root)
