"""What operators and tenants do by hand: find messages, resend a failed one, withdraw a planned
one, preview a template with a booking's data or the samples and send a test of it, see held
events and dead letters and replay one.

The ops console (notifier/web/console.py) and the command line (`notifier messages ...`,
`notifier templates preview`) call these. Each takes the `Actor` who asks: an operator (every
tenant) or a tenant's key (that tenant only: another tenant's booking or message is "not
found", so nothing is learnt of it). Every action that changes something is on the booking's
timeline with who did it (`by`), and a tenant that opted in to message events hears of it like
of any other outcome.

A resend is a new message (`resend_of` names the failed one) with a key of its own; a
withdrawal by hand keeps the message, `withdrawn`, with `by` set. Planning leaves both alone
(`StoredMessage.manual`): the next event for the booking neither withdraws the resend nor
revives what the operator withdrew. Dispatch sends a resend with the same checks of consent and
channel as any message (R3), not the plan's.

A preview or a test send never carries the customer's live link: in its place is a placeholder
of the same length (so an SMS counts the same segments), and a test goes only to the address
the operator typed, its email subject marked "[Test]".
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select, update

from notifier.channels.base import Outgoing, PermanentFailure, TemporaryFailure
from notifier.dispatch import CARD_KINDS, sender_identity, template_context
from notifier.domain.model import CUSTOMER_CHANNELS, Channel, Kind, MessageState
from notifier.domain.outbound import message_event
from notifier.domain.planning import zone_of
from notifier.observability.logs import mask_text
from notifier.phones import read_phone
from notifier.rendering.bundles import LANGUAGES, RESOURCE_TYPES, sample_link, sms_segments
from notifier.rendering.environment import TemplateMissing
from notifier.rendering.samples import sample_context
from notifier.store import schema as t
from notifier.store.batch import BatchSession
from notifier.store.sql import Store, Tx

log = logging.getLogger("notifier.operations")
SEARCH_LIMIT_MAX = 200
WITHDRAWABLE = (MessageState.PLANNED.value, MessageState.QUEUED.value)


@dataclass(frozen=True)
class Actor:
    """Who acts: `name` is what the timeline records ("key_3f9a0c51d2e4 (ops)", "cli:alice")."""

    name: str
    tenant_id: str | None = None  # a tenant's key: that tenant only; None: the operator

    @property
    def operator(self) -> bool:
        return self.tenant_id is None

    def may(self, tenant_id: str) -> bool:
        return self.operator or self.tenant_id == tenant_id


class NotFound(LookupError):
    """No such thing, or not the actor's to see."""


class NotAllowed(PermissionError):
    """An operator's action asked for with a tenant's key."""


class Refused(ValueError):
    """The action does not apply now; the text says why."""


# --- search ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class MessageQuery:
    tenant_id: str | None = None
    booking_id: str | None = None
    phone: str | None = None  # the customer's number now: their SMS and WhatsApp messages
    email: str | None = None  # the customer's address now: their emails
    channel: str | None = None
    state: str | None = None
    due_from: datetime | None = None  # due at or after
    due_to: datetime | None = None  # due before
    before_id: int | None = None  # the next page: ids below this one
    limit: int = 50


def search_messages(store: Store, query: MessageQuery, *, actor: Actor) -> list[dict[str, Any]]:
    """Messages that match every filter given, newest first (by id), at most `limit`.

    Each filter narrows: a booking, the customer's phone (as stored, E.164; a number without its
    country prefix is read in the tenant's home region) or email (any case), a channel, a state
    and a range of due times. Found from an index when a booking, phone or email is given (the
    customer, then their bookings); the other filters alone read the tenant's messages."""
    tenant_id = query.tenant_id or actor.tenant_id
    if tenant_id is not None and not actor.may(tenant_id):
        raise NotFound(f"no tenant {tenant_id!r}")
    if query.channel is not None and query.channel not in {c.value for c in Channel}:
        raise Refused(f"no channel {query.channel!r}: {', '.join(c.value for c in Channel)}")
    if query.state is not None and query.state not in {s.value for s in MessageState}:
        raise Refused(f"no state {query.state!r}: {', '.join(s.value for s in MessageState)}")
    m, b, c = t.messages.c, t.bookings.c, t.customers.c
    columns = [m.id, m.tenant_id, m.booking_id, m.key, m.kind, m.channel, m.recipient, m.state, m.due_at, m.sent_at,
               m.attempts, m.error, m.by, m.resend_of, m.provider_message_id, b.customer_id, b.starts_at]
    source = t.messages.join(t.bookings, and_(b.tenant_id == m.tenant_id, b.id == m.booking_id))
    where = []
    if query.phone or query.email:
        source = source.join(t.customers, and_(c.tenant_id == b.tenant_id, c.id == b.customer_id))
        where.append(m.recipient == "customer")
    if query.phone:
        region = "ZZ"
        if tenant_id is not None and not query.phone.strip().startswith(("+", "00")):
            with store.transaction() as tx:
                tenant = tx.tenant(tenant_id)
            region = tenant.home_region if tenant else "ZZ"
        number, error, _ = read_phone(query.phone, region)
        if number is None:
            raise Refused(f"phone: {error or 'not a phone number'} (give it with its country prefix, +49...)")
        where += [c.phone == number, m.channel.in_([Channel.SMS.value, Channel.WHATSAPP.value])]
    if query.email:
        where += [func.lower(c.email) == query.email.strip().lower(), m.channel == Channel.EMAIL.value]
    if tenant_id is not None:
        where.append(m.tenant_id == tenant_id)
    if query.booking_id:
        where.append(m.booking_id == query.booking_id)
    if query.channel:
        where.append(m.channel == query.channel)
    if query.state:
        where.append(m.state == query.state)
    if query.due_from is not None:
        where.append(m.due_at >= query.due_from)
    if query.due_to is not None:
        where.append(m.due_at < query.due_to)
    if query.before_id is not None:
        where.append(m.id < query.before_id)
    limit = max(1, min(query.limit, SEARCH_LIMIT_MAX))
    with store.engine.connect() as conn:
        rows = conn.execute(select(*columns).select_from(source).where(*where).order_by(m.id.desc()).limit(limit))
        return [dict(row._mapping) for row in rows]


# --- one message: find, resend, withdraw ----------------------------------------------------------

def _own_message(tx: Tx, message_id: int, actor: Actor, *, lock: bool = False) -> Any:
    c = t.messages.c
    query = select(t.messages).where(c.id == message_id)
    if lock and tx.dialect == "postgresql":
        query = query.with_for_update()
    row = tx.conn.execute(query).first()
    if row is None or not actor.may(row.tenant_id):
        raise NotFound(f"no message {message_id}")
    return row


def resend_message(store: Store, message_id: int, *, actor: Actor, now: datetime,
                   channel: str | None = None) -> int:
    """Send a failed message again, now: a new message (the id returned) with the same kind, to
    the same recipient, on its channel or another the customer may be reached on; the next due
    sweep hands it to dispatch, which checks consent as for any message (R3)."""
    with store.transaction() as tx:
        row = _own_message(tx, message_id, actor, lock=True)
        if row.state != MessageState.FAILED.value:
            raise Refused(f"message {message_id} is {row.state}: only a failed message can be sent again")
        target = Channel(channel or row.channel)
        if target.value != row.channel and (row.recipient != "customer" or target not in CUSTOMER_CHANNELS):
            raise Refused(f"a {row.recipient} message goes on {row.channel}" if row.recipient != "customer"
                          else f"a customer message goes by {', '.join(c.value for c in CUSTOMER_CHANNELS)}")
        BatchSession(tx.conn).lock([f"b:{row.tenant_id}:{row.booking_id}"])  # against a replan meanwhile
        c = t.messages.c
        earlier = tx.conn.execute(select(func.count()).where(c.resend_of == message_id)).scalar_one()
        new_id = tx.conn.execute(t.messages.insert().values(
            tenant_id=row.tenant_id, booking_id=row.booking_id, key=f"{row.key}#resend{earlier + 1}", kind=row.kind,
            channel=target.value, recipient=row.recipient, state=MessageState.PLANNED.value, due_at=now, attempts=0,
            created_at=now, updated_at=now, by=actor.name, resend_of=message_id).returning(c.id)).scalar_one()
        tx.add_timeline(row.tenant_id, row.booking_id, now, "message.resend",
                        {"kind": row.kind, "channel": target.value, "of": message_id, "by": actor.name},
                        message_id=new_id)
    log.info("message %s sent again as %s by %s", message_id, new_id, actor.name)
    return int(new_id)


def withdraw_message(store: Store, message_id: int, *, actor: Actor, now: datetime, reason: str = "") -> None:
    """Withdraw a message that has not gone yet (planned, or claimed by a sweep and waiting for a
    worker): it will not be sent, and planning does not bring it back. One a worker is sending
    now cannot be stopped."""
    reason = " ".join(reason.split())[:500]
    with store.transaction() as tx:
        row = _own_message(tx, message_id, actor, lock=True)
        if row.state not in WITHDRAWABLE:
            raise Refused(f"message {message_id} is {row.state}: only a planned message can be withdrawn")
        c = t.messages.c
        why = f"withdrawn by {actor.name}" + (f": {reason}" if reason else "")
        done = tx.conn.execute(update(t.messages).where(c.id == message_id, c.state.in_(WITHDRAWABLE)).values(
            state=MessageState.WITHDRAWN.value, by=actor.name, error=why, lease_until=None, updated_at=now)
            .returning(c.id)).first()
        if done is None:  # SQLite: a worker took it between the read and the update
            raise Refused(f"message {message_id} is being sent: it can no longer be withdrawn")
        tx.add_timeline(row.tenant_id, row.booking_id, now, "message.withdrawn",
                        {"kind": row.kind, "channel": row.channel, "reason": reason or "withdrawn by hand",
                         "by": actor.name}, message_id=message_id)
        tx.add_message_events([(row.tenant_id, *message_event(
            MessageState.WITHDRAWN, message_id=message_id, booking_id=row.booking_id, kind=row.kind,
            channel=row.channel, recipient=row.recipient, at=now, reason=reason or "withdrawn by hand",
            by=actor.name, resend_of=row.resend_of))], now)
    log.info("message %s withdrawn by %s", message_id, actor.name)


def message_place(store: Store, message_id: int, *, actor: Actor) -> tuple[str, str]:
    """(tenant id, booking id) of a message the actor may see."""
    with store.transaction() as tx:
        row = _own_message(tx, message_id, actor)
    return row.tenant_id, row.booking_id


# --- template preview and test sends ----------------------------------------------------------------

@dataclass(frozen=True)
class PreviewRequest:
    tenant_id: str
    kind: str
    channel: str
    language: str | None = None  # default: the booking's customer's, else the tenant's
    resource_type: str | None = None  # default: the booking's resource's, else specialist
    booking_id: str | None = None  # None: the samples (docs/samples), with the tenant's company


@dataclass(frozen=True)
class Preview:
    request: PreviewRequest
    language: str
    resource_type: str
    subject: str | None
    text: str
    html: str | None
    template: str  # the file (or WhatsApp template) it came from, and the bundle's version
    source: str  # "booking B-1001" or "samples"
    sms: tuple[str, int, int] | None = None  # (encoding, segments, characters) of an SMS
    whatsapp: tuple[str, str, tuple[str, ...]] | None = None  # (template, language, parameters)
    card: str | None = None  # email: the calendar card it carries, if any
    notes: list[str] = field(default_factory=list)


def preview_template(ctx: Any, request: PreviewRequest, *, actor: Actor) -> Preview:
    """A message as it would be rendered now: the tenant's active bundle (else the shipped
    templates), with the booking's data (customer, resource, visit in the tenant's zone) or the
    samples; the customer's link replaced by a placeholder of its length."""
    kind, channel = _kind_and_channel(request)
    if not actor.may(request.tenant_id):
        raise NotFound(f"no tenant {request.tenant_id!r}")
    store = ctx.store
    with store.transaction() as tx:
        tenant = tx.tenant(request.tenant_id)
        if tenant is None:
            raise NotFound(f"no tenant {request.tenant_id!r}")
        version = tx.active_bundle_version(tenant.id)
        booking = tx.booking(tenant.id, request.booking_id) if request.booking_id else None
        if request.booking_id and booking is None:
            raise NotFound(f"no booking {request.booking_id!r} for {tenant.id}")
        customer = tx.customer(tenant.id, booking.customer_id) if booking else None
        resource = tx.resource(tenant.id, booking.resource_id) if booking else None
    if request.language and request.language not in LANGUAGES:
        raise Refused(f"no language {request.language!r}: {', '.join(LANGUAGES)}")
    language = request.language or (customer.language if customer else tenant.language)
    resource_type = request.resource_type or (resource.type if resource else "specialist")
    if resource_type not in RESOURCE_TYPES:
        raise Refused(f"no resource type {resource_type!r}: {', '.join(RESOURCE_TYPES)}")
    link = sample_link(ctx.settings.public_url)
    if booking is not None and customer is not None and resource is not None:
        values = template_context(tenant, resource, customer, booking)
        values["resource"] = dict(values["resource"], type=resource_type)
        values["customer"] = dict(values["customer"], language=language)
        zone, source = str(zone_of(tenant, resource)), f"booking {booking.id}"
    else:
        values = sample_context(language, resource_type)
        values["company"] = dict(tenant.company) or values["company"]
        zone, source = tenant.timezone, "samples"
    values["links"] = {"page": link, "confirm": link, "cancel": link}
    languages = tuple(dict.fromkeys((language, tenant.language, ctx.settings.default_language, "en")))
    renderer = ctx.renderer_for(tenant.id, version)
    try:
        out = renderer.render(kind.value, channel.value, resource_type, languages, values, timezone=zone,
                              locale=language, resource_id=resource.id if resource else None)
    except TemplateMissing as exc:
        raise Refused(f"template: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a template's own error, shown to whoever previews it
        raise Refused(f"template error: {exc.__class__.__name__}: {exc}") from None
    notes = [] if out.template.split("/", 2)[1:2] == [language] or out.template.startswith("whatsapp:") \
        else [f"no {language} template: {out.template} is used"]
    if renderer.falls_back(kind.value, channel.value):
        notes.append(f"the active bundle has no {kind.value} {channel.value} template: the shipped default is used")
    sms = (*sms_segments(out.text), len(out.text)) if channel is Channel.SMS else None
    whatsapp = (out.provider_template or "", out.provider_language or "", out.params) \
        if channel is Channel.WHATSAPP else None
    card = "appointment card (ICS) attached" if channel is Channel.EMAIL and kind.value in CARD_KINDS else None
    return Preview(request, language, resource_type, out.subject, out.text, out.html,
                   f"{renderer.version}:{out.template}", source, sms, whatsapp, card, notes)


def _kind_and_channel(request: PreviewRequest) -> tuple[Kind, Channel]:
    """The kind and channel asked for (which of them have a template is the bundle's business)."""
    try:
        kind = Kind(request.kind)
    except ValueError:
        raise Refused(f"no kind {request.kind!r}: {', '.join(k.value for k in Kind)}") from None
    try:
        channel = Channel(request.channel)
    except ValueError:
        raise Refused(f"no channel {request.channel!r}: {', '.join(c.value for c in Channel)}") from None
    return kind, channel


def send_test(ctx: Any, request: PreviewRequest, to: str, *, actor: Actor, now: datetime) -> str:
    """Send the preview to an address the actor typed (email, or a phone number for SMS and
    WhatsApp), now, through the channel's provider; the provider's id of it. Not a message of
    the booking's: nothing is planned or counted, and the booking's timeline records that a
    test went, by whom and on which channel (the address masked)."""
    preview = preview_template(ctx, request, actor=actor)
    channel = Channel(request.channel)
    with ctx.store.transaction() as tx:
        tenant = tx.tenant(request.tenant_id)
    assert tenant is not None
    to = to.strip()
    if channel is Channel.EMAIL:
        from email_validator import EmailNotValidError, validate_email

        try:
            address = validate_email(to, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise Refused(f"not an email address: {exc}") from None
    elif channel in (Channel.SMS, Channel.WHATSAPP):
        address, error, _ = read_phone(to, tenant.home_region)
        if address is None:
            raise Refused(f"not a phone number: {error}")
    else:
        raise Refused(f"{channel.value} goes to the booking system's webhook: no test to an address")
    adapter = ctx.channels.get(channel)
    if adapter is None:
        raise Refused(f"no provider is configured for {channel.value}")
    outgoing = Outgoing(
        message_id=0, idempotency_key=f"test/{uuid.uuid4().hex}", to=address, text=preview.text,
        subject=f"[Test] {preview.subject}" if preview.subject else None, html=preview.html,
        template=preview.whatsapp[0] if preview.whatsapp else None,
        template_language=preview.whatsapp[1] if preview.whatsapp else None,
        params=preview.whatsapp[2] if preview.whatsapp else (), headers={"X-Notifier-Test": "1"}
        if channel is Channel.EMAIL else {}, **sender_identity(tenant, channel, ctx.settings),
        metadata={"tenant_id": tenant.id, "kind": request.kind, "test": True})
    from notifier.ratelimit import take_turn

    try:
        result = take_turn(adapter).send(outgoing)
    except (PermanentFailure, TemporaryFailure) as exc:
        raise Refused(f"the provider refused the test: {exc.reason}") from None
    shown = mask_text(address)
    if request.booking_id:
        with ctx.store.transaction() as tx:
            tx.add_timeline(tenant.id, request.booking_id, now, "message.test_sent",
                            {"kind": request.kind, "channel": channel.value, "to": shown, "by": actor.name})
    log.info("a test of %s.%s went to %s, sent by %s", request.kind, channel.value, shown, actor.name)
    return result.provider_message_id


# --- held events and dead letters ---------------------------------------------------------------------

def held_events(store: Store, *, actor: Actor, limit: int = 100) -> list[dict[str, Any]]:
    """Events waiting for the one they follow (oldest first): which booking, which revision and
    why, and the event's type; not its body (personal data)."""
    h = t.held_events.c
    query = select(h.event_id, h.tenant_id, h.aggregate, h.revision, h.held_at, h.reason, h.body) \
        .order_by(h.held_at, h.revision).limit(limit)
    if not actor.operator:
        query = query.where(h.tenant_id == actor.tenant_id)
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    out = []
    for r in rows:
        try:
            kind = str(json.loads(r.body).get("type", "?"))
        except (ValueError, AttributeError):
            kind = "?"
        out.append({"event_id": r.event_id, "tenant_id": r.tenant_id, "aggregate": r.aggregate, "type": kind,
                    "revision": r.revision, "held_at": r.held_at, "reason": r.reason})
    return out


def replay_dead_letter(store: Store, dead_letter_id: int, *, actor: Actor, now: datetime) -> Any:
    """Apply a dead letter's event again (operators only: dead letters are the whole installation's,
    some of no known tenant). The booking it applies to records the replay and who made it."""
    from notifier.domain import events as ev
    from notifier.services import replay_dead_letter as replay

    if not actor.operator:
        raise NotAllowed("dead letters are the operator's")
    report = replay(store, dead_letter_id, now=now)
    if report.dead == 0 and report.applied + report.held:
        with store.transaction() as tx:
            body = tx.conn.execute(select(t.dead_letters.c.body).where(t.dead_letters.c.id == dead_letter_id)
                                   ).scalar_one()
            try:
                event = ev.parse_event(body)
            except ev.InvalidEvent:
                event = None
            if event is not None and ev.aggregate_of(event)[0] == "booking" \
                    and tx.booking(event.tenant_id, ev.aggregate_of(event)[1]) is not None:
                tx.add_timeline(event.tenant_id, ev.aggregate_of(event)[1], now, "event.replayed",
                                {"dead_letter": dead_letter_id, "type": event.type, "by": actor.name})
    log.info("dead letter %s replayed by %s: %s applied, %s dead", dead_letter_id, actor.name, report.applied,
             report.dead)
    return report
