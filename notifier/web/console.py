"""The ops console: a small server-rendered web UI in `notifier web`, under `/console`.

For operators and tenants' staff: search messages (tenant, booking, the customer's phone or
email, channel, status, due dates), a booking's messages and timeline, held events and dead
letters with replay, a template's preview (a booking's data or the samples; HTML and text side by
side; an SMS's segments) with a test send to a typed address, a failed message sent again, a
planned one withdrawn. The actions are notifier.operations', as on the command line; each is on
the booking's timeline with the key that did it.

Who may use it (docs/security.md): whoever holds an API key. `/console/login` takes the key
(an operator's: every tenant, dead letters; a tenant's: that tenant only, as on `/api`) and
keeps it in a cookie the page's scripts cannot read (HttpOnly; there are no scripts anyway),
sent only to `/console` on this site (Path, SameSite=Strict) and only over HTTPS (Secure;
browsers treat http://localhost and 127.0.0.1 as secure too), for `console_session_s`. Every
request checks the key again, so a revoked key is refused at once. Without a valid key a page
redirects to the login form and a POST is refused (403). Each POST carries a CSRF token, an HMAC
of the session's key that only a page of the console knows (a cross-site form cannot); the
login form carries one bound to a cookie of its own. Pages send a Content-Security-Policy that
allows nothing but their own inline style (by hash) and images from here; the email preview is
a page of its own, framed only by the console, with the CSP `sandbox` directive (no script,
form or navigation in it).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader

from notifier import operations as ops
from notifier.access import Caller, authenticate
from notifier.domain.model import Channel, Kind, MessageState
from notifier.rendering.bundles import LANGUAGES, RESOURCE_TYPES
from notifier.views import booking_view, dead_letters_page, local_time
from notifier.web.pages import security_headers

HERE = Path(__file__).resolve().parent
SESSION = "notifier_console"  # the cookie holding the key
LOGIN = "notifier_console_login"  # the login form's CSRF cookie
PATH = "/console"
PAGE = 50  # messages a search shows at once
# what an action's redirect may announce (?done=...): fixed words, never text from the request
DONE = {"resent": "Sent again as message {0}: it goes with the next sweep.", "withdrawn": "Message {0} withdrawn.",
        "replayed": "Dead letter {0} replayed.", "test": "Test sent ({0})."}


@dataclass(frozen=True)
class Session:
    caller: Caller
    key: str

    @property
    def actor(self) -> ops.Actor:
        return ops.Actor(self.caller.who, self.caller.tenant_id)

    @property
    def csrf(self) -> str:
        return csrf_token(self.key)


def csrf_token(key: str) -> str:
    """The session's CSRF token: only a page the key's holder loaded has it."""
    return hmac.new(key.encode("utf-8", "surrogateescape"), b"notifier-console-csrf", hashlib.sha256).hexdigest()


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates" / "console"), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["local"] = _local
    return env


def _local(moment: datetime | str | None, zone: str = "UTC") -> str:
    """A stored moment (a datetime or its ISO text) as a person in `zone` reads it."""
    if not moment:
        return ""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return local_time(moment, ZoneInfo(zone))


def console_headers(html: str, *, frames: bool = False) -> dict[str, str]:
    """The link pages' headers (their own inline style by hash, nothing from elsewhere, no framing,
    no caching), the preview's frame allowed where a page has one."""
    headers = security_headers(html)
    if frames:
        headers["Content-Security-Policy"] += "; frame-src 'self'"
    return headers


def render(name: str, request: Request, session: Session | None, *, status_code: int = 200, frames: bool = False,
           **values: Any) -> HTMLResponse:
    done = request.query_params.get("done", "")
    kind, _, arg = done.partition(":")
    notice = DONE[kind].format(arg if arg.replace("-", "").isalnum() and len(arg) < 40 else "") if kind in DONE \
        else ""
    html = environment().get_template(name).render(session=session, notice=notice, path=request.url.path,
                                                   channels=[c.value for c in Channel],
                                                   states=[s.value for s in MessageState], **values)
    return HTMLResponse(html, status_code=status_code, headers=console_headers(html, frames=frames))


class LoginNeeded(Exception):
    """A page asked for without a valid session: the login form, then back here."""

    def __init__(self, target: str) -> None:
        self.target = target


def console_router(ctx: Any) -> APIRouter:
    """The console's routes: every one but the login form needs a session (`session` below)."""
    settings = ctx.settings
    router = APIRouter(prefix=PATH, include_in_schema=False)

    def current(request: Request) -> Session | None:
        key = request.cookies.get(SESSION, "")
        caller = authenticate(ctx.store, key) if key else None
        return Session(caller, key) if caller is not None else None

    def session(request: Request) -> Session:
        found = current(request)
        if found is None:
            if request.method == "GET":
                raise LoginNeeded(str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""))
            raise HTTPException(status_code=403, detail="sign in to the console first")
        return found

    async def posted(request: Request, who: Session = Depends(session)) -> dict[str, str]:
        """A POST's form, after its CSRF token is checked."""
        form = {k: str(v) for k, v in (await request.form()).items()}
        if not hmac.compare_digest(form.get("csrf", "").encode(), who.csrf.encode()):
            raise HTTPException(status_code=403, detail="the form's token does not match this session: reload the "
                                                        "page and try again")
        return form

    def cookie(response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path=PATH, secure=True, httponly=True, samesite="strict")

    # --- signing in and out ------------------------------------------------------------------
    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "") -> HTMLResponse:
        token = secrets.token_urlsafe(24)
        response = render("login.html", request, None, next=_safe_next(next), login_csrf=token, error="")
        cookie(response, LOGIN, token, 1800)
        return response

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        expected = request.cookies.get(LOGIN, "")
        if not expected or not hmac.compare_digest(form.get("csrf", "").encode(), expected.encode()):
            raise HTTPException(status_code=403, detail="the login form's token does not match: open the form again")
        key = form.get("key", "").strip()
        caller = authenticate(ctx.store, key) if key else None
        if caller is None:
            token = secrets.token_urlsafe(24)
            response = render("login.html", request, None, next=_safe_next(form.get("next", "")), login_csrf=token,
                              error="That key is unknown or revoked.", status_code=401)
            cookie(response, LOGIN, token, 1800)
            return response
        response = RedirectResponse(_safe_next(form.get("next", "")) or PATH, status_code=303)
        cookie(response, SESSION, key, settings.console_session_s)
        response.delete_cookie(LOGIN, path=PATH)
        return response

    @router.post("/logout")
    def logout(_: dict[str, str] = Depends(posted)) -> Response:
        response = RedirectResponse(f"{PATH}/login", status_code=303)
        response.delete_cookie(SESSION, path=PATH, secure=True, httponly=True, samesite="strict")
        return response

    # --- messages ----------------------------------------------------------------------------
    @router.get("", response_class=HTMLResponse)
    def messages(request: Request, who: Session = Depends(session)) -> HTMLResponse:
        q = request.query_params
        filters = {name: q.get(name, "").strip() for name in ("tenant", "booking", "phone", "email", "channel",
                                                               "state", "from", "to")}
        zones = _zones(ctx)
        error, found = "", []
        try:
            tenant = filters["tenant"] or None
            zone = ZoneInfo(zones.get(tenant or "", "UTC"))
            query = ops.MessageQuery(
                tenant_id=tenant, booking_id=filters["booking"] or None, phone=filters["phone"] or None,
                email=filters["email"] or None, channel=filters["channel"] or None, state=filters["state"] or None,
                due_from=_day(filters["from"], zone), due_to=_day(filters["to"], zone, end=True),
                before_id=int(q["before"]) if q.get("before", "").isdigit() else None, limit=PAGE)
            found = ops.search_messages(ctx.store, query, actor=who.actor)
        except (ops.Refused, ops.NotFound, ValueError) as exc:
            error = str(exc.args[0] if exc.args else exc)
        more = f"?{urlencode({**{k: v for k, v in filters.items() if v}, 'before': found[-1]['id']})}" \
            if len(found) == PAGE else ""
        return render("messages.html", request, who, filters=filters, found=found, zones=zones, error=error,
                      more=more, tenants=sorted(zones) if who.caller.operator else [who.caller.tenant_id])

    @router.get("/tenants/{tenant_id}/bookings/{booking_id}", response_class=HTMLResponse)
    def booking(request: Request, tenant_id: str, booking_id: str, who: Session = Depends(session)) -> HTMLResponse:
        view = booking_view(ctx.store, tenant_id, booking_id, now=ctx.clock.now(), regions=ctx.unavailable) \
            if who.actor.may(tenant_id) else None
        if view is None:
            return render("missing.html", request, who, what=f"No booking {booking_id} of {tenant_id}.",
                          status_code=404)
        from notifier.services import timeline_of

        return render("booking.html", request, who, view=view, zone=view["timezone"] or "UTC",
                      timeline=timeline_of(ctx.store, tenant_id, booking_id),
                      customer_channels=[c.value for c in Channel if c.to_customer])

    @router.post("/messages/{message_id}/resend")
    def resend(message_id: int, form: dict[str, str] = Depends(posted), who: Session = Depends(session)) -> Response:
        place = _place(ctx, message_id, who)
        try:
            new_id = ops.resend_message(ctx.store, message_id, actor=who.actor, now=ctx.clock.now(),
                                        channel=form.get("channel") or None)
        except ops.Refused as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
        return RedirectResponse(f"{_booking_url(*place)}?done=resent:{new_id}", status_code=303)

    @router.post("/messages/{message_id}/withdraw")
    def withdraw(message_id: int, form: dict[str, str] = Depends(posted), who: Session = Depends(session)) -> Response:
        place = _place(ctx, message_id, who)
        try:
            ops.withdraw_message(ctx.store, message_id, actor=who.actor, now=ctx.clock.now(),
                                 reason=form.get("reason", ""))
        except ops.Refused as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
        return RedirectResponse(f"{_booking_url(*place)}?done=withdrawn:{message_id}", status_code=303)

    # --- held events and dead letters ---------------------------------------------------------------
    @router.get("/queue", response_class=HTMLResponse)
    def queue(request: Request, who: Session = Depends(session)) -> HTMLResponse:
        held = ops.held_events(ctx.store, actor=who.actor)
        dead = list(reversed(dead_letters_page(ctx.store, after_id=_last_dead_page(ctx), limit=100))) \
            if who.caller.operator else None
        return render("queue.html", request, who, held=held, dead=dead)

    @router.post("/dead-letters/{dead_letter_id}/replay")
    def replay(dead_letter_id: int, _: dict[str, str] = Depends(posted), who: Session = Depends(session)) -> Response:
        try:
            report = ops.replay_dead_letter(ctx.store, dead_letter_id, actor=who.actor, now=ctx.clock.now())
        except ops.NotAllowed as exc:
            raise HTTPException(status_code=403, detail=str(exc)) from None
        except (LookupError, ValueError) as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
        if report.dead:
            raise HTTPException(status_code=409, detail=f"still refused: {'; '.join(report.dead_reasons)[:300]}")
        return RedirectResponse(f"{PATH}/queue?done=replayed:{dead_letter_id}", status_code=303)

    # --- templates ------------------------------------------------------------------------------------
    def preview_request(values: Any, who: Session) -> ops.PreviewRequest | None:
        tenant = values.get("tenant") or who.caller.tenant_id
        if not tenant or not values.get("kind") or not values.get("channel"):
            return None
        return ops.PreviewRequest(tenant_id=tenant, kind=values["kind"], channel=values["channel"],
                                  language=values.get("language") or None,
                                  resource_type=values.get("resource_type") or None,
                                  booking_id=values.get("booking") or None)

    def templates_page(request: Request, who: Session, values: Any, *, sent: str = "", error: str = "",
                       status_code: int = 200) -> HTMLResponse:
        wanted = preview_request(values, who)
        preview = None
        if wanted is not None and not error:
            try:
                preview = ops.preview_template(ctx, wanted, actor=who.actor)
            except (ops.Refused, ops.NotFound) as exc:
                error, status_code = str(exc.args[0] if exc.args else exc), 422
        form = {k: values.get(k, "") for k in ("tenant", "kind", "channel", "language", "resource_type", "booking",
                                                "to")}
        return render("templates.html", request, who, form=form, preview=preview, error=error, sent=sent,
                      html_url=f"{PATH}/templates/html?{urlencode({k: v for k, v in form.items() if v and k != 'to'})}",
                      kinds=[k.value for k in Kind], languages=LANGUAGES, resource_types=RESOURCE_TYPES,
                      tenants=sorted(_zones(ctx)) if who.caller.operator else [who.caller.tenant_id],
                      status_code=status_code, frames=preview is not None and bool(preview.html))

    @router.get("/templates", response_class=HTMLResponse)
    def templates(request: Request, who: Session = Depends(session)) -> HTMLResponse:
        return templates_page(request, who, request.query_params)

    @router.get("/templates/html", response_class=HTMLResponse)
    def template_html(request: Request, who: Session = Depends(session)) -> HTMLResponse:
        """The email's HTML alone, for the preview's frame: no script, form or navigation runs in it."""
        wanted = preview_request(request.query_params, who)
        try:
            preview = ops.preview_template(ctx, wanted, actor=who.actor) if wanted else None
        except (ops.Refused, ops.NotFound) as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        body = preview.html if preview and preview.html else "<p>(this message has no HTML part)</p>"
        html = f'<!doctype html><meta charset="utf-8"><meta name="robots" content="noindex">{body}'
        return HTMLResponse(html, headers={
            "Content-Security-Policy": "default-src 'none'; img-src https: data:; style-src 'unsafe-inline'; "
                                       "frame-ancestors 'self'; sandbox",
            "Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Frame-Options": "SAMEORIGIN"})

    @router.post("/templates/test", response_class=HTMLResponse)
    def test_send(request: Request, form: dict[str, str] = Depends(posted),
                  who: Session = Depends(session)) -> HTMLResponse:
        wanted = preview_request(form, who)
        if wanted is None:
            return templates_page(request, who, form, error="choose a kind and a channel first", status_code=422)
        try:
            provider_id = ops.send_test(ctx, wanted, form.get("to", ""), actor=who.actor, now=ctx.clock.now())
        except (ops.Refused, ops.NotFound) as exc:
            return templates_page(request, who, form, error=str(exc.args[0] if exc.args else exc), status_code=422)
        return templates_page(request, who, form, sent=f"Test sent to {form.get('to', '').strip()} ({provider_id}).")

    return router


def _safe_next(target: str) -> str:
    """Where to go after signing in: a console page of this site only (no open redirect)."""
    return target if target.startswith(f"{PATH}") and "//" not in target and "\\" not in target else ""


def _booking_url(tenant_id: str, booking_id: str) -> str:
    from urllib.parse import quote

    return f"{PATH}/tenants/{quote(tenant_id, safe='')}/bookings/{quote(booking_id, safe='')}"


def _place(ctx: Any, message_id: int, who: Session) -> tuple[str, str]:
    try:
        return ops.message_place(ctx.store, message_id, actor=who.actor)
    except ops.NotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None


def _zones(ctx: Any) -> dict[str, str]:
    """Tenant id -> its time zone (the console shows times as the tenant reads them)."""
    from sqlalchemy import select

    from notifier.store import schema as t

    with ctx.store.engine.connect() as conn:
        return dict(conn.execute(select(t.tenants.c.id, t.tenants.c.timezone)).all())


def _last_dead_page(ctx: Any) -> int:
    """The id after which the newest hundred dead letters come."""
    from sqlalchemy import func, select

    from notifier.store import schema as t

    with ctx.store.engine.connect() as conn:
        newest = conn.execute(select(func.max(t.dead_letters.c.id))).scalar() or 0
    return max(0, newest - 100)


def _day(value: str, zone: ZoneInfo, *, end: bool = False) -> datetime | None:
    """A day (YYYY-MM-DD, in the tenant's zone when one is chosen, else UTC) as the UTC moment it
    begins; `end`: the moment the day after begins (the day is included)."""
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise ops.Refused(f"{value!r} is not a day: YYYY-MM-DD") from None
    return datetime.combine(day + timedelta(days=1 if end else 0), time(), tzinfo=zone).astimezone(UTC)


def install_console(app: Any, ctx: Any) -> None:
    """Mount the console on the app: its routes, the login redirect, and refusals as pages."""
    from fastapi.exception_handlers import http_exception_handler
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app.include_router(console_router(ctx))

    @app.exception_handler(LoginNeeded)
    async def _login(request: Request, exc: LoginNeeded) -> Response:
        return RedirectResponse(f"{PATH}/login?{urlencode({'next': exc.target})}", status_code=303,
                                headers={"Cache-Control": "no-store"})

    @app.exception_handler(StarletteHTTPException)
    async def _refused(request: Request, exc: StarletteHTTPException) -> Response:
        if not request.url.path.startswith(PATH):
            return await http_exception_handler(request, exc)
        return render("refused.html", request, None, status_code=exc.status_code, detail=str(exc.detail),
                      back=request.headers.get("referer", "") if _same_console(request) else "")


def _same_console(request: Request) -> bool:
    referer = request.headers.get("referer", "")
    return referer.startswith(str(request.base_url).rstrip("/") + PATH)

