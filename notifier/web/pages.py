"""The customer's appointment page (R11, R14, R22, R23, N4): what it shows, in which words.

One page per booking, behind the link every customer message carries. It shows the visit as it
is now (service, resource, date and time in the tenant's zone and the customer's language,
duration, address with a map link, the company's phone), its status in words, and only the
actions that apply at this moment (`notifier.domain.appointment`). A GET only shows; actions
are POSTs (N4).

Words live in gettext catalogs (`locale/<lang>/LC_MESSAGES/page.po`, English in the template),
compiled in memory by Babel when first used; dates, times, durations and lists are formatted
by Babel for the customer's language. The page is one HTML document with its CSS inline (allowed
by its hash in the Content-Security-Policy): it loads nothing from anywhere else but the tenant's
logo, and runs no script.
"""

from __future__ import annotations

import base64
import gettext
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

from babel import negotiate_locale
from babel.dates import format_date, format_datetime, format_interval, get_time_format
from babel.lists import format_list
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations
from babel.units import format_unit
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader

from notifier.domain.appointment import Appointment
from notifier.domain.model import Booking, Customer, Resource, Tenant

HERE = Path(__file__).resolve().parent
LANGUAGES = ("de", "it", "ru", "en")
DEFAULT_ACCENT = "#1d5fb4"
PAGE_BACKGROUND = "#f3f5f7"  # the page's grey (base.html --bg); cards are white, the lighter of the two
# tenants' `company` keys the page reads, beside name, address and phone
BRAND_KEYS = ("logo_url", "accent_color", "booking_url", "map_url")


@lru_cache(maxsize=len(LANGUAGES))
def translations(language: str) -> gettext.NullTranslations:
    path = HERE / "locale" / language / "LC_MESSAGES" / "page.po"
    if not path.is_file():
        return gettext.NullTranslations()  # English: the template's own words
    with path.open("rb") as handle:
        catalog = read_po(handle, locale=language)
    compiled = BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled)


@lru_cache(maxsize=len(LANGUAGES))
def environment(language: str) -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True, extensions=["jinja2.ext.i18n"])
    env.install_gettext_translations(translations(language), newstyle=True)  # type: ignore[attr-defined]
    return env


def page_language(customer: Customer | None, tenant: Tenant | None, accept_language: str = "") -> str:
    """The customer's language; else the tenant's; else the browser's best of ours; else English."""
    for candidate in (customer.language if customer else None, tenant.language if tenant else None):
        if candidate in LANGUAGES:
            return candidate
    wanted = [part.split(";")[0].strip().replace("-", "_") for part in accept_language.split(",") if part.strip()]
    return negotiate_locale(wanted, list(LANGUAGES)) or "en"


# --- branding -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Brand:
    name: str
    logo_url: str  # https: or data:image/..., else ""
    accent: str  # the tenant's colour, as given (a band at the top)
    ink: str  # the accent darkened until it reads as text on the page, and white text on it (WCAG AA)

    @property
    def image_sources(self) -> str:
        """What the page's Content-Security-Policy lets images come from."""
        if self.logo_url.startswith("https://"):
            parts = urlsplit(self.logo_url)
            return f"'self' data: https://{parts.netloc}"
        return "'self' data:"


def brand_of(tenant: Tenant | None) -> Brand:
    company = dict(tenant.company) if tenant else {}
    name = str(company.get("name") or (tenant.name if tenant else ""))
    logo = str(company.get("logo_url") or "")
    if not (logo.startswith("https://") or logo.startswith("data:image/")) or '"' in logo:
        logo = ""
    accent, ink = accessible_accent(str(company.get("accent_color") or DEFAULT_ACCENT))
    return Brand(name=name, logo_url=logo, accent=accent, ink=ink)


@lru_cache(maxsize=256)
def accessible_accent(value: str) -> tuple[str, str]:
    """(accent, ink) as #rrggbb: any CSS colour the tenant wrote, the default when it is none;
    ink keeps the accent's hue, darker until it contrasts 4.5:1 with the page's background, and so
    with white: as text on both, and white text on it (WCAG 1.4.3)."""
    from coloraide import Color

    try:
        accent = Color(value).convert("srgb").fit("srgb")
    except ValueError:
        accent = Color(DEFAULT_ACCENT)
    accent.set("alpha", 1)
    ink = accent.convert("oklch")
    while ink.convert("srgb").fit("srgb").contrast(PAGE_BACKGROUND, method="wcag21") < 4.6 and ink["lightness"] > 0:
        ink["lightness"] = max(ink["lightness"] - 0.02, 0)
    return accent.to_string(hex=True), ink.convert("srgb").fit("srgb").to_string(hex=True)


# --- the visit in words -----------------------------------------------------------------------------

def _nbsp(text: str) -> str:
    return text.replace("\u202f", "\u00a0").replace("\u2009", "\u00a0")


def when(moment: datetime, zone: ZoneInfo, language: str) -> str:
    """A date and time as a sentence reads it: "Friday, 4 December 2026, 10:00"."""
    local = moment.astimezone(zone)
    return _nbsp(f"{format_date(local.date(), 'full', locale=language)}, "
                 f"{format_datetime(local, get_time_format('short', locale=language).pattern, locale=language)}")


def time_span(starts: datetime, ends: datetime, zone: ZoneInfo, language: str) -> str:
    twelve_hours = "h" in get_time_format("short", locale=language).pattern
    return _nbsp(format_interval(starts.astimezone(zone).time(), ends.astimezone(zone).time(),
                                 "hm" if twelve_hours else "Hm", locale=language))


def duration(minutes: int, language: str) -> str:
    hours, rest = divmod(max(minutes, 0), 60)
    parts = [format_unit(hours, "duration-hour", length="long", locale=language)] if hours else []
    if rest or not hours:
        parts.append(format_unit(rest, "duration-minute", length="long", locale=language))
    return _nbsp(format_list(parts, style="unit", locale=language))


def phone_href(phone: str, region: str) -> str:
    import phonenumbers

    try:
        number = phonenumbers.parse(phone, region)
        return "tel:" + phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    except phonenumbers.NumberParseException:
        return "tel:" + "".join(c for c in phone if c.isdigit() or c == "+")


def map_href(company: dict[str, Any]) -> str:
    given = str(company.get("map_url") or "")
    if given.startswith(("https://", "http://")):
        return given
    address = str(company.get("address") or "")
    return f"https://www.google.com/maps/search/?api=1&query={quote(address)}" if address else ""


def booking_system_href(company: dict[str, Any], booking: Booking) -> str:
    """The tenant's own page for this booking (rescheduling belongs to the booking system):
    `company.booking_url`, where `{booking_id}` stands for the booking's id."""
    given = str(company.get("booking_url") or "")
    if not given.startswith(("https://", "http://")):
        return ""
    return given.replace("{booking_id}", quote(booking.id, safe=""))


# --- the page --------------------------------------------------------------------------------------

def render_appointment(*, language: str, token: str, booking: Booking, resource: Resource, tenant: Tenant,
                       view: Appointment, zone: ZoneInfo, moved_from: datetime | None = None, notice: str = ""
                       ) -> str:
    """The page; `notice` is the outcome of the customer's last action (confirmed, cancelled,
    already, changed, outside_window, not_allowed, not_now), shown above the visit."""
    company = dict(tenant.company)
    minutes = int((booking.ends_at - booking.starts_at).total_seconds() // 60)
    local = booking.starts_at.astimezone(zone)
    return environment(language).get_template("appointment.html").render(
        lang=language, brand=brand_of(tenant), token=token, status=view.status.value, view=view,
        notice=notice, booking=booking, resource=resource,
        service=booking.service or "", specialist=resource.type != "equipment",
        date=_nbsp(format_date(local.date(), "full", locale=language)),
        time=time_span(booking.starts_at, booking.ends_at, zone, language),
        duration=duration(minutes, language), visit=booking.starts_at.isoformat(),
        moved_from=when(moved_from, zone, language) if moved_from else "",
        cancel_until=when(view.cancel_until, zone, language) if view.cancel_until else "",
        address=str(company.get("address") or ""), map_url=map_href(company),
        phone=str(company.get("phone") or ""), phone_href=phone_href(str(company.get("phone") or ""),
                                                                      tenant.home_region),
        booking_url=booking_system_href(company, booking) if view.calendar else "",
        reason=booking.cancel_reason or "", cancelled_by=booking.cancelled_by or "")


def render_refusal(*, language: str, reason: str, tenant: Tenant | None = None) -> str:
    """The page for a link that leads nowhere: `invalid` (unknown, mistyped) or `expired` (the
    visit is long over; the company's name and phone, nothing of the booking)."""
    company = dict(tenant.company) if tenant else {}
    return environment(language).get_template("refusal.html").render(
        lang=language, brand=brand_of(tenant), reason=reason,
        phone=str(company.get("phone") or ""),
        phone_href=phone_href(str(company.get("phone") or ""), tenant.home_region) if tenant else "")


_INLINE = re.compile(r"<(style|script)(?:\s[^>]*)?>(.*?)</\1>", re.S | re.I)


def security_headers(html: str, *, images: str = "'self' data:") -> dict[str, str]:
    """What a page's answer tells the browser: nothing but its own inline style and script (each
    by its hash) may run, images only from here, `data:` and `images` (the tenant's logo), the
    form posts only here, no site may frame it (a click-jacked "cancel"), the link with its token
    is not sent on as a Referer, and nothing is cached (a shared computer's back button)."""
    hashes: dict[str, list[str]] = {"style": [], "script": []}
    for kind, body in _INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes[kind.lower()].append(f"'sha256-{digest}'")
    policy = ["default-src 'none'", f"img-src {images}", "form-action 'self'", "frame-ancestors 'none'",
              "base-uri 'none'"]
    policy += [f"{kind}-src {' '.join(found)}" for kind, found in hashes.items() if found]
    return {"Content-Security-Policy": "; ".join(policy), "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store", "X-Frame-Options": "DENY", "X-Robots-Tag": "noindex, nofollow"}


def page_response(html: str, *, brand: Brand, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(html, status_code=status_code, headers=security_headers(html, images=brand.image_sources))
