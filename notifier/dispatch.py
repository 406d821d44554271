"""Dispatch: a batch of message ids of one channel is claimed, rendered, sent and recorded.

Per batch, not per message: one UPDATE claims every message (`queued` to `sending` under a
lease and a new claim token, so a redelivered task or a second worker finds nothing to take:
N2), one read loads the bookings, customers, resources and plans they need, and the task's
thread renders them. Only the provider calls run concurrently, on the context's pool of sender
threads (their pooled HTTP sessions and SMTP connections live as long as the worker).

While the worker holds the claims, its process's heartbeat extends their leases
(notifier/leases.py): a slow worker keeps them. Immediately before each provider call the
claim is checked; a worker paused past its lease finds it taken and does not send. Each
outcome is recorded as soon as it is known: whatever has come back while the previous commit
ran goes into the next one (attempt rows, message states, timeline entries), and a record
applies only under the claim token that made the attempt.

A worker killed (or paused past its lease) after a provider accepted a message and before the
commit leaves that message `sending`; when its lease runs out the due sweep hands it out
again. Its next claim sees that the earlier attempt was never recorded (or ended without the
provider's answer), and before sending a second copy it looks for the first: in the
receipt its worker wrote the instant the provider answered (notifier/receipts.py), in the
provider's status reports, which name the message (`ReportsBack`: Twilio, Meta; after a lost
answer the retry waits `report_wait_s` for them), and where the provider can be asked
(`FindsSent`: Twilio's Messages list), by asking (N1, N2). Where it cannot ask, a message whose
claim ended unrecorded waits `report_wait_s` once: for the reports, and for a worker that was
only stalled past its lease to come back and write down what it sent. A copy found is
recorded, not sent again. A message
renders to the same text on every attempt (its link is the booking's, its card is stamped with
its first due time), which is what lets the provider's copy be recognised. The load records the
token of every booking a message of the batch is about, so the page answers before the message
that carries its link arrives.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import lru_cache
from queue import SimpleQueue
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError

from notifier.channels.base import (
    Attachment,
    CannotTell,
    Outgoing,
    PermanentFailure,
    SendResult,
    TemporaryFailure,
)
from notifier.domain.model import (
    CARD_KINDS,
    Booking,
    BookingStatus,
    Channel,
    Customer,
    Kind,
    MessageState,
    NotificationSettings,
    Resource,
    Tenant,
)
from notifier.domain.outbound import MESSAGE_EVENTS, message_event
from notifier.domain.planning import card_sent_in, failed_keys, plan_booking, sent_keys, staff_email, zone_of
from notifier.domain.replies import opted_out_by_error
from notifier.domain.retry import compute_backoff_s
from notifier.failover import AccountFailure, accounts_of, send_through
from notifier.inbound import opted_out_at_provider
from notifier.leases import Leases
from notifier.links import BookingLinks
from notifier.observability.logs import mask_text
from notifier.receipts import receipted_copy
from notifier.rendering.calendar import calendar_card
from notifier.rendering.environment import TemplateMissing
from notifier.services import apply_pending_statuses, replan_in, settings_for
from notifier.store import schema as t
from notifier.store.batch import BatchSession
from notifier.store.bulk import insert_rows
from notifier.store.sql import MessageRow, Store, Tx, is_outage

# emails that carry the appointment card (R22): new, confirmed, moved, cancelled
RECORD_EVERY = 256  # outcomes per recording transaction, at most (a burst that came back at once)
log = logging.getLogger("notifier.dispatch")


@dataclass
class DispatchReport:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    withdrawn: int = 0
    skipped: int = 0
    reconciled: int = 0  # found at the provider after an unrecorded attempt: recorded, not sent again
    lost: int = 0  # claims found taken by another worker (this one was paused past its lease): not sent here


class MessagesFailed(Exception):
    """A dispatch batch in which some messages failed for good: raised by the task after
    everything was recorded, so that Flower counts the task as failed (tasks/dispatch.py).
    Its text names the channel, the counts and the failed ids with the provider's code, never
    an address (N7); `counts` holds the batch's report for the metrics."""

    def __init__(self, summary: str, counts: dict[str, int] | None = None) -> None:
        super().__init__(summary)
        self.counts = counts or {}

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.counts))

    @classmethod
    def of(cls, ctx: Any, channel: str, message_ids: list[int], report: DispatchReport) -> MessagesFailed:
        c = t.messages.c
        with ctx.store.engine.connect() as conn:
            failed = conn.execute(select(c.id).where(c.id.in_(sorted(set(message_ids))),
                                                     c.state == MessageState.FAILED.value).order_by(c.id)
                                  .limit(20)).scalars().all()
        a = t.send_attempts.c
        with ctx.store.engine.connect() as conn:
            codes = dict(conn.execute(select(a.message_id, a.provider_code).where(a.message_id.in_(failed))
                                      .order_by(a.id)).all()) if failed else {}
        counts = {k: v for k, v in vars(report).items() if v}
        rest = ", ".join(f"{v} {k}" for k, v in counts.items() if k != "failed")
        shown = ", ".join(f"{i}" + (f" ({codes[i]})" if codes.get(i) else "") for i in failed)
        more = f" and {report.failed - len(failed)} more" if report.failed > len(failed) else ""
        return cls(f"{channel}: {report.failed} of {len(set(message_ids))} failed for good (message "
                   f"{shown}{more}){'; ' + rest if rest else ''}", counts)


@dataclass(frozen=True)
class Done:
    """How one claimed message ended this time; `record` writes it."""

    message: MessageRow
    state: MessageState  # sent, failed, withdrawn, or planned again (a retry)
    at: datetime
    error: str | None = None
    outcome: str | None = None  # the attempt row's outcome; None: no provider call was made
    code: str | None = None
    duration_ms: int = 0
    provider_message_id: str | None = None
    provider: str | None = None  # who issued provider_message_id: its callbacks may move the message
    template: str | None = None
    retry_at: datetime | None = None
    fallback: bool = False  # a permanent failure on a channel with a fallback: replan the booking
    account: str | None = None  # the provider account the call went to (notifier/failover.py)
    passed: tuple[str, ...] = ()  # accounts passed over on the way: down, refused, or a 5xx

    @property
    def report_key(self) -> str:
        if self.outcome == "reconciled":
            return "reconciled"
        return {MessageState.SENT: "sent", MessageState.FAILED: "failed", MessageState.WITHDRAWN: "withdrawn",
                MessageState.PLANNED: "retried"}[self.state]


@dataclass(frozen=True)
class Lost:
    """A claim found taken by another worker before the provider call: nothing was sent."""

    message: MessageRow


@dataclass(frozen=True)
class Ready:
    """A rendered message waiting for its provider call."""

    message: MessageRow
    outgoing: Outgoing
    template: str
    in_doubt: bool  # an earlier attempt may have reached the provider unrecorded: look for its copy first
    fallback: bool
    # an earlier claim ended unrecorded (its worker killed or paused) and the message has not yet
    # waited for the provider's reports, or the stalled worker's receipt, of what that claim sent
    awaits_reports: bool = False
    doubt_at: frozenset[str] | None = None  # the accounts that may hold a copy (None: any of them)


@dataclass
class _Loaded:
    """What the batch's messages need, read in one transaction."""

    session: BatchSession
    bundle_versions: dict[str, str | None] = field(default_factory=dict)
    in_doubt: dict[int, Doubt] = field(default_factory=dict)
    planned: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    settings: dict[tuple[str, str], NotificationSettings] = field(default_factory=dict)

    def settings_for(self, tenant: Tenant, resource: Resource, regions: Any) -> NotificationSettings:
        """The resource's merged settings, once per resource and batch."""
        key = (tenant.id, resource.id)
        if key not in self.settings:
            self.settings[key] = settings_for(tenant, resource, regions)
        return self.settings[key]


def dispatch_batch(ctx: Any, message_ids: list[int]) -> DispatchReport:
    """Send a batch of one channel's messages, each at most once (N2), none lost (N1)."""
    store: Store = ctx.store
    now = ctx.clock.now()
    claimed = store.claim_batch_for_send(message_ids, now, lease_s=ctx.settings.lease_s)
    report = DispatchReport(skipped=len(set(message_ids)) - len(claimed))
    if not claimed:
        return report
    leases = ctx.leases()
    leases.hold(claimed, now + timedelta(seconds=ctx.settings.lease_s))  # from here on, kept alive
    # outcomes are recorded on a thread of their own while this one renders the rest: an answer
    # never waits for the batch's rendering (on a starved machine, seconds) to be committed
    recorder = _Recorder(store, leases, ctx.unavailable)
    submitted = 0
    try:
        loads, unreadable = _load_contained(store, claimed, ctx.unavailable, ctx.links, now)
        pool = ctx.sender_pool()
        for message in claimed:  # each message leaves as soon as it is rendered
            try:
                if message.id in unreadable:
                    step = _failed(message, now, unreadable[message.id])
                else:
                    step = prepare(ctx, loads[message.id], message, now)
            except Exception as exc:  # noqa: BLE001 - one message's trouble (a bundle that would not load) is its own
                step = _retry(ctx, message, now, f"could not prepare: {exc.__class__.__name__}: {exc}", None)
            if isinstance(step, Ready):
                pool.submit(transmit, ctx, step).add_done_callback(recorder.put)
            else:  # ended before any provider call: withdrawn, failed checks
                recorder.put(step)
            submitted += 1
    finally:
        recorder.finish(submitted)  # what was handed over is recorded, whatever stopped this loop
        leases.release(claimed)
    for key, count in recorder.counts.items():
        setattr(report, key, getattr(report, key) + count)
    return report


def send_one(ctx: Any, message_id: int) -> str:
    """One message the same way (the one-task-per-message baseline of `bench dispatch`)."""
    report = dispatch_batch(ctx, [message_id])
    return next((k for k, v in vars(report).items() if v), "skipped")


# --- load --------------------------------------------------------------------------------------

def _load(store: Store, claimed: list[MessageRow], regions: Any, links: BookingLinks | None = None,
          now: datetime | None = None) -> _Loaded:
    bookings = {(m.tenant_id, m.booking_id) for m in claimed}
    tenants = {m.tenant_id for m in claimed}
    with store.engine.begin() as conn:
        if links is not None and now is not None:  # the page behind the link the messages carry
            Tx(conn).save_links(((links.token(tid, bid), tid, bid) for tid, bid in bookings), now)
        session = BatchSession(conn, lock_bookings=False)
        session.regions = regions
        session.preload(tenants, bookings, (), ())
        found = [b for b in (session.bookings[k] for k in sorted(bookings)) if b is not None]
        session.preload((), (), {(b.tenant_id, b.customer_id) for b in found},
                        {(b.tenant_id, b.resource_id) for b in found})
        tx = Tx(conn)
        loaded = _Loaded(session, bundle_versions={tid: tx.active_bundle_version(tid) for tid in sorted(tenants)})
        loaded.in_doubt = _in_doubt(conn, [m for m in claimed if m.attempts > 1])
    return loaded


def _load_contained(store: Store, claimed: list[MessageRow], regions: Any, links: BookingLinks | None,
                    now: datetime) -> tuple[dict[int, _Loaded], dict[int, str]]:
    """`_load` for the whole batch; should it fail for anything but an outage (a stored row this
    version cannot read: a status, a channel or a kind it does not know), the batch's bookings are
    loaded in halves, down to the booking at fault, whose messages fail with the reason while the
    others go out (N3). Returns what each message was loaded with, and the messages that could not be."""
    loads: dict[int, _Loaded] = {}
    unreadable: dict[int, str] = {}

    def load(part: list[MessageRow]) -> None:
        try:
            loaded = _load(store, part, regions, links, now)
        except Exception as exc:  # noqa: BLE001 - an outage propagates; anything else is some booking's data
            if is_outage(exc):
                raise
            bookings = sorted({(m.tenant_id, m.booking_id) for m in part})
            if len(bookings) > 1:
                first = set(bookings[:len(bookings) // 2])
                load([m for m in part if (m.tenant_id, m.booking_id) in first])
                load([m for m in part if (m.tenant_id, m.booking_id) not in first])
                return
            from notifier.observability.metrics import metrics

            log.warning("booking %s/%s could not be read for dispatch: %s", *bookings[0], exc.__class__.__name__,
                        exc_info=exc)
            metrics().parked.labels("dispatch").inc(len(part))
            for m in part:
                unreadable[m.id] = f"its booking's data could not be read: {exc.__class__.__name__}: {exc}"[:500]
            return
        loads.update((m.id, loaded) for m in part)

    load(claimed)
    return loads, unreadable


ANSWER_UNKNOWN = {"timeout", "connection", "unexpected"}  # attempt codes after which the provider may have the message
AWAITING_REPORTS = "awaiting_reports"  # the code of an attempt that only waited for the provider's reports


@dataclass(frozen=True)
class Doubt:
    unrecorded: bool  # a claim ended without a record (its worker killed, or paused past its lease)
    waited: bool  # the message already waited once for the provider's reports
    accounts: frozenset[str] | None = None  # where a copy may be; None: any account (which one is unknown)


def _in_doubt(conn: Any, again: list[MessageRow]) -> dict[int, Doubt]:
    """Messages claimed before whose provider may hold a copy: a claim ended unrecorded (a
    worker died), or an attempt ended without the provider's answer (a timeout, a connection
    lost after the request went out). Any such attempt, not only the last: a lookup that was
    itself refused (429) settles nothing, and the attempt after it must ask again."""
    if not again:
        return {}
    a = t.send_attempts.c
    recorded: dict[int, list[tuple[str | None, str | None]]] = defaultdict(list)
    for message_id, code, account in conn.execute(select(a.message_id, a.provider_code, a.account)
                                                  .where(a.message_id.in_([m.id for m in again])).order_by(a.id)):
        recorded[message_id].append((code, account))
    doubts = {}
    for m in again:
        codes = [code for code, _ in recorded[m.id]]
        unrecorded = len(codes) < m.attempts - 1
        at = [account for code, account in recorded[m.id] if code in ANSWER_UNKNOWN]
        if unrecorded or at:
            accounts = None if unrecorded or None in at else frozenset(at)  # an unrecorded call's account is unknown
            doubts[m.id] = Doubt(unrecorded=unrecorded, waited=AWAITING_REPORTS in codes, accounts=accounts)
    return doubts


def _planned_keys(loaded: _Loaded, booking: Booking, customer: Customer, resource: Resource, tenant: Tenant,
                  settings: NotificationSettings, now: datetime) -> frozenset[str]:
    """The booking's plan as of now, once per booking and batch."""
    key = (booking.tenant_id, booking.id)
    if key not in loaded.planned:
        existing = loaded.session.existing_messages(booking.tenant_id, booking.id)
        loaded.planned[key] = frozenset(m.key for m in plan_booking(
            booking, customer, resource, tenant, settings, now=now, sent=sent_keys(existing),
            failed=failed_keys(existing), card_sent=card_sent_in(existing)).messages)
    return loaded.planned[key]


# --- prepare -----------------------------------------------------------------------------------

def why_not_send(message: MessageRow, booking: Booking, customer: Customer, tenant: Tenant,
                 settings: NotificationSettings, planned: frozenset[str], now: datetime) -> str | None:
    """Checked again at send time (R3): consent, channel, and the message still in the booking's plan."""
    if message.recipient == "customer":
        if message.channel not in customer.consents:
            return f"no consent for {message.channel.value}"
        if message.channel in customer.opted_out:
            return f"the customer opted out of {message.channel.value}"
        if message.channel is not Channel.EMAIL and message.channel not in tenant.channels:
            return f"{message.channel.value} switched off for the tenant"
        if message.channel in settings.unavailable:
            return f"{message.channel.value} not offered in {tenant.home_region}"
        if message.channel in settings.without_provider:
            return f"no provider configured for {message.channel.value}"
    if message.key in planned or message.manual:  # an operator's resend goes as they asked, with consent (R3)
        return None
    if booking.status is BookingStatus.CANCELLED:
        return "booking cancelled"
    if booking.confirmed_at is not None and message.kind in (Kind.CONFIRMATION, Kind.ACTIVITY_UNCONFIRMED):
        return "customer confirmed"
    if booking.visit_outcome is not None:
        return f"visit marked {booking.visit_outcome}"
    if now >= booking.starts_at:
        return "visit already started"
    return "no longer applies"


def _address(message: MessageRow, customer: Customer, tenant: Tenant, settings: Any,
             plan_settings: NotificationSettings) -> str | None:
    """Where the message goes. A staff message never goes to the customer: by email to the
    resource's, tenant's or company's address (`staff_email`), else to the operator's webhook."""
    if message.recipient == "staff":
        if message.channel is Channel.EMAIL:
            return _one_address(staff_email(tenant, plan_settings) or "") or None
        return tenant.webhook_url or settings.staff_webhook_url or None  # staff, activity: the operator's URLs
    if message.channel is Channel.EMAIL:
        return customer.email
    if message.channel in (Channel.SMS, Channel.WHATSAPP):
        return customer.phone
    return None


def sender_identity(tenant: Tenant, channel: Channel, settings: Any) -> dict[str, str]:
    """Who the message comes from, as `Outgoing` fields: the tenant's own sender (its tenant
    file's `sender`), else the settings'. An email without a `mail_from` of the tenant's comes
    from the settings' address under the company's name; its Reply-To is the tenant's
    `reply_to`, else the company's `email` detail (when it is one address), else the settings'.
    An SMS comes from the tenant's number, sender id or messaging service, else the settings'."""
    own = tenant.sender
    if channel is Channel.EMAIL:
        reply_to = own.get("reply_to") or _one_address(str(tenant.company.get("email") or "")) or settings.reply_to
        return {"sender": own.get("mail_from") or _named_sender(str(tenant.company.get("name") or tenant.name),
                                                                settings.mail_from),
                "reply_to": reply_to}
    if channel is Channel.SMS:
        return {"sender": own.get("sms_from", ""), "messaging_service": own.get("sms_messaging_service", "")}
    return {}


def content_sid_of(tenant: Tenant, settings: Any, template: str | None, language: str | None) -> str:
    """Twilio's Content SID of an approved WhatsApp template in a language: the tenant's own
    (`sender.whatsapp_content`), else the settings' (`twilio_content`); "" when neither maps it
    (the Twilio adapter then fails the message, naming the template)."""
    if not template or not language:
        return ""
    for table in (tenant.sender.get("whatsapp_content") or {}, settings.twilio_content):
        sid = (table.get(template) or {}).get(language)
        if sid:
            return str(sid)
    return ""


@lru_cache(maxsize=1024)
def _one_address(value: str) -> str:
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(value, check_deliverability=False).normalized if value else ""
    except EmailNotValidError:
        return ""


@lru_cache(maxsize=1024)
def _named_sender(name: str, mail_from: str) -> str:
    """The settings' address under the company's name ("Salon Lindenblatt <notifier@host>")."""
    from email.headerregistry import Address
    from email.utils import parseaddr

    address = parseaddr(mail_from)[1]
    if not name.strip() or "@" not in address or any(ch in name for ch in "\r\n"):
        return mail_from
    try:
        return str(Address(display_name=name.strip(), addr_spec=address))
    except (ValueError, IndexError):
        return mail_from


def template_context(tenant: Tenant, resource: Resource, customer: Customer, booking: Booking,
                     links: BookingLinks | None = None, reply: dict[str, str] | None = None) -> dict[str, Any]:
    """The allow-listed data templates may use (plain dicts and values, no live objects).
    `links.page` is the booking's one link; `confirm` and `cancel` name the same page, for
    bundles written when each action had a link of its own."""
    url = links.url(tenant.id, booking.id) if links else ""
    urls = {"page": url, "confirm": url, "cancel": url} if url else {}
    return {
        "customer": {"name": customer.name, "first_name": customer.name.split(" ")[0], "language": customer.language},
        "company": dict(tenant.company),
        "booking": {"id": booking.id, "starts_at": booking.starts_at, "ends_at": booking.ends_at,
                    "service": booking.service or "", "duration_min": int((booking.ends_at - booking.starts_at)
                                                                           .total_seconds() // 60),
                    "cancel_reason": booking.cancel_reason or "", "cancelled_by": booking.cancelled_by or "",
                    "status": (booking.workflow_status or {}).get("name", "")},
        "resource": {"name": resource.name, "type": resource.type},
        "links": urls,
        "reply": reply or {"text": "", "channel": ""},  # staff_reply (R1): the customer's message
    }


def prepare(ctx: Any, loaded: _Loaded, message: MessageRow, now: datetime) -> Ready | Done:
    """Everything before the provider call: checks, address, rendering, the card."""
    settings, s = ctx.settings, loaded.session
    tenant = s.tenants.get(message.tenant_id)
    booking = s.bookings.get((message.tenant_id, message.booking_id))
    customer = s.customers.get((message.tenant_id, booking.customer_id)) if booking else None
    resource = s.resources.get((message.tenant_id, booking.resource_id)) if booking else None
    if tenant is None or booking is None or customer is None or resource is None:
        return _failed(message, now, "booking data missing")
    plan_settings = loaded.settings_for(tenant, resource, loaded.session.regions)  # the batch's, read once
    planned = _planned_keys(loaded, booking, customer, resource, tenant, plan_settings, now)
    reason = why_not_send(message, booking, customer, tenant, plan_settings, planned, now)
    if reason:
        return Done(message, MessageState.WITHDRAWN, now, error=reason)
    address = _address(message, customer, tenant, settings, plan_settings)
    if not address:
        what = f"{message.channel.value} address" if message.recipient == "customer" else \
            "staff email address" if message.channel is Channel.EMAIL else "webhook URL configured"
        return _failed(message, now, f"no {what}")
    if message.channel not in ctx.channels:
        return _failed(message, now, f"no adapter for {message.channel.value}")
    language = tenant.language if message.recipient == "staff" else customer.language
    languages = tuple(dict.fromkeys((language, tenant.language, settings.default_language, "en")))
    renderer = ctx.renderer_for(tenant.id, loaded.bundle_versions.get(tenant.id))
    reply = _reply_of(ctx.store, message) if message.kind == Kind.STAFF_REPLY else None
    try:
        rendered = renderer.render(
            message.kind, message.channel.value, resource.type, languages,
            template_context(tenant, resource, customer, booking, ctx.links,
                             reply=reply and {"text": reply["text"], "channel": reply["channel"]}),
            timezone=str(zone_of(tenant, resource)), locale=language, resource_id=resource.id,
        )
    except TemplateMissing as exc:
        return _failed(message, now, f"template: {exc}")
    except Exception as exc:  # noqa: BLE001 - a broken template fails its message, nothing else (N3)
        return _failed(message, now, f"template error: {exc.__class__.__name__}: {exc}")
    attachments: tuple[Attachment, ...] = ()
    if message.channel is Channel.EMAIL and message.kind in CARD_KINDS and booking.send_card is not False:  # R22
        ics, method = calendar_card(booking, resource, tenant, customer, zone=zone_of(tenant, resource),
                                    organizer=sender_identity(tenant, Channel.EMAIL, settings)["sender"],
                                    stamp=_stamp(message))
        attachments = (Attachment("termin.ics" if language == "de" else "appointment.ics",
                                  f"text/calendar; method={method}", ics),)
    outgoing = Outgoing(message_id=message.id, idempotency_key=f"{message.tenant_id}/{message.booking_id}/"
                        f"{message.key}", to=address, text=rendered.text, subject=rendered.subject,
                        html=rendered.html, attachments=attachments, template=rendered.provider_template,
                        template_language=rendered.provider_language, params=rendered.params,
                        content_sid=content_sid_of(tenant, settings, rendered.provider_template,
                                                   rendered.provider_language),
                        buttons=rendered.buttons,
                        status_callback=f"{settings.public_url.rstrip('/')}/callbacks/twilio"
                        if message.channel in (Channel.SMS, Channel.WHATSAPP) else None,
                        **(sender_identity(tenant, message.channel, settings)
                           if message.recipient == "customer" or message.channel is Channel.EMAIL else {}),
                        metadata={
                            "tenant_id": message.tenant_id, "booking_id": message.booking_id, "kind": message.kind,
                            "resource_id": booking.resource_id, "starts_at": booking.starts_at.isoformat(),
                            **({"type": "customer.replied", "reply": reply} if reply is not None else {})})
    doubt = loaded.in_doubt.get(message.id)
    fallback = message.recipient == "customer" and bool(plan_settings.fallback.get(message.channel))
    return Ready(message, outgoing, f"{renderer.version}:{rendered.template}", doubt is not None, fallback,
                 awaits_reports=doubt is not None and doubt.unrecorded and not doubt.waited
                 and message.attempts < settings.max_attempts, doubt_at=doubt.accounts if doubt else None)


def _reply_of(store: Store, message: MessageRow) -> dict[str, Any]:
    """The customer's message a staff_reply forwards (R1; its key is `reply/<inbound message id>`),
    as the staff webhook's `reply` says it; its text is empty once retention has deleted it."""
    i = t.inbound_messages.c
    number = message.key.rsplit("/", 1)[-1]
    row = None
    if number.isdigit():  # a read of its own: the batch's load is over, and such messages are rare
        with store.transaction() as tx:
            row = tx.conn.execute(select(i.text, i.channel, i.intent, i.outcome, i.received_at)
                                  .where(i.id == int(number))).first()
    if row is None:
        return {"text": "", "channel": "", "received_at": None}
    out = {"text": row.text or "", "channel": row.channel, "received_at": row.received_at.isoformat()}
    if row.intent:
        out["intent"] = row.intent
    if row.outcome not in ("forwarded", "received"):
        out["refused"] = row.outcome  # an answer the page would have refused, and why
    return out


def _stamp(message: MessageRow) -> datetime:
    """The moment a message's card is stamped with (DTSTAMP): its due time when it was first
    claimed, which a retry does not move, so every attempt renders the same text (the provider
    lookup compares texts); the provider cannot have it from before then either."""
    return message.stamped_at or message.due_at


def _failed(message: MessageRow, now: datetime, reason: str) -> Done:
    return Done(message, MessageState.FAILED, now, error=reason, outcome="permanent")


# --- send --------------------------------------------------------------------------------------

class _Recorder:
    """Records a batch's outcomes as soon as they are known, on a thread of its own: whatever has
    come back while the previous commit ran goes into the next one (a group commit, at most
    RECORD_EVERY). `counts` holds each message's report key: what happened, or `lost` where the
    claim had passed to another worker before the call or before the record."""

    def __init__(self, store: Store, leases: Leases, regions: Any) -> None:
        self.store, self.leases, self.regions = store, leases, regions
        self.counts: Counter[str] = Counter()
        self._queue: SimpleQueue[Any] = SimpleQueue()  # outcomes, futures of outcomes, and the end
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="record", daemon=True)
        self._thread.start()

    def put(self, outcome: Done | Lost | Future[Done | Lost]) -> None:
        self._queue.put(outcome)

    def finish(self, handed_over: int) -> None:
        """Wait until the `handed_over` outcomes are recorded; raise what stopped the recording."""
        self._queue.put(_End(handed_over))
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        expected, seen = None, 0
        try:
            while expected is None or seen < expected:
                items = [self._queue.get()]
                while not self._queue.empty():
                    items.append(self._queue.get())
                ready: list[Done | Lost] = []
                for item in items:
                    if isinstance(item, _End):
                        expected = item.count
                    else:
                        ready.append(item.result() if isinstance(item, Future) else item)
                seen += len(ready)
                for start in range(0, len(ready), RECORD_EVERY):
                    self._record(ready[start:start + RECORD_EVERY])
        except BaseException as exc:  # noqa: BLE001 - handed to the task's thread by finish()
            self._error = exc

    def _record(self, chunk: list[Done | Lost]) -> None:
        outcomes = [d for d in chunk if isinstance(d, Done)]
        applied = _record_patiently(self.store, self.leases, outcomes, self.regions) if outcomes else set()
        for item in chunk:
            if isinstance(item, Done) and item.message.id in applied:
                self.counts[item.report_key] += 1
            else:
                _lost_claim(item)
                self.counts["lost"] += 1
        self.leases.release(item.message for item in chunk)


@dataclass(frozen=True)
class _End:
    count: int  # outcomes handed to the recorder in all


def _lost_claim(item: Done | Lost) -> None:
    if isinstance(item, Done) and item.outcome in ("sent", "reconciled"):
        # the provider has it, and so may the worker that took the claim over: a pause (or an
        # outage) longer than the lease, right after the call; the one way left to send twice
        log.warning("message %s was sent under claim %s after that claim had passed to another worker "
                    "(this worker was paused or cut off longer than the lease); not recorded here",
                    item.message.id, item.message.claim_token)
    else:
        log.info("message %s: claim %s passed to another worker; left to it", item.message.id,
                 item.message.claim_token)


def _record_patiently(store: Store, leases: Leases, outcomes: list[Done], regions: Any) -> set[int]:
    """`record`, waiting out a database that is away while the claims may still hold: the
    sends already made are recorded rather than left for the sweep to hand out again. Gives up
    (the messages are then in doubt, and asked about when claimed again) once no claim of
    these outcomes is kept alive any more, or after ten leases."""
    delay_s = 0.2
    give_up = time.monotonic() + 10 * leases.lease.total_seconds()
    while True:
        try:
            return record(store, outcomes, regions=regions)
        except DBAPIError:
            if time.monotonic() + delay_s > give_up or not any(leases.holds(d.message) for d in outcomes):
                raise
            time.sleep(delay_s)  # backoff before the next try, not synchronisation
            delay_s = min(delay_s * 2, 2.0)


def transmit(ctx: Any, item: Ready) -> Done | Lost:
    """The provider call for one message (on a sender thread), as a `Done`; `Lost` where the
    claim turned out to be another worker's by the time of the call. A channel with several
    provider accounts sends through the first that is up (notifier/failover.py); a message in
    doubt is first looked for where an earlier attempt may have left it."""
    message = item.message
    adapter = ctx.channels[message.channel]
    leases = ctx.leases()
    started = time.monotonic()
    try:
        dropping, first = _drops_repeats(adapter, item.doubt_at) if item.in_doubt else (False, ())
        if item.in_doubt:  # the provider may have it: its answer written down, its reports, or asked
            reports_back = getattr(adapter, "reports_back", False)
            receipt = receipted_copy(ctx.store, message)
            found, account, asked = (receipt.result, receipt.account, False) if receipt else (None, None, False)
            if found is None and reports_back:
                found = _reported_copy(ctx.store, adapter, message)
            if found is None:
                found, account, asked = _ask_accounts(ctx, item, adapter)
            if found is not None:
                return Done(message, MessageState.SENT, ctx.clock.now(), outcome="reconciled",
                            code=found.provider_code, duration_ms=_ms(started),
                            provider_message_id=found.provider_message_id,
                            provider=receipt.provider if receipt else adapter.provider,
                            template=item.template, account=account)
            if not asked and item.awaits_reports and not dropping:
                # the earlier claim's copy, if the provider took it, is reported in a while (Twilio,
                # Meta), and a worker that was only stalled past its lease (a paused VM) writes down the
                # answers it got once it runs again: wait for either once rather than send a copy now
                now = ctx.clock.now()
                return Done(message, MessageState.PLANNED, now, outcome="temporary", code=AWAITING_REPORTS,
                            error="an earlier attempt may have reached the provider: waiting for its reports "
                            "or receipt",
                            duration_ms=_ms(started), retry_at=now + timedelta(seconds=ctx.settings.report_wait_s))
        carried = send_through(adapter, item.outgoing, usable=lambda: leases.usable(message), first=first)
    except AccountFailure as failure:
        return _failure(ctx, item, adapter, failure.failure, started, failure.account, tuple(failure.passed))
    except Exception as exc:  # noqa: BLE001 - a lookup's own trouble (the store) is this message's, not the batch's
        return _failure(ctx, item, adapter, exc, started, None, ())
    if carried is None:
        return Lost(message)
    result, via = carried
    now = ctx.clock.now()
    # written down at once, before the outcome's full record: a worker that dies before that
    # commit leaves this, and the message's next claim finds the copy by it
    ctx.receipts().keep(message.id, message.claim_token, adapter.provider, via.account, result, now)
    return Done(message, MessageState.SENT, now, outcome="sent", code=result.provider_code,
                duration_ms=_ms(started), provider_message_id=result.provider_message_id, provider=adapter.provider,
                template=item.template, account=via.account, passed=tuple(via.passed))


def _drops_repeats(adapter: Any, doubt_at: frozenset[str] | None) -> tuple[bool, tuple[str, ...]]:
    """Of the accounts that may hold an in-doubt message's copy, those that drop a repeated
    message (an SMTP relay with an idempotency header: `dedupes`), and whether that is every one
    of them: then a copy sent again reaches the relay only, and the message need not wait for a
    stalled worker's receipt. The resend goes to those accounts first."""
    candidates = [a for a in accounts_of(adapter) if doubt_at is None or a.name in doubt_at]
    dropping = tuple(a.name for a in candidates if getattr(a.adapter, "dedupes", False))
    return bool(candidates) and len(dropping) == len(candidates), dropping


def _ask_accounts(ctx: Any, item: Ready, adapter: Any) -> tuple[SendResult | None, str | None, bool]:
    """The copy of an in-doubt message that an account where it may be holds and no message of
    ours has recorded, that account, and whether any account could be asked. An account that
    cannot be asked now (down) ends the attempt (`AccountFailure`): the message waits for it
    rather than going out through another account (docs/reliability.md)."""
    asked = False
    for account in accounts_of(adapter):
        if item.doubt_at is not None and account.name not in item.doubt_at:
            continue
        if not hasattr(account.adapter, "find_sent"):
            continue  # cannot tell: at least once, the bound docs/reliability.md describes
        try:
            copies = account.adapter.find_sent(item.outgoing, since=_stamp(item.message))
        except CannotTell:
            continue
        except Exception as exc:
            raise AccountFailure(exc, account.name, []) from exc
        asked = True
        found = _unrecorded_copy(ctx.store, account.adapter, copies)
        if found is not None:
            return found, account.name, asked
    return None, None, asked


def _failure(ctx: Any, item: Ready, adapter: Any, exc: BaseException, started: float, account: str | None,
             passed: tuple[str, ...]) -> Done:
    """How a provider call (or lookup) that failed ends: a retry, a failure, or in doubt."""
    message = item.message
    if isinstance(exc, TemporaryFailure):
        done = _retry(ctx, message, ctx.clock.now(), exc.reason, exc.code,
                      retry_after_s=_report_wait(ctx, adapter, exc.code, exc.retry_after_s), duration_ms=_ms(started))
    elif isinstance(exc, PermanentFailure):
        done = Done(message, MessageState.FAILED, ctx.clock.now(), error=exc.reason, outcome="permanent",
                    code=exc.code, duration_ms=_ms(started), fallback=item.fallback)
    else:  # an adapter's bug must not sink the rest of the batch
        # the request may have gone out before it broke: "unexpected" puts the message in doubt
        log.error("%s adapter failed unexpectedly on message %s", message.channel.value, message.id, exc_info=exc)
        done = _retry(ctx, message, ctx.clock.now(), f"unexpected {exc.__class__.__name__}: {exc}", "unexpected",
                      retry_after_s=_report_wait(ctx, adapter, "unexpected", None), duration_ms=_ms(started))
    return replace(done, account=account, passed=passed)


def _report_wait(ctx: Any, adapter: Any, code: str | None, retry_after_s: float | None) -> float | None:
    """The least wait before the next attempt: after an answer that never came, a provider whose
    reports name the message gets `report_wait_s` to report the copy it may have taken."""
    if code in ANSWER_UNKNOWN and getattr(adapter, "reports_back", False):
        return max(retry_after_s or 0.0, ctx.settings.report_wait_s)
    return retry_after_s


def _reported_copy(store: Store, adapter: Any, message: MessageRow) -> SendResult | None:
    """The copy the provider's status reports say it has of this message (they name it: `ReportsBack`)
    and that no message of ours has recorded: found after its answer was lost, recorded, not sent again."""
    p, c = t.pending_statuses.c, t.messages.c
    with store.engine.connect() as conn:
        reports = conn.execute(select(p.provider_message_id, p.status).where(
            p.message_id == message.id, p.provider == adapter.provider).order_by(p.id)).all()
        if not reports:
            return None
        recorded = set(conn.execute(select(c.provider_message_id).where(
            c.provider == adapter.provider, c.provider_message_id.in_([r.provider_message_id for r in reports])))
            .scalars())
    found = next((r for r in reports if r.provider_message_id not in recorded), None)
    return SendResult(provider_message_id=found.provider_message_id, provider_code=found.status) if found else None


_copies_lock = threading.Lock()
_copies_taken: WeakKeyDictionary[Any, set[str]] = WeakKeyDictionary()  # per adapter: copies matched here


def _unrecorded_copy(store: Store, adapter: Any, copies: list[SendResult]) -> SendResult | None:
    """The provider's copy that no message of ours has recorded yet (nor matched in this
    process, about to be recorded): two of our messages to one recipient may read the same,
    and each must find its own copy or be sent."""
    if not copies:
        return None
    c = t.messages.c
    with _copies_lock:
        with store.engine.connect() as conn:
            recorded = set(conn.execute(select(c.provider_message_id).where(
                c.provider_message_id.in_([x.provider_message_id for x in copies]))).scalars())
        taken = _copies_taken.setdefault(adapter, set())
        found = next((x for x in copies if x.provider_message_id not in recorded | taken), None)
        if found is not None:
            taken.add(found.provider_message_id)
        return found


def _retry(ctx: Any, message: MessageRow, now: datetime, reason: str, code: str | None, *,
           retry_after_s: float | None = None, duration_ms: int = 0) -> Done:
    """Another attempt later (backoff with jitter, Retry-After honoured), or failed for good
    once the attempts are used up."""
    settings = ctx.settings
    if message.attempts >= settings.max_attempts:
        return Done(message, MessageState.FAILED, now, error=f"gave up after {message.attempts} attempts: {reason}",
                    outcome="temporary", code=code, duration_ms=duration_ms)
    wait_s = compute_backoff_s(attempt=message.attempts, base_s=settings.retry_base_s, max_s=settings.retry_max_s,
                               jitter=random.random(), retry_after_s=retry_after_s)
    return Done(message, MessageState.PLANNED, now, error=reason, outcome="temporary", code=code,
                duration_ms=duration_ms, retry_at=now + timedelta(seconds=wait_s))


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


# --- record ------------------------------------------------------------------------------------

def record(store: Store, outcomes: list[Done], *, regions: Any = None) -> set[int]:
    """`record_outcomes`, then each permanent failure it recorded in the log, at WARNING: the
    message's id, channel, kind and reason, with personal data masked (an SMTP refusal may
    quote the address)."""
    applied = record_outcomes(store, outcomes, regions=regions)
    for d in outcomes:
        if d.state is MessageState.FAILED and d.message.id in applied:
            log.warning("message %s (%s, %s) failed for good: %s", d.message.id, d.message.channel.value,
                        d.message.kind, mask_text(_clean(d.error) or "no reason given"),
                        extra={"message_id": d.message.id, "channel": d.message.channel.value,
                               "code": d.code, "outcome": d.outcome})
    return applied


def record_outcomes(store: Store, outcomes: list[Done], *, regions: Any = None) -> set[int]:
    """Attempt rows, message states and timeline entries of many messages, in one transaction,
    with the fallback of each permanent failure planned in the same commit (the planner plans
    it from the failed key) and the provider's status reports that came before the record.
    Fenced: a message moves only out of `sending` and only under the claim token that made the
    attempt, and only those that moved get their rows, so a late or repeated record, or one
    whose claim passed to another worker, changes nothing. Returns the ids that moved.

    One message's record that the database refuses (anything but a lost connection) does not
    hold up the others': the chunk is recorded again one message per savepoint, and a message
    whose record still fails is recorded without the provider's details, the reason in their
    place (N3, issue 15)."""
    try:  # the whole chunk at once, with no savepoint to pay for (two round trips) while nothing fails
        with store.transaction() as tx:
            _commit_without_flush(tx)
            return _record_in(tx.conn, outcomes, regions)
    except Exception as exc:  # noqa: BLE001 - sorted out below (the chunk's transaction rolled back): an outage propagates
        if is_outage(exc):
            raise
        log.warning("recording %d outcomes one by one: %s", len(outcomes), exc.__class__.__name__)
    with store.transaction() as tx:
        _commit_without_flush(tx)
        applied: set[int] = set()
        for done in outcomes:
            try:
                with tx.conn.begin_nested():
                    applied |= _record_in(tx.conn, [done], regions)
            except Exception as own:  # noqa: BLE001 - this message's own trouble
                if is_outage(own):
                    raise
                from notifier.observability.metrics import metrics

                metrics().parked.labels("dispatch").inc()
                try:
                    with tx.conn.begin_nested():
                        applied |= _record_in(tx.conn, [replace(
                            done, provider_message_id=None, template=None, code=None, fallback=False,
                            error=f"recorded without the provider's details: {own.__class__.__name__}")], regions)
                    log.exception("message %s recorded without the provider's details", done.message.id)
                except Exception as bare:  # noqa: BLE001 - not even that: left to its lease, the rest recorded
                    if is_outage(bare):
                        raise
                    log.exception("message %s could not be recorded; its claim is left to lapse (the due sweep "
                                  "hands it out again, in doubt, and sets it aside after max_claims)",
                                  done.message.id)
        return applied


def _commit_without_flush(tx: Tx) -> None:
    """The commit returns without waiting for the disk flush (PostgreSQL makes it within
    wal_writer_delay, 200 ms): a worker killed after its provider's answer loses the outcome
    for a tenth of the time it did while waiting for the flush. Only a database crash in that
    instant can drop such a record, and then the message is in doubt and its copy looked for,
    as after a kill; nothing else is weakened (docs/reliability.md)."""
    if tx.dialect == "postgresql":
        tx.conn.exec_driver_sql("SET LOCAL synchronous_commit = off")


def _record_in(conn: Any, outcomes: list[Done], regions: Any) -> set[int]:
    states = [(d.message.id, d.message.claim_token, d.state.value, _clean(d.error), d.at,
               d.at if d.state is MessageState.SENT else None, d.provider_message_id, d.template, d.retry_at,
               d.provider) for d in outcomes]
    applied = _set_states(conn, states)
    moved = [d for d in outcomes if d.message.id in applied]
    _insert(conn, t.send_attempts, ATTEMPT_COLUMNS,
            [(d.message.id, d.at, d.duration_ms, d.outcome, _clean(d.code), _clean(d.error), d.account)
             for d in moved if d.outcome is not None])
    _insert(conn, t.timeline, TIMELINE_COLUMNS, [_timeline_entry(d) for d in moved], keys=["dedup_key"])
    apply_pending_statuses(conn, [(d.provider, d.provider_message_id) for d in moved
                                  if d.state is MessageState.SENT and d.provider_message_id], outcomes[0].at)
    # the booking system hears of each outcome, once: only the records that moved the message (fenced)
    Tx(conn).add_message_events((_message_event(d) for d in moved if d.state in MESSAGE_EVENTS), outcomes[0].at)
    created = [_activity_created(d) for d in moved
               if d.message.channel is Channel.ACTIVITY and d.state is MessageState.SENT]
    if created:  # the booking system's planner learns of the task it was given (outbox, published by the sweep)
        conn.execute(t.outbox.insert(), created)
    for d in moved:
        if d.state is MessageState.FAILED and d.message.recipient == "customer" and opted_out_by_error(d.error):
            # the provider says the customer opted out with it (R3): as their STOP, the channel goes
            opted_out_at_provider(conn, d.message.tenant_id, d.message.booking_id, d.message.channel, now=d.at,
                                  regions=regions)
        elif d.fallback:
            replan_in(conn, d.message.tenant_id, d.message.booking_id, now=d.at, regions=regions)
    return applied


FEW = 8  # rows one INSERT writes sooner than a COPY (one round trip instead of three)


def _insert(conn: Any, table: Any, columns: list[str], rows: list[tuple[Any, ...]],
            keys: list[str] | None = None) -> None:
    """Rows of a record, skipping those that conflict on `keys`. Outcomes are recorded as they
    come, a few at a time, and each round trip before the commit is time in which a worker's
    death would lose an answer: a few rows go in one INSERT, more by COPY (`insert_rows`)."""
    if conn.dialect.name != "postgresql" or len(rows) > FEW:
        insert_rows(conn, table, columns, rows, keys=keys, expect_new=keys is not None)
    elif rows:
        statement = postgresql.insert(table).values([dict(zip(columns, row, strict=True)) for row in rows])
        conn.execute(statement.on_conflict_do_nothing(index_elements=keys) if keys else statement)


def _clean(text: str | None) -> str | None:
    """A provider's words as a text column holds them (a NUL in an error body fails PostgreSQL)."""
    return text.replace("\x00", "\ufffd")[:2000] if text else text


ATTEMPT_COLUMNS = ["message_id", "started_at", "duration_ms", "outcome", "provider_code", "error", "account"]
TIMELINE_COLUMNS = ["tenant_id", "booking_id", "at", "kind", "detail", "message_id", "dedup_key"]
_STATES_PG = (  # one statement for the whole chunk, whatever its size
    "UPDATE messages SET state = v.st, error = v.err, updated_at = v.at, lease_until = NULL, "
    "sent_at = COALESCE(v.sent, messages.sent_at), "
    "provider_message_id = COALESCE(v.pid, messages.provider_message_id), "
    "template_version = COALESCE(v.tv, messages.template_version), due_at = COALESCE(v.due, messages.due_at), "
    "provider = COALESCE(v.prov, messages.provider) "
    "FROM unnest(%(mid)s::int8[], %(token)s::int4[], %(st)s::text[], %(err)s::text[], %(at)s::timestamptz[], "
    "%(sent)s::timestamptz[], %(pid)s::text[], %(tv)s::text[], %(due)s::timestamptz[], %(prov)s::text[]) "
    "AS v(mid, token, st, err, at, sent, pid, tv, due, prov) "
    "WHERE messages.id = v.mid AND messages.state = 'sending' AND messages.claim_token = v.token "
    "RETURNING messages.id")
_STATE_FIELDS = ("mid", "token", "st", "err", "at", "sent", "pid", "tv", "due", "prov")


def _set_states(conn: Any, states: list[tuple[Any, ...]]) -> set[int]:
    """Each message's new state, moved only out of `sending` and only under the claim token that
    made the attempt (a late record after the claim lapsed and was taken again changes nothing);
    the ids that moved."""
    if conn.dialect.name == "postgresql":
        columns = list(zip(*states, strict=True))
        return set(conn.exec_driver_sql(_STATES_PG, dict(zip(_STATE_FIELDS, map(list, columns), strict=True)))
                   .scalars())
    c = t.messages.c
    statement = (update(t.messages).where(and_(c.id == bindparam("mid"), c.state == MessageState.SENDING.value,
                                               c.claim_token == bindparam("token")))
                 .values(state=bindparam("st"), error=bindparam("err"), updated_at=bindparam("at"),
                         lease_until=None,
                         sent_at=func.coalesce(bindparam("sent", type_=c.sent_at.type), c.sent_at),
                         provider_message_id=func.coalesce(bindparam("pid", type_=c.provider_message_id.type),
                                                           c.provider_message_id),
                         template_version=func.coalesce(bindparam("tv", type_=c.template_version.type),
                                                        c.template_version),
                         due_at=func.coalesce(bindparam("due", type_=c.due_at.type), c.due_at),
                         provider=func.coalesce(bindparam("prov", type_=c.provider.type), c.provider)))
    return {row[0] for row in states  # SQLite: one row at a time (writers are serialised anyway)
            if conn.execute(statement, dict(zip(_STATE_FIELDS, row, strict=True))).rowcount}


def _message_event(d: Done) -> tuple[str, str, dict[str, Any]]:
    m = d.message
    type_, data = message_event(
        d.state, message_id=m.id, booking_id=m.booking_id, kind=m.kind, channel=m.channel.value,
        recipient=m.recipient, at=d.at, reason=_clean(d.error) if d.state is not MessageState.SENT else None,
        code=_clean(d.code) if d.state is MessageState.FAILED else None,
        provider_message_id=d.provider_message_id if d.state is MessageState.SENT else None,
        resend_of=m.resend_of)
    return m.tenant_id, type_, data


def _activity_created(d: Done) -> dict[str, Any]:
    m = d.message
    return {"tenant_id": m.tenant_id, "type": "activity.created", "created_at": d.at, "payload": {
        "booking_id": m.booking_id, "message_id": m.id, "kind": m.kind, "delivered_as": d.provider_message_id,
        "at": d.at.isoformat()}}


def _timeline_entry(d: Done) -> tuple[Any, ...]:
    m = d.message
    detail: dict[str, Any] = {"kind": m.kind, "channel": m.channel.value}
    if d.account:  # which provider account carried it (or answered), and those passed over on the way
        detail["account"] = d.account
    if d.passed:
        detail["passed_over"] = list(d.passed)
    if d.state is MessageState.PLANNED:  # a retry
        detail.update(reason=_clean(d.error), attempt=m.attempts, next_at=d.retry_at.isoformat() if d.retry_at else None)
        kind, dedup = "message.retry", f"message:{m.id}:retry:{m.attempts}"
    else:
        if d.error:
            detail["reason"] = _clean(d.error)
        if d.provider_message_id:
            detail["provider_message_id"] = d.provider_message_id
        if d.outcome == "reconciled":
            detail["reconciled"] = True  # found at the provider after an unrecorded attempt
        kind, dedup = f"message.{d.state.value}", f"message:{m.id}:{d.state.value}"
    return (m.tenant_id, m.booking_id, d.at, kind, detail, m.id, dedup)

