"""The web app: provider status callbacks (N5) and the JSON API, on FastAPI.

FastAPI because it validates requests, documents the API as OpenAPI without extra work
(docs/openapi.json), and runs on uvicorn; the handlers are thin and call notifier.services.

Callbacks are accepted only with a valid signature: Twilio's X-Twilio-Signature (HMAC-SHA1
of the URL and the sorted form fields, with the auth token), Meta's X-Hub-Signature-256
(HMAC-SHA256 of the raw body, with the app secret). Anything else is a 403.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, PlainTextResponse

from notifier.domain.planning import zone_of
from notifier.links import LinkError
from notifier.services import apply_delivery_status, counters, look_up_link, timeline_of, use_link
from notifier.web.pages import render_page


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    data = url + "".join(f"{key}{params[key]}" for key in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def meta_signature(app_secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def create_app(ctx: Any) -> FastAPI:
    settings = ctx.settings
    app = FastAPI(title="notifier", version="1", description="Status callbacks and the booking API of notifier.")

    @app.get("/health")
    def health() -> dict[str, str]:
        with ctx.store.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return {"status": "ok"}

    @app.post("/callbacks/twilio", status_code=204)
    async def twilio_callback(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        url = settings.public_url.rstrip("/") + request.url.path + (f"?{request.url.query}" if request.url.query
                                                                    else "")
        given = request.headers.get("X-Twilio-Signature", "")
        expected = twilio_signature(settings.twilio_auth_token, url, form) if settings.twilio_auth_token else ""
        if not expected or not hmac.compare_digest(given, expected):
            raise HTTPException(status_code=403, detail="invalid signature")
        sid, status = form.get("MessageSid") or form.get("SmsSid"), form.get("MessageStatus") or form.get("SmsStatus")
        if sid and status:
            error = f"twilio {form['ErrorCode']}" if form.get("ErrorCode") else None
            apply_delivery_status(ctx.store, sid, status, now=ctx.clock.now(), error=error)
        return Response(status_code=204)

    @app.get("/callbacks/meta", response_class=PlainTextResponse)
    def meta_verify(request: Request) -> str:
        q = request.query_params
        if q.get("hub.mode") == "subscribe" and settings.meta_verify_token and \
                hmac.compare_digest(q.get("hub.verify_token", ""), settings.meta_verify_token):
            return q.get("hub.challenge", "")
        raise HTTPException(status_code=403, detail="verification failed")

    @app.post("/callbacks/meta", status_code=204)
    async def meta_callback(request: Request) -> Response:
        body = await request.body()
        given = request.headers.get("X-Hub-Signature-256", "")
        if not settings.meta_app_secret or not hmac.compare_digest(given, meta_signature(settings.meta_app_secret,
                                                                                         body)):
            raise HTTPException(status_code=403, detail="invalid signature")
        try:
            payload = json.loads(body)
        except ValueError:
            raise HTTPException(status_code=400, detail="invalid JSON") from None
        for entry in payload.get("entry", []):
            for change in entry.get("changes", []):
                for status in change.get("value", {}).get("statuses", []):
                    errors = status.get("errors") or []
                    error = f"whatsapp {errors[0].get('code')}: {errors[0].get('title')}" if errors else None
                    apply_delivery_status(ctx.store, status.get("id", ""), status.get("status", ""),
                                          now=ctx.clock.now(), error=error)
        return Response(status_code=204)

    def link_page(token: str, *, act: bool) -> HTMLResponse:
        try:
            claims = ctx.links.verify(token)
        except LinkError as exc:
            return HTMLResponse(render_page(language="en", action=None, message_key=exc.reason), status_code=400)
        outcome = use_link(ctx.store, claims, now=ctx.clock.now(), regions=settings.unavailable) if act \
            else look_up_link(ctx.store, claims)
        booking, tenant = outcome.booking, outcome.tenant
        language = outcome.customer.language if outcome.customer else (tenant.language if tenant else "en")
        shows_button = outcome.status == "ok" and not act
        page = render_page(
            language=language, action=claims.action if shows_button else None,
            message_key=None if shows_button else outcome.status,
            starts_at=booking.starts_at if booking else None,
            zone=str(zone_of(tenant, outcome.resource)) if tenant else "UTC",
            resource=outcome.resource.name if outcome.resource else "",
            company=str(tenant.company.get("name", "")) if tenant else "")
        refused = outcome.status in ("outside_window", "not_allowed", "moved", "gone", "past")
        return HTMLResponse(page, status_code=409 if refused else 200)

    @app.get("/l/{token}", response_class=HTMLResponse)
    def link_show(token: str) -> HTMLResponse:
        """The page behind a customer's link: the visit and one button. Fetching it changes nothing."""
        return link_page(token, act=False)

    @app.post("/l/{token}", response_class=HTMLResponse)
    def link_act(token: str) -> HTMLResponse:
        """The button: confirm, or cancel within the tenant's window (R11, R14, R23, N4)."""
        return link_page(token, act=True)

    @app.get("/api/tenants/{tenant_id}/counters")
    def counters_api(tenant_id: str, day: str) -> dict[str, dict[str, int]]:
        """Red (unconfirmed, near), late and orange counts per resource for a local day (R12, R16)."""
        from datetime import date

        try:
            return counters(ctx.store, tenant_id, date.fromisoformat(day), now=ctx.clock.now(),
                            regions=settings.unavailable)
        except LookupError:
            raise HTTPException(status_code=404, detail="no such tenant") from None

    @app.get("/api/tenants/{tenant_id}/bookings/{booking_id}/timeline")
    def timeline(tenant_id: str, booking_id: str) -> list[dict[str, Any]]:
        entries = timeline_of(ctx.store, tenant_id, booking_id)
        if not entries:
            raise HTTPException(status_code=404, detail="no such booking")
        return [{"at": e["at"].isoformat(), "kind": e["kind"], "detail": e["detail"]} for e in entries]

    return app


def openapi_document() -> dict[str, Any]:
    """The API as OpenAPI (docs/openapi.json; `make schema` regenerates it)."""
    from types import SimpleNamespace

    from notifier.settings import Settings

    return create_app(SimpleNamespace(settings=Settings(), store=None, clock=None)).openapi()
