"""Rendering messages from the admins' Jinja templates, sandboxed (N6).

Templates live under `<root>/<resource_type>/<language>/<kind>.<channel>.j2`, with
`<root>/default/...` for wording both resource types share. One file
holds every part of a message as blocks: `subject`, `text` and `html` for email,
`text` for SMS and staff notices. Dates and times are formatted with babel in the
customer's language and the tenant's zone: `{{ booking.starts_at|date }}`,
`{{ booking.starts_at|time }}`, `{{ booking.starts_at|datetime('full') }}`.

A loaded bundle that has no template at all for a kind and channel (a kind, or a kind's channel,
added after the bundle was written) renders that kind from the shipped templates, its fallback.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_datetime, format_time
from jinja2 import DictLoader, FileSystemLoader, StrictUndefined, TemplateNotFound, pass_context
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
    provider_template: str | None = None  # WhatsApp: the pre-approved template's name (R44)
    provider_language: str | None = None
    params: tuple[str, ...] = ()
    buttons: tuple[str, ...] = ()  # WhatsApp: the template's quick-reply buttons, `confirm` / `cancel` (R11, R14)


def _plain(text: str) -> str:
    """CLDR puts narrow and no-break spaces in dates ("4:30\u202fPM"); one of them would force
    an SMS from GSM-7 into UCS-2 and halve its length. A plain space reads the same."""
    return text.replace("\u202f", " ").replace("\xa0", " ")


def _moment(ctx: Any, value: datetime) -> tuple[datetime, str]:
    zone = ZoneInfo(ctx["_tz"])
    return value.astimezone(zone), ctx["_locale"]


def kind_channels(names: Iterable[str]) -> frozenset[str]:
    """Each `<kind>.<channel>` that template files of these names are for, in any folder or language."""
    return frozenset(name.rsplit("/", 1)[-1].removesuffix(".j2") for name in names if name.endswith(".j2"))


# Formatting is pure in (moment, format, zone, locale), and a day's messages share their dates
# and times: each distinct one is formatted once (babel parses its locale data on every call).
@lru_cache(maxsize=8192)
def _format_date(day: date, fmt: str, locale: str) -> str:
    return _plain(format_date(day, format=fmt, locale=locale))


@lru_cache(maxsize=8192)
def _format_time(value: datetime, fmt: str, zone: str, locale: str) -> str:
    moment = value.astimezone(ZoneInfo(zone))
    return _plain(format_time(moment, format=fmt, tzinfo=moment.tzinfo, locale=locale))


@lru_cache(maxsize=8192)
def _format_datetime(value: datetime, fmt: str, zone: str, locale: str) -> str:
    moment = value.astimezone(ZoneInfo(zone))
    return _plain(format_datetime(moment, format=fmt, tzinfo=moment.tzinfo, locale=locale))


@pass_context
def _date(ctx: Any, value: datetime, fmt: str = "full") -> str:
    moment, locale = _moment(ctx, value)
    return _format_date(moment.date(), fmt, locale)


@pass_context
def _time(ctx: Any, value: datetime, fmt: str = "short") -> str:
    return _format_time(value, fmt, ctx["_tz"], ctx["_locale"])


@pass_context
def _datetime(ctx: Any, value: datetime, fmt: str = "medium") -> str:
    return _format_datetime(value, fmt, ctx["_tz"], ctx["_locale"])


class Renderer:
    """Renders from a folder (the shipped bundle) or from a loaded bundle's files (R40).

    Lookup order per language: `resources/<resource_id>/` (a resource's own wording, R41),
    `<resource_type>/` (specialist or equipment), `default/`. WhatsApp messages name a
    pre-approved provider template and its parameters (R44), declared in the bundle's
    manifest (`bundle.yaml`), found in the same order (`whatsapp_entry`). Compiled templates
    are cached by the Jinja environment.

    `fallback` (the shipped templates, for a loaded bundle) renders every kind and channel this
    bundle has no file of at all: one added after the bundle was written. Its `template` then
    names the fallback's version too (`shipped:default/de/staff_reply.staff.j2`). A kind the
    bundle has in some languages or resource types only is the bundle's own (validation refuses
    such a bundle), and WhatsApp entries never fall back: an approved template is the tenant's.
    """

    def __init__(self, root: Path | str | None = None, *, files: Mapping[str, str] | None = None,
                 manifest: Mapping[str, Any] | None = None, version: str = "shipped",
                 fallback: Renderer | None = None) -> None:
        if files is None:
            self.root = Path(root or ".")
            loader: Any = FileSystemLoader(str(self.root))
            self._names = {str(p.relative_to(self.root)) for p in self.root.rglob("*.j2")}
            manifest_file = self.root / "bundle.yaml"
            if manifest is None and manifest_file.is_file():
                import yaml

                manifest = yaml.safe_load(manifest_file.read_text(encoding="utf-8")) or {}
        else:
            self.root = Path(root or ".")
            loader = DictLoader(dict(files))
            self._names = set(files)
        self.manifest: Mapping[str, Any] = manifest or {}
        self.fallback = fallback
        self._kind_channels = kind_channels(self._names)
        self._params: dict[str, Any] = {}
        self.version = version
        self.env = ImmutableSandboxedEnvironment(
            loader=loader,
            undefined=StrictUndefined,
            autoescape=False,  # html blocks escape with |e; text parts must stay plain
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            auto_reload=False,
            cache_size=2000,
        )
        self.env.filters.update(date=_date, time=_time, datetime=_datetime)

    def path_for(self, kind: str, channel: str, resource_type: str, languages: tuple[str, ...],
                 resource_id: str | None = None) -> str:
        folders = ([f"resources/{resource_id}"] if resource_id else []) + [resource_type, "default"]
        for language in languages:
            for folder in folders:
                name = f"{folder}/{language}/{kind}.{channel}.j2"
                if name in self._names:
                    return name
        raise TemplateMissing(f"no template for {kind}.{channel} ({resource_type}) in {', '.join(languages)}")

    def render(self, kind: str, channel: str, resource_type: str, languages: tuple[str, ...],
               context: Mapping[str, Any], *, timezone: str, locale: str, resource_id: str | None = None
               ) -> Rendered:
        if self.fallback is not None and self.falls_back(kind, channel):
            out = self.fallback.render(kind, channel, resource_type, languages, context, timezone=timezone,
                                       locale=locale, resource_id=resource_id)
            return replace(out, template=f"{self.fallback.version}:{out.template}")
        values = dict(context, _tz=timezone, _locale=locale)
        if channel == "whatsapp":
            return self._whatsapp(kind, languages, values, resource_type, resource_id)
        name = self.path_for(kind, channel, resource_type, languages, resource_id)
        try:
            template = self.env.get_template(name)
        except TemplateNotFound as exc:  # pragma: no cover - raced with a file removal
            raise TemplateMissing(str(exc)) from exc
        ctx = template.new_context(values)
        parts: dict[str, str | None] = {}
        for part in PARTS:
            block = template.blocks.get(part)
            parts[part] = "".join(block(ctx)).strip() if block else None
        if not parts["text"]:
            raise TemplateMissing(f"{name} has no 'text' block")
        return Rendered(subject=parts["subject"], text=parts["text"], html=parts["html"], template=name)

    def falls_back(self, kind: str, channel: str) -> bool:
        """Whether `kind` on `channel` renders from the fallback: this bundle has no file for it at all."""
        return (self.fallback is not None and channel != "whatsapp"
                and f"{kind}.{channel}" not in self._kind_channels)

    def whatsapp_entry(self, kind: str, resource_type: str, resource_id: str | None = None) -> Mapping[str, Any]:
        """The approved template a kind is sent with (R41, R44), looked up as the files are: the
        resource's own (`whatsapp_for: resources/<id>:`), its type's (`whatsapp_for: equipment:`),
        then `whatsapp:`."""
        own = self.manifest.get("whatsapp_for") or {}
        folders = ([f"resources/{resource_id}"] if resource_id else []) + [resource_type]
        for entries in [own.get(folder) or {} for folder in folders] + [self.manifest.get("whatsapp") or {}]:
            if entries.get(kind):
                return entries[kind]
        raise TemplateMissing(f"no WhatsApp template declared for {kind} ({resource_type}) in bundle.yaml")

    def _whatsapp(self, kind: str, languages: tuple[str, ...], values: dict[str, Any], resource_type: str,
                  resource_id: str | None) -> Rendered:
        entry = self.whatsapp_entry(kind, resource_type, resource_id)
        codes = entry.get("languages") or {}
        language = next((lang for lang in languages if lang in codes), None)
        if language is None:
            raise TemplateMissing(f"WhatsApp template {entry['template']} has none of {', '.join(languages)}")
        params = []
        for expression in entry.get("params", []):
            # a parameter is one Jinja expression; a template string lets filters take context
            compiled = self._params.get(expression)
            if compiled is None:
                compiled = self._params[expression] = self.env.from_string("{{ " + expression + " }}")
            params.append(compiled.render(values).strip())
        return Rendered(subject=None, text=f"{entry['template']}: " + " | ".join(params), html=None,
                        template=f"whatsapp:{entry['template']}", provider_template=entry["template"],
                        provider_language=codes[language], params=tuple(params),
                        buttons=tuple(str(b) for b in entry.get("buttons") or ()))
