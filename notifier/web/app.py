"""The web app: the customer's appointment page (N4), provider status callbacks (N5), the JSON API for
booking systems and ops (timeline, counters, markers, dead letters, health) and `/metrics`.

Who may call what is in docs/security.md: link pages and callbacks are public and carry their
own signatures; every `/api` route and `/openapi.json` need an API key (notifier/web/auth.py);
`/metrics` and the details of `/health` need the metrics token.

FastAPI because it validates requests, documents the API as OpenAPI without extra work
(docs/openapi.json), and runs on uvicorn; the handlers are thin and call notifier.services
(use cases) or notifier.views (read-only queries).

Callbacks and customers' messages (Twilio's `/inbound/twilio`; Meta's come with its status
webhook) are accepted only with a valid signature: Twilio's X-Twilio-Signature (HMAC-SHA1 of
the URL and the sorted form fields, with the auth token), Meta's X-Hub-Signature-256
(HMAC-SHA256 of the raw body, with the app secret). Anything else is a 403.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import date, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field, ValidationError

from notifier import views
from notifier.dispatch import sender_identity
from notifier.domain.model import BookingStatus, Channel
from notifier.domain.planning import zone_of
from notifier.inbound import Inbound, receive_reply
from notifier.rendering.calendar import calendar_card
from notifier.services import (
    ACTIONS,
    LinkOutcome,
    apply_delivery_status,
    counters,
    look_up_link,
    timeline_of,
    use_link,
)
from notifier.web import health as probes
from notifier.web.auth import api_router, caller_dependency, has_metrics_token
from notifier.web.limits import BodyLimit, HeaderDefaults
from notifier.web.pages import (
    brand_of,
    page_language,
    page_response,
    render_appointment,
    render_refusal,
)

# bounded: a day at the ends of the calendar has no next day, an id past 2**63 no column to compare with
FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(9998, 12, 31)
Day = Annotated[date | None, Query(ge=FIRST_DAY, le=LAST_DAY,
                                   description="local day in the tenant's time zone (default: today there)")]
MAX_ID = 2**63 - 1
ResourceFilter = Annotated[str | None, Query(description="one resource only")]


class Check(BaseModel):
    status: str  # ok | down
    ms: float | None = None
    error: str | None = None


class Health(BaseModel):
    status: str  # ok | unavailable
    checks: dict[str, Check] | None = None  # with the metrics token only


class DeadLetter(BaseModel):
    id: int
    received_at: datetime
    source: str
    reason: str
    replayed_at: datetime | None
    body_chars: int


class DeadLetterPage(BaseModel):
    items: list[DeadLetter]
    next_after: int | None  # pass as `after` for the next page; null: this was the last


class Marker(BaseModel):
    booking_id: str
    resource_id: str
    starts_at: datetime
    unconfirmed: bool
    red_since: datetime | None
    late_since: datetime | None  # the orange "late" marker (R16)
    late_counter_since: datetime | None  # counts in the late counter (R16)


class BookingMarkers(BaseModel):
    unconfirmed: bool  # the customer has not confirmed and the visit is ahead (R12)
    red_since: datetime | None  # R12
    late_since: datetime | None  # the orange "late" marker (R16)
    late_counter_since: datetime | None  # counts in the late counter (R16)
    released_at: datetime | None  # R18: the slot was released


class StatusStep(BaseModel):
    at: datetime
    status: str
    kind: str  # start | confirmation | cancellation | none
    reason: str | None
    description: str | None = None  # R31: as the booking system described the status
    position: int | None = None
    colour: str | None = None  # "#RRGGBB"


class BookingMessage(BaseModel):
    id: int | None  # None: withdrawn before anyone tried to send it (kept on the timeline only)
    key: str
    kind: str
    channel: str | None
    recipient: str  # customer | staff
    state: str  # planned | queued | sending | sent | delivered | read | failed | withdrawn
    due_at: datetime | None
    attempts: int
    sent_at: datetime | None
    error: str | None  # why it failed or was withdrawn
    withdrawn_at: datetime | None
    by: str | None = None  # the operator who made it (a resend) or withdrew it
    resend_of: int | None = None  # an operator's resend: the failed message it repeats


class MessageFound(BaseModel):
    id: int
    booking_id: str
    customer_id: str
    key: str
    kind: str
    channel: str
    recipient: str  # customer | staff
    state: str  # planned | queued | sending | sent | delivered | read | failed | withdrawn
    due_at: datetime
    sent_at: datetime | None
    attempts: int
    error: str | None  # why it failed or was withdrawn
    provider_message_id: str | None
    by: str | None  # the operator who made it (a resend) or withdrew it
    resend_of: int | None


class MessagePage(BaseModel):
    items: list[MessageFound]  # newest first
    next_before: int | None  # pass as `before` for the next page; null: this was the last


class NotPlannedReason(BaseModel):
    reason: str  # docs/events.md lists them
    kinds: list[str]
    channels: list[str]
    channel_reasons: dict[str, str] | None = None  # for no_reachable_channel: each channel's own reason
    since: datetime | None  # when the timeline last recorded it


class BookingState(BaseModel):
    tenant_id: str
    booking_id: str
    customer_id: str
    resource_id: str
    starts_at: datetime
    ends_at: datetime
    timezone: str | None
    created_at: datetime
    revision: int
    status: str  # active | cancelled
    workflow_status: dict[str, Any] | None  # {id, name, kind; description, position, colour} (R30-R34)
    needs_approval: bool
    approved_at: datetime | None
    confirmed_at: datetime | None
    visit_outcome: str | None
    cancelled_by: str | None
    cancelled_at: datetime | None
    cancel_reason: str | None
    markers: BookingMarkers
    status_history: list[StatusStep]  # newest first (R35)
    messages: list[BookingMessage]  # in due order
    not_planned: list[NotPlannedReason]
def same(given: str, expected: str) -> bool:
    """Constant-time comparison of a presented signature or token, whatever characters it holds
    (hmac.compare_digest refuses non-ASCII strings with a TypeError: a 500 instead of a 403)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    data = url + "".join(f"{key}{params[key]}" for key in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def meta_signature(app_secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


class MetaError(BaseModel):
    code: int | str | None = None
    title: str | None = None


class MetaStatus(BaseModel):
    id: str
    status: str
    errors: list[MetaError] = []
    biz_opaque_callback_data: str | None = None  # ours, sent with the message: which message it is


def named_message(reference: str | None) -> int | None:
    """The message a status report names (what the adapter sent as its reference), if it names one."""
    if reference and reference.isascii() and reference.isdigit() and len(reference) <= 18:
        return int(reference)
    return None


class MetaText(BaseModel):
    body: str = ""


class MetaButton(BaseModel):
    payload: str | None = None  # a template's quick-reply button: the payload we gave it
    text: str | None = None


class MetaButtonReply(BaseModel):
    id: str | None = None
    title: str | None = None


class MetaInteractive(BaseModel):
    button_reply: MetaButtonReply | None = None


class MetaContext(BaseModel):
    id: str | None = None  # the message of ours it answers


class MetaMessage(BaseModel):
    """A customer's message (R3, R11, R14); kinds other than text and buttons (images, ...) are read as
    a reply without words, for the staff."""

    id: str
    from_: str = Field(alias="from")
    type: str = "text"
    text: MetaText | None = None
    button: MetaButton | None = None
    interactive: MetaInteractive | None = None
    context: MetaContext | None = None

    def inbound(self) -> Inbound:
        reply = self.interactive.button_reply if self.interactive else None
        payload = self.button.payload if self.button else reply.id if reply else None
        words = self.text.body if self.text else self.button.text if self.button else reply.title if reply \
            else f"({self.type})"
        return Inbound(provider="meta", channel=Channel.WHATSAPP, provider_message_id=self.id, sender=self.from_,
                       text=words, button_payload=payload, replied_to=self.context.id if self.context else None)


class MetaMetadata(BaseModel):
    phone_number_id: str = ""  # which of the business's numbers: ours, or another's of the same account


class MetaValue(BaseModel):
    statuses: list[MetaStatus] = []
    messages: list[MetaMessage] = []
    metadata: MetaMetadata = MetaMetadata()  # other fields of the webhook are not ours


class MetaChange(BaseModel):
    value: MetaValue = MetaValue()


class MetaEntry(BaseModel):
    changes: list[MetaChange] = []


class MetaWebhook(BaseModel):
    """The parts of Meta's webhook that carry message statuses and customers' messages; other
    fields are ignored."""

    entry: list[MetaEntry] = []


def create_app(ctx: Any) -> FastAPI:
    settings = ctx.settings
    # no Swagger page (it cannot send a key); /openapi.json is served to key holders below, and
    # redirect_slashes off: its redirects were built from the request's Host header
    app = FastAPI(title="notifier", version="1", description="Status callbacks and the booking API of notifier.",
                  openapi_url=None, docs_url=None, redoc_url=None, redirect_slashes=False)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HeaderDefaults)
    caller = caller_dependency(ctx)
    api = api_router(ctx)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(_: Any = Depends(caller)) -> JSONResponse:
        """This API as OpenAPI, for key holders (docs/openapi.json is the same document)."""
        return JSONResponse(app.openapi())

    @app.get("/health", response_model=Health, responses={503: {"model": Health, "description": "a dependency "
                                                                  "is down; `checks` says which and why"}})
    def health(request: Request) -> JSONResponse:
        """The database and the Celery broker, probed at once with a deadline: 200 when both
        answer, 503 (for load balancers and orchestrators) when one does not. Which one is down
        and why (`checks`) only with the metrics token: the public learns up or down."""
        checks = probes.check({"database": lambda: probes.probe_database(ctx.store.engine),
                               "broker": lambda: probes.probe_broker(settings)})
        ok = all(c["status"] == "ok" for c in checks.values())
        body: dict[str, Any] = {"status": "ok" if ok else "unavailable"}
        if has_metrics_token(settings, request):
            body["checks"] = checks
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={401: {"description": "no metrics token, or a wrong one"},
                        404: {"description": "metrics_token is not set: /metrics is off"}})
    def metrics(request: Request) -> Response:
        """Prometheus exposition (text or OpenMetrics, as the scraper asks): queue lag, due-to-sent
        lateness, sends by channel and status, Celery queue lengths; read from the store and the
        broker at scrape time (notifier/web/metrics.py lists them). Needs
        `Authorization: Bearer <metrics_token>`; off while no token is set."""
        from prometheus_client.exposition import choose_encoder

        if not settings.metrics_token:
            raise HTTPException(status_code=404, detail="/metrics is off: set metrics_token")
        if not has_metrics_token(settings, request):
            raise HTTPException(status_code=401, detail="the metrics token is needed: Authorization: Bearer "
                                                        "<metrics_token>", headers={"WWW-Authenticate": "Bearer"})
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry()), media_type=content_type)

    registry_holder: list[Any] = []

    def registry() -> Any:
        if not registry_holder:  # built on the first scrape: creating the app reads nothing
            from prometheus_client import CollectorRegistry, ProcessCollector

            from notifier.web.metrics import StoreCollector

            reg = CollectorRegistry(auto_describe=False)
            reg.register(StoreCollector(ctx))
            ProcessCollector(registry=reg)
            registry_holder.append(reg)
        return registry_holder[0]

    async def twilio_form(request: Request) -> dict[str, str]:
        """The form of a request Twilio signed for this URL; anything else is a 403."""
        form = {k: str(v) for k, v in (await request.form()).items()}
        url = settings.public_url.rstrip("/") + request.url.path + (f"?{request.url.query}" if request.url.query
                                                                    else "")
        given = request.headers.get("X-Twilio-Signature", "")
        # signed with the token of the account that sent the message (a channel may have several):
        # the account the form names, when it names one of ours; one of ours it must be
        named = form.get("AccountSid")
        if named and named not in settings.twilio_accounts:
            raise HTTPException(status_code=403, detail="another account's message")
        tokens = (settings.twilio_accounts[named],) if named else settings.twilio_auth_tokens
        if not any(same(given, twilio_signature(token, url, form)) for token in tokens):
            raise HTTPException(status_code=403, detail="invalid signature")
        return form

    @app.post("/callbacks/twilio", status_code=204)
    async def twilio_callback(request: Request) -> Response:
        form = await twilio_form(request)
        sid, status = form.get("MessageSid") or form.get("SmsSid"), form.get("MessageStatus") or form.get("SmsStatus")
        if sid and status:
            error = f"twilio {form['ErrorCode']}" if form.get("ErrorCode") else None
            # on a thread: the event loop goes on taking callbacks while this one waits for the database
            if await run_in_threadpool(apply_delivery_status, ctx.store, "twilio", sid, status, now=ctx.clock.now(),
                                       error=error, message_id=named_message(request.query_params.get("message"))) \
                    == "foreign":
                raise HTTPException(status_code=409, detail="not a message sent through Twilio")
        return Response(status_code=204)

    def receive(inbound: Inbound) -> str:
        return receive_reply(ctx.store, inbound, now=ctx.clock.now(), regions=settings.unavailable,
                             valid_after_visit_s=settings.link_valid_after_visit_s).status

    @app.post("/inbound/twilio", response_class=Response,
              responses={200: {"content": {"text/xml": {}}, "description": "taken (an empty TwiML answer: "
                                                                            "notifier replies nothing)"},
                         403: {"description": "not signed by Twilio with this account's auth token"}})
    async def twilio_inbound(request: Request) -> Response:
        """A customer's SMS or WhatsApp message to one of our Twilio numbers (R3, R11, R14): the number's
        "a message comes in" webhook. Signed like the status callbacks."""
        form = await twilio_form(request)
        sid, sender = form.get("MessageSid") or form.get("SmsSid"), form.get("From", "")
        if not sid or not sender:
            raise HTTPException(status_code=400, detail="not an inbound message: MessageSid and From are needed")
        whatsapp = sender.startswith("whatsapp:")
        inbound = Inbound(provider="twilio", channel=Channel.WHATSAPP if whatsapp else Channel.SMS,
                          provider_message_id=sid, sender=sender, to=form.get("To", "").removeprefix("whatsapp:"),
                          messaging_service=form.get("MessagingServiceSid", ""), text=form.get("Body"),
                          button_payload=form.get("ButtonPayload"),
                          replied_to=form.get("OriginalRepliedMessageSid"), opt_out_type=form.get("OptOutType"))
        await run_in_threadpool(receive, inbound)
        return Response("<Response/>", media_type="text/xml")

    @app.get("/callbacks/meta", response_class=PlainTextResponse)
    def meta_verify(request: Request) -> str:
        q = request.query_params
        if q.get("hub.mode") == "subscribe" and settings.meta_verify_token and \
                same(q.get("hub.verify_token", ""), settings.meta_verify_token):
            return q.get("hub.challenge", "")
        raise HTTPException(status_code=403, detail="verification failed")

    @app.post("/callbacks/meta", status_code=204)
    async def meta_callback(request: Request) -> Response:
        body = await request.body()
        given = request.headers.get("X-Hub-Signature-256", "")
        if not settings.meta_app_secret or not same(given, meta_signature(settings.meta_app_secret, body)):
            raise HTTPException(status_code=403, detail="invalid signature")
        try:
            payload = MetaWebhook.model_validate_json(body)
        except ValidationError as exc:  # a clear 4xx: Meta retries a 5xx for days
            raise HTTPException(status_code=400, detail=f"not a WhatsApp webhook: {exc.error_count()} "
                                                        "problem(s)") from None

        def apply_all() -> int:
            foreign = 0
            for entry in payload.entry:
                for change in entry.changes:
                    ours = change.value.metadata.phone_number_id in ("", settings.meta_phone_number_id)
                    for message in change.value.messages if ours else ():  # a customer's message (R3, R11, R14)
                        receive(message.inbound())
                    for status in change.value.statuses:
                        error = f"whatsapp {status.errors[0].code}: {status.errors[0].title}" if status.errors else None
                        foreign += apply_delivery_status(
                            ctx.store, "meta", status.id, status.status, now=ctx.clock.now(), error=error,
                            message_id=named_message(status.biz_opaque_callback_data)) == "foreign"
            return foreign

        foreign = await run_in_threadpool(apply_all)  # the event loop goes on taking callbacks meanwhile
        if foreign:  # the others were applied; these are another provider's messages (issue 15)
            raise HTTPException(status_code=409, detail=f"{foreign} status(es) for messages not sent through Meta")
        return Response(status_code=204)

    # --- the customer's page (R11, R14, R22, R23, N4) -------------------------------------------

    def look_up(token: str) -> LinkOutcome:
        return look_up_link(ctx.store, token, now=ctx.clock.now(), regions=ctx.unavailable,
                            valid_after_visit_s=settings.link_valid_after_visit_s)

    def page(request: Request, token: str, outcome: LinkOutcome, *, notice: str = "", status_code: int = 200
             ) -> HTMLResponse:
        language = page_language(outcome.customer, outcome.tenant, request.headers.get("accept-language", ""))
        if outcome.booking is None or outcome.tenant is None or outcome.resource is None \
                or outcome.appointment is None:
            html = render_refusal(language=language, reason=outcome.status, tenant=outcome.tenant)
            status_code = 410 if outcome.status == "expired" else 404
        else:
            html = render_appointment(language=language, token=token, booking=outcome.booking,
                                      resource=outcome.resource, tenant=outcome.tenant, view=outcome.appointment,
                                      zone=zone_of(outcome.tenant, outcome.resource), moved_from=outcome.moved_from,
                                      notice=notice)
        return page_response(html, brand=brand_of(outcome.tenant), status_code=status_code)

    @app.get("/l/{token}", response_class=HTMLResponse)
    def link_show(request: Request, token: str,
                  done: Annotated[str | None, Query(description="what the last action did (the page after a "
                                                                "button): confirmed, cancelled, already")] = None
                  ) -> HTMLResponse:
        """The customer's page for a booking: the visit as it is now, its status, and the
        actions that apply now. Fetching it changes nothing (mail scanners fetch links)."""
        outcome = look_up(token)
        booking = outcome.booking
        shown = {"confirmed": booking is not None and booking.confirmed_at is not None,
                 "cancelled": booking is not None and booking.status is BookingStatus.CANCELLED,
                 "already": True}.get(done or "", False)
        return page(request, token, outcome, notice=done if shown and done else "")

    @app.post("/l/{token}/{action}", response_class=HTMLResponse, status_code=303,
              responses={409: {"description": "refused: the page says why (the visit changed, the window "
                                              "closed, not offered now)"}})
    async def link_act(request: Request, token: str, action: str) -> Response:
        """A button of the page: `confirm` (R11), or `cancel` within the tenant's window (R14,
        R23), with the form's `visit` (the start the page showed) and an optional `reason`. Done,
        or done before: 303 to the page, which says so; refused: 409 with the page."""
        if action not in ACTIONS:
            raise HTTPException(status_code=404, detail="no such action")
        form = await request.form()
        outcome = use_link(ctx.store, token, action, shown_starts_at=str(form.get("visit") or ""),
                           reason=str(form.get("reason") or ""), now=ctx.clock.now(),
                           regions=ctx.unavailable, valid_after_visit_s=settings.link_valid_after_visit_s)
        if outcome.status in ("confirmed", "cancelled", "already"):
            return Response(status_code=303, headers={"Location": f"/l/{token}?done={outcome.status}",
                                                      "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
        if outcome.status in ("invalid", "expired"):
            return page(request, token, outcome)
        return page(request, token, outcome, notice=outcome.status, status_code=409)

    @app.get("/l/{token}/calendar.ics", response_class=Response,
             responses={200: {"content": {"text/calendar": {}}, "description": "the appointment card"}})
    def link_calendar(request: Request, token: str) -> Response:
        """The booking as an iCalendar card (R22), the one the emails attach, as it is now."""
        outcome = look_up(token)
        booking, resource, tenant = outcome.booking, outcome.resource, outcome.tenant
        if booking is None or resource is None or tenant is None:
            return page(request, token, outcome)
        language = page_language(outcome.customer, tenant)
        ics, _method = calendar_card(booking, resource, tenant, outcome.customer, zone=zone_of(tenant, resource),
                                     organizer=sender_identity(tenant, Channel.EMAIL, settings)["sender"],
                                     stamp=ctx.clock.now())
        name = "termin.ics" if language == "de" else "appointment.ics"
        return Response(ics, media_type="text/calendar; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"})

    def local_day(tenant_id: str, day: date | None) -> date:
        if day is not None:
            return day
        with ctx.store.transaction() as tx:
            tenant = tx.tenant(tenant_id)
        if tenant is None:
            raise HTTPException(status_code=404, detail="no such tenant")
        return ctx.clock.now().astimezone(ZoneInfo(tenant.timezone)).date()

    @api.get("/tenants/{tenant_id}/counters")
    def counters_api(tenant_id: str, day: Day = None, resource: ResourceFilter = None) -> dict[str, dict[str, int]]:
        """Per resource for a local day: bookings unconfirmed (the clock marker) and in the red
        counter (R12), with the orange "late" marker and in the late counter (R16),
        exact at the moment of asking. `/markers` lists the bookings behind them."""
        try:
            out = counters(ctx.store, tenant_id, local_day(tenant_id, day), now=ctx.clock.now(),
                           regions=ctx.unavailable)
        except LookupError:
            raise HTTPException(status_code=404, detail="no such tenant") from None
        return {r: c for r, c in out.items() if resource is None or r == resource}

    @api.get("/tenants/{tenant_id}/markers")
    def markers_api(tenant_id: str, day: Day = None, resource: ResourceFilter = None) -> list[Marker]:
        """The bookings of a local day that count in a counter now, with the time each marker lit
        (R12 red counter, R16 late marker and late counter): the time the store recorded, else the moment the rule
        gives, so a marker shows before the next sweep has seen it."""
        try:
            found = views.lit_markers(ctx.store, tenant_id, local_day(tenant_id, day), now=ctx.clock.now(),
                                      regions=ctx.unavailable, resource_id=resource)
        except LookupError:
            raise HTTPException(status_code=404, detail="no such tenant") from None
        return [Marker(**m) for m in found]

    @api.get("/dead-letters")
    def dead_letters_api(after: Annotated[int, Query(ge=0, le=MAX_ID, description="list ids above this one")] = 0,
                         limit: Annotated[int, Query(ge=1, le=views.DEAD_LETTER_PAGE_MAX)] = 50) -> DeadLetterPage:
        """Events that could not be applied (N3), oldest first, with the reason and where they came
        from; page with `after` = the previous page's `next_after`. Bodies are not served here
        (they carry customers' personal data): `notifier dlq list` shows them."""
        items = views.dead_letters_page(ctx.store, after_id=after, limit=limit)
        return DeadLetterPage(items=[DeadLetter(**i) for i in items],
                              next_after=items[-1]["id"] if len(items) == limit else None)

    @api.get("/tenants/{tenant_id}/bookings/{booking_id}", responses={404: {"description": "no such booking"}})
    def booking_api(tenant_id: str, booking_id: str) -> BookingState:
        """A booking as it stands: status and workflow status, markers, the status history newest
        first (R35), its messages with their states (planned, sent, failed, withdrawn...) and the
        message kinds planning leaves out, with the reason (docs/events.md). `notifier booking
        show` prints the same for a person."""
        found = views.booking_view(ctx.store, tenant_id, booking_id, now=ctx.clock.now(),
                                   regions=ctx.unavailable)
        if found is None:
            raise HTTPException(status_code=404, detail="no such booking")
        return BookingState(**found)

    @api.get("/tenants/{tenant_id}/messages", responses={422: {"description": "a filter that cannot be read"}})
    def messages_api(tenant_id: str,
                     booking: Annotated[str | None, Query(description="one booking's messages")] = None,
                     phone: Annotated[str | None, Query(description="the customer's number (E.164, or in the "
                                                                    "tenant's region): their SMS and WhatsApp")] = None,
                     email: Annotated[str | None, Query(description="the customer's address: their emails")] = None,
                     channel: Annotated[str | None, Query()] = None,
                     state: Annotated[str | None, Query(description="planned, sent, failed, ...")] = None,
                     due_from: Annotated[datetime | None, Query(alias="from", description="due at or after")] = None,
                     due_to: Annotated[datetime | None, Query(alias="to", description="due before")] = None,
                     before: Annotated[int | None, Query(ge=1, le=MAX_ID, description="ids below this one")] = None,
                     limit: Annotated[int, Query(ge=1, le=200)] = 50) -> MessagePage:
        """The tenant's messages that match every filter given, newest first: a booking's, a
        customer's by phone or email (as their data is now), by channel, state and due time
        (times with their offset). The console and `notifier messages search` ask the same."""
        from notifier import operations as ops

        for moment in (due_from, due_to):
            if moment is not None and moment.tzinfo is None:
                raise HTTPException(status_code=422, detail="from and to need their offset (Z or +01:00)")
        try:
            found = ops.search_messages(ctx.store, ops.MessageQuery(
                tenant_id=tenant_id, booking_id=booking, phone=phone, email=email, channel=channel, state=state,
                due_from=due_from, due_to=due_to, before_id=before, limit=limit), actor=ops.Actor("api"))
        except ops.Refused as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return MessagePage(items=[MessageFound(**row) for row in found],
                           next_before=found[-1]["id"] if len(found) == limit else None)

    @api.get("/tenants/{tenant_id}/bookings/{booking_id}/timeline")
    def timeline(tenant_id: str, booking_id: str) -> list[dict[str, Any]]:
        entries = timeline_of(ctx.store, tenant_id, booking_id)
        if not entries:
            raise HTTPException(status_code=404, detail="no such booking")
        return [{"at": e["at"].isoformat(), "kind": e["kind"], "detail": e["detail"]} for e in entries]

    app.include_router(api)  # after its routes: including copies them
    from notifier.web.console import install_console

    install_console(app, ctx)  # the ops console, /console (notifier/web/console.py)
    return app


def openapi_document() -> dict[str, Any]:
    """The API as OpenAPI (docs/openapi.json; `make schema` regenerates it)."""
    from types import SimpleNamespace

    from notifier.settings import Settings

    return create_app(SimpleNamespace(settings=Settings(), store=None, clock=None)).openapi()
