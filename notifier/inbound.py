"""Customers' messages back (R3, R11, R14): opt out and in, answer a confirmation request, anything else.

A provider's inbound webhook (notifier/web/app.py checks its signature) becomes an `Inbound`:
who wrote (their number), to which of our numbers, on which channel, what (text, or a
quick-reply button's payload) and in answer to which of our messages, when the provider says.
`receive_reply` then, in one transaction:

- keeps it once per provider message id (`inbound_messages`: a webhook delivered again does
  nothing more);
- finds the customers it comes from: those with that number, of the tenants the number written
  to belongs to (a tenant's own `sms_from` or messaging service; the platform's shared sender
  serves every tenant without one; WhatsApp numbers are the platform's);
- STOP and the other opt-out words withdraw the channel for every such customer (a carrier blocks
  the number for the sender, whichever tenant sent): their planned messages on it are planned
  again (another channel they consented to takes them where the kind allows one), the timeline
  says so, and the booking system gets `customer.consent_changed`. START restores the channel;
- a confirmation or cancellation (a button, or a word in de, it, ru, en) acts on the booking it
  most likely answers exactly as the customer's page does (`services.customer_acts`): the same
  window, the same idempotency, staff notices, freed slot and events;
- anything else, and an answer the page would refuse (the window closed, the visit moved since
  the message), is on that booking's timeline and goes to the staff (`customer.replied`).

The booking a reply most likely belongs to: the one of our message it quotes (WhatsApp's
context, Twilio's OriginalRepliedMessageSid); else, for an answer, the latest confirmation request
sent on that channel for a visit still ahead; else the latest message sent on that channel; else
the customer's next visit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from notifier.domain import transitions as tr
from notifier.domain.model import BookingStatus, Channel, Kind
from notifier.domain.replies import REPLY_MAX, Intent, normalized, read_reply
from notifier.services import _count_not_planned, _replan_many, customer_acts
from notifier.store import schema as t
from notifier.store.batch import BatchSession
from notifier.store.sql import Store

log = logging.getLogger(__name__)

CANDIDATES_MAX = 50  # customers one number may stand for (across tenants)
ASKING = (Kind.CONFIRMATION.value, Kind.REQUEST_ACCEPTED.value)  # messages that ask for an answer
TIMELINE_TEXT_MAX = 500  # characters of a reply on the timeline
# Twilio's Advanced Opt-Out names what it did with a keyword (OptOutType)
TWILIO_OPT_OUT_TYPES = {"STOP": Intent.OPT_OUT, "START": Intent.OPT_IN}
# answers Twilio also takes as an opt-in (its default keywords: START, UNSTOP, YES): a customer who
# had opted out and answers "Yes" is subscribed at Twilio again, so here too
TWILIO_ALSO_OPT_IN = frozenset({"yes"})


@dataclass(frozen=True)
class Inbound:
    """A customer's message as a provider delivered it."""

    provider: str  # twilio | meta
    channel: Channel  # sms | whatsapp
    provider_message_id: str
    sender: str  # the customer's number as the provider wrote it ("whatsapp:+49...", "49151...")
    to: str = ""  # our number it was sent to, E.164 (Meta: empty)
    messaging_service: str = ""  # Twilio: the messaging service that number belongs to
    text: str | None = None
    button_payload: str | None = None
    replied_to: str | None = None  # the provider's id of our message it answers
    opt_out_type: str | None = None  # Twilio Advanced Opt-Out: STOP, START, HELP


@dataclass(frozen=True)
class ReplyOutcome:
    """`status`: duplicate (seen before), unmatched (no customer has the number), opted_out,
    opted_in, confirmed, cancelled, already, forwarded (to the staff), or the page's refusal
    that sent it to the staff (changed, not_now, outside_window, not_allowed, expired, invalid)."""

    status: str
    intent: Intent | None = None
    tenant_id: str | None = None
    booking_id: str | None = None


def e164(number: str) -> str:
    """A provider's way of writing a number ("whatsapp:+49...", Meta's "49151...") in E.164."""
    bare = number.strip().removeprefix("whatsapp:").strip()
    return bare if bare.startswith("+") else f"+{bare}"


def intent_of(inbound: Inbound) -> Intent | None:
    if inbound.opt_out_type and inbound.opt_out_type.upper() in TWILIO_OPT_OUT_TYPES:
        return TWILIO_OPT_OUT_TYPES[inbound.opt_out_type.upper()]  # the provider has acted on it already
    return read_reply(inbound.text, button_payload=inbound.button_payload)


def receive_reply(store: Store, inbound: Inbound, *, now: datetime, valid_after_visit_s: int,
                  regions: Any = None) -> ReplyOutcome:
    """Act on a customer's message (see the module's text); once per provider message id."""
    intent = intent_of(inbound)
    with store.transaction() as tx:
        s = BatchSession(tx.conn)
        s.regions = dict(regions or {})
        row_id = _keep_once(tx.conn, inbound, intent, now)
        if row_id is None:
            return ReplyOutcome("duplicate", intent)
        outcome = _act(s, inbound, intent, row_id, now=now, valid_after_visit_s=valid_after_visit_s)
        s.flush(now)
        tx.conn.execute(update(t.inbound_messages).where(t.inbound_messages.c.id == row_id).values(
            tenant_id=outcome.tenant_id, booking_id=outcome.booking_id, outcome=outcome.status,
            customer_id=_customer_of(s, outcome)))
    _count_not_planned(s.not_planned_written)
    log.info("reply on %s: %s", inbound.channel.value, outcome.status,
             extra={"channel": inbound.channel.value, "outcome": outcome.status})
    return outcome


def _keep_once(conn: Any, inbound: Inbound, intent: Intent | None, now: datetime) -> int | None:
    """The row that keeps this message, or None when it was kept before (a webhook delivered again)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    text = (inbound.text or inbound.button_payload or "")[:REPLY_MAX]
    statement = dialect.insert(t.inbound_messages).values(
        provider=inbound.provider, provider_message_id=inbound.provider_message_id[:200],
        channel=inbound.channel.value, intent=intent.value if intent else None, outcome="received", text=text,
        received_at=now).on_conflict_do_nothing(index_elements=["provider", "provider_message_id"]) \
        .returning(t.inbound_messages.c.id)
    return conn.execute(statement).scalar()


def _customer_of(s: BatchSession, outcome: ReplyOutcome) -> str | None:
    if outcome.tenant_id and outcome.booking_id:
        booking = s.booking(outcome.tenant_id, outcome.booking_id)
        return booking.customer_id if booking else None
    return None


def _act(s: BatchSession, inbound: Inbound, intent: Intent | None, row_id: int, *, now: datetime,
         valid_after_visit_s: int) -> ReplyOutcome:
    keys = customers_writing(s, inbound)
    if not keys:
        return ReplyOutcome("unmatched", intent)
    # every lock at once, in order (as the ingester takes them): the customers, then their bookings
    active = s.active_of_customers(set(keys))
    s.lock([*(f"c:{tid}:{cid}" for tid, cid in keys),
            *(f"b:{tid}:{bid}" for (tid, _), ids in active.items() for bid in ids)])
    likely = likely_booking(s, keys, inbound, intent, now)
    if intent in (Intent.OPT_OUT, Intent.OPT_IN):
        changed = set_opted_out(s, keys, inbound.channel, intent is Intent.OPT_OUT, now=now, via="reply",
                                keyword=normalized(inbound.text or inbound.opt_out_type or ""))
        status = "opted_out" if intent is Intent.OPT_OUT else "opted_in"
        return ReplyOutcome(status if changed else "already", intent, *(likely[:2] if likely else (None, None)))
    if likely is None:
        return ReplyOutcome("unmatched", intent)
    tenant_id, booking_id, answered_at = likely
    if intent is Intent.CONFIRM and inbound.provider == "twilio" and inbound.channel is Channel.SMS \
            and normalized(inbound.text or "") in TWILIO_ALSO_OPT_IN:
        set_opted_out(s, keys, inbound.channel, False, now=now, via="reply", keyword=normalized(inbound.text or ""))
    if intent in (Intent.CONFIRM, Intent.CANCEL):
        booking = s.booking(tenant_id, booking_id)
        # an answer to a message sent before the visit moved is not an answer about the visit as it is now
        moved = booking is not None and answered_at is not None and booking.scheduled_at > answered_at
        shown = "" if moved or booking is None else booking.starts_at.isoformat()
        done = customer_acts(s, (tenant_id, booking_id), intent.value, shown_starts_at=shown, reason="", now=now,
                             valid_after_visit_s=valid_after_visit_s, via=inbound.channel.value)
        if done.status in ("confirmed", "cancelled", "already"):
            s.add_timeline(tenant_id, booking_id, now, "customer.replied",
                           {"channel": inbound.channel.value, "intent": intent.value, "outcome": done.status})
            return ReplyOutcome(done.status, intent, tenant_id, booking_id)
        forward(s, tenant_id, booking_id, inbound, intent, row_id, now=now, refused=done.status)
        return ReplyOutcome(done.status, intent, tenant_id, booking_id)
    forward(s, tenant_id, booking_id, inbound, intent, row_id, now=now)
    return ReplyOutcome("forwarded", intent, tenant_id, booking_id)


def customers_writing(s: BatchSession, inbound: Inbound) -> list[tuple[str, str]]:
    """(tenant id, customer id) of the customers the message may come from: their number, of the
    tenants the number written to serves. An SMS to a tenant's own number (or messaging service)
    is that tenant's; one to any other number is the platform's shared sender's, which serves the
    tenants without one of their own. WhatsApp numbers are the platform's."""
    c = t.customers.c
    rows = s.conn.execute(select(c.tenant_id, c.id).where(c.phone == e164(inbound.sender))
                          .order_by(c.tenant_id, c.id).limit(CANDIDATES_MAX)).all()
    found = [(row.tenant_id, row.id, tenant) for row in rows if (tenant := s.tenant(row.tenant_id)) is not None]
    if inbound.channel is not Channel.SMS:
        return [(tid, cid) for tid, cid, _ in found]
    owners = [(tid, cid) for tid, cid, tenant in found if _owns(tenant.sender, inbound)]
    if owners:
        return owners
    return [(tid, cid) for tid, cid, tenant in found
            if not (tenant.sender.get("sms_from") or tenant.sender.get("sms_messaging_service"))]


def _owns(sender: Any, inbound: Inbound) -> bool:
    """The SMS was written to the tenant's own number or messaging service."""
    number, service = sender.get("sms_from", ""), sender.get("sms_messaging_service", "")
    return bool(service and service == inbound.messaging_service or number and number == inbound.to)


def likely_booking(s: BatchSession, keys: list[tuple[str, str]], inbound: Inbound, intent: Intent | None,
                   now: datetime) -> tuple[str, str, datetime | None] | None:
    """(tenant id, booking id, when the message it answers was sent) of the booking the reply most
    likely belongs to (the module's text says how), or None."""
    m, b = t.messages.c, t.bookings.c
    joined = t.messages.join(t.bookings, and_(b.tenant_id == m.tenant_id, b.id == m.booking_id))
    if inbound.replied_to:
        row = s.conn.execute(select(m.tenant_id, m.booking_id, b.customer_id, m.sent_at).select_from(joined)
                             .where(m.provider_message_id == inbound.replied_to).limit(1)).first()
        if row is not None and (row.tenant_id, row.customer_id) in keys:
            return row.tenant_id, row.booking_id, row.sent_at
    theirs = or_(*(and_(b.tenant_id == tid, b.customer_id == cid) for tid, cid in keys))
    sent = s.conn.execute(select(m.tenant_id, m.booking_id, m.kind, m.sent_at, b.status, b.starts_at)
                          .select_from(joined)
                          .where(theirs, m.recipient == "customer", m.channel == inbound.channel.value,
                                 m.sent_at.isnot(None))
                          .order_by(m.sent_at.desc(), m.id.desc()).limit(20)).all()
    if intent in (Intent.CONFIRM, Intent.CANCEL):
        for row in sent:
            if row.kind in ASKING and row.status == BookingStatus.ACTIVE.value and row.starts_at > now:
                return row.tenant_id, row.booking_id, row.sent_at
    if sent:
        return sent[0].tenant_id, sent[0].booking_id, sent[0].sent_at
    row = s.conn.execute(select(b.tenant_id, b.id).where(theirs, b.status == BookingStatus.ACTIVE.value,
                                                         b.starts_at > now)
                         .order_by(b.starts_at, b.id).limit(1)).first()
    return (row.tenant_id, row.id, None) if row is not None else None


def set_opted_out(s: BatchSession, keys: list[tuple[str, str]], channel: Channel, opted_out: bool, *,
                  now: datetime, via: str, keyword: str | None = None) -> int:
    """Withdraw (or restore) `channel` for these customers (R3): their active bookings are
    planned again, each with a timeline entry, and the booking system hears of it. Returns how
    many customers changed (0: as they were; a STOP repeated changes nothing)."""
    changed = 0
    for tenant_id, customer_id in keys:
        tenant, customer = s.tenant(tenant_id), s.customer(tenant_id, customer_id)
        if tenant is None or customer is None:
            continue
        now_out = customer.opted_out | {channel} if opted_out else customer.opted_out - {channel}
        if now_out == customer.opted_out:
            continue
        changed += 1
        s.put_customer(replace(customer, opted_out=frozenset(now_out)), s.phone_errors.get((tenant_id, customer_id)),
                       opted_out_given=True)
        detail: dict[str, Any] = {"channel": channel.value, "via": via}
        if keyword:
            detail["keyword"] = keyword[:40]
        _replan_many(s, tenant, s.active_bookings(tenant_id, customer_id=customer_id), now,
                     tr.Note("customer.opted_out" if opted_out else "customer.opted_in", detail))
        s.add_outbox(tenant_id, "customer.consent_changed", {
            "customer_id": customer_id, "channel": channel.value, "consent": not opted_out, "via": via,
            **({"keyword": keyword[:40]} if keyword else {}), "at": now.isoformat()}, now)
    return changed


def opted_out_at_provider(conn: Any, tenant_id: str, booking_id: str, channel: Channel, *, now: datetime,
                          regions: Any = None) -> int:
    """The provider refused a message to this booking's customer because they opted out with it
    (Twilio 21610, WhatsApp 131050): the channel is withdrawn as by their STOP (R3), in the
    caller's transaction. Returns how many customers changed."""
    s = BatchSession(conn)
    s.regions = dict(regions or {})
    s.lock([f"b:{tenant_id}:{booking_id}"])
    booking = s.booking(tenant_id, booking_id)
    if booking is None:
        return 0
    s.lock([f"c:{tenant_id}:{booking.customer_id}"])
    changed = set_opted_out(s, [(tenant_id, booking.customer_id)], channel, True, now=now, via="provider")
    s.flush(now)
    _count_not_planned(s.not_planned_written)
    return changed


def forward(s: BatchSession, tenant_id: str, booking_id: str, inbound: Inbound, intent: Intent | None,
            row_id: int, *, now: datetime, refused: str | None = None) -> None:
    """A reply that means nothing we know, or an answer the page would refuse: on the booking's
    timeline, and a `staff_reply` message to the staff webhook now (`customer.replied`), sent
    and retried like any staff notice; planning leaves it alone (it is not the plan's)."""
    detail: dict[str, Any] = {"channel": inbound.channel.value,
                              "text": (inbound.text or inbound.button_payload or "")[:TIMELINE_TEXT_MAX]}
    if intent is not None:
        detail["intent"] = intent.value
    if refused:
        detail["refused"] = refused
    s.add_timeline(tenant_id, booking_id, now, "customer.replied", detail)
    s.conn.execute(t.messages.insert().values(
        tenant_id=tenant_id, booking_id=booking_id, key=f"reply/{row_id}", kind=Kind.STAFF_REPLY.value,
        channel=Channel.STAFF.value, recipient="staff", state="planned", due_at=now, attempts=0, created_at=now,
        updated_at=now, by=f"customer ({inbound.channel.value})"))
