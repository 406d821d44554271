"""The customer's link page (R11, R14, N4): localized, a GET shows, only a POST acts."""

from __future__ import annotations

import base64
import hashlib
import re
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_time
from fastapi.responses import HTMLResponse
from jinja2 import Environment, select_autoescape

TEXT = {
    "de": {"title": "Ihr Termin", "confirm": "Termin bestätigen", "cancel": "Termin absagen",
           "confirmed": "Danke! Ihr Termin ist bestätigt.", "cancelled": "Ihr Termin ist abgesagt. Der Platz ist "
           "wieder frei.", "already": "Das ist bereits erledigt.", "outside_window": "Eine Absage über diesen Link "
           "ist nicht mehr möglich. Bitte rufen Sie uns an.", "not_allowed": "Eine Absage über diesen Link ist "
           "nicht vorgesehen. Bitte rufen Sie uns an.", "moved": "Der Termin wurde inzwischen verlegt; dieser Link "
           "gilt nicht mehr.", "gone": "Diesen Termin gibt es nicht mehr.", "past": "Der Termin hat bereits "
           "begonnen.", "invalid": "Dieser Link ist ungültig.", "expired": "Dieser Link ist abgelaufen.",
           "with": "bei"},
    "it": {"title": "Il suo appuntamento", "confirm": "Conferma l'appuntamento", "cancel": "Disdici l'appuntamento",
           "confirmed": "Grazie! L'appuntamento è confermato.", "cancelled": "L'appuntamento è disdetto. La fascia "
           "oraria è di nuovo libera.", "already": "È già stato fatto.", "outside_window": "Non è più possibile "
           "disdire con questo link. Ci chiami, per favore.", "not_allowed": "Con questo link non si può disdire. "
           "Ci chiami, per favore.", "moved": "L'appuntamento è stato spostato; questo link non vale più.",
           "gone": "Questo appuntamento non esiste più.", "past": "L'appuntamento è già iniziato.",
           "invalid": "Questo link non è valido.", "expired": "Questo link è scaduto.", "with": "con"},
    "ru": {"title": "Ваша запись", "confirm": "Подтвердить запись", "cancel": "Отменить запись",
           "confirmed": "Спасибо! Запись подтверждена.", "cancelled": "Запись отменена, время снова свободно.",
           "already": "Это уже сделано.", "outside_window": "Отменить запись по этой ссылке уже нельзя. "
           "Пожалуйста, позвоните нам.", "not_allowed": "Отмена по ссылке не предусмотрена. Пожалуйста, позвоните "
           "нам.", "moved": "Запись перенесена, эта ссылка больше не действует.", "gone": "Этой записи больше нет.",
           "past": "Запись уже началась.", "invalid": "Ссылка недействительна.", "expired": "Срок действия ссылки "
           "истёк.", "with": "к"},
    "en": {"title": "Your appointment", "confirm": "Confirm the appointment", "cancel": "Cancel the appointment",
           "confirmed": "Thank you! Your appointment is confirmed.", "cancelled": "Your appointment is cancelled. "
           "The slot is free again.", "already": "This is already done.", "outside_window": "It is too late to "
           "cancel with this link. Please call us.", "not_allowed": "This link cannot cancel. Please call us.",
           "moved": "The appointment has moved since; this link no longer applies.", "gone": "This appointment no "
           "longer exists.", "past": "The appointment has already begun.", "invalid": "This link is not valid.",
           "expired": "This link has expired.", "with": "with"},
}

PAGE = """<!doctype html>
<html lang="{{ lang }}"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{{ t.title }}</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}
button{font-size:1.1rem;padding:.6rem 1.2rem}</style></head>
<body><h1>{{ t.title }}</h1>
{% if when %}<p id="visit"><strong>{{ when }}</strong>{% if resource %} {{ t.with }} {{ resource }}{% endif %}
{% if company %}<br>{{ company }}{% endif %}</p>{% endif %}
{% if message %}<p id="message" role="status">{{ message }}</p>{% endif %}
{% if action %}<form method="post"><button id="{{ action }}" type="submit">{{ t[action] }}</button></form>{% endif %}
</body></html>"""

_env = Environment(autoescape=select_autoescape(default=True))
_page = _env.from_string(PAGE)


def render_page(*, language: str, action: str | None, message_key: str | None, starts_at=None, zone: str = "UTC",
                resource: str = "", company: str = "") -> str:
    lang = language if language in TEXT else "en"
    when = ""
    if starts_at:
        local = starts_at.astimezone(ZoneInfo(zone))
        when = f"{format_date(local.date(), 'full', locale=lang)}, {format_time(local, 'short', locale=lang)}"
        when = when.replace("\u202f", " ")
    t = TEXT[lang]
    return _page.render(lang=lang, t=t, when=when, resource=resource, company=company, action=action,
                        message=t.get(message_key, "") if message_key else "")


_INLINE = re.compile(r"<(style|script)(?:\s[^>]*)?>(.*?)</\1>", re.S | re.I)


def security_headers(html: str) -> dict[str, str]:
    """What a link page's answer tells the browser: nothing but its own inline style and script
    (each by its hash) may run, the form posts only here, no site may frame it (a click-jacked
    "cancel"), the link with its token is not sent on as a Referer, and nothing is cached (a
    shared computer's back button)."""
    hashes = {"style": [], "script": []}
    for kind, body in _INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes[kind.lower()].append(f"'sha256-{digest}'")
    policy = ["default-src 'none'", "img-src 'self' data:", "form-action 'self'", "frame-ancestors 'none'",
              "base-uri 'none'"]
    policy += [f"{kind}-src {' '.join(found)}" for kind, found in hashes.items() if found]
    return {"Content-Security-Policy": "; ".join(policy), "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store", "X-Frame-Options": "DENY"}


def page_response(html: str, *, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(html, status_code=status_code, headers=security_headers(html))
