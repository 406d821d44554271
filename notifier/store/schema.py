"""Tables (SQLAlchemy 2.0 Core). Times are stored in UTC; the Alembic migrations create them."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.types import TypeEngine


class UTCDateTime(TypeDecorator):
    """Aware datetimes in and out, UTC in storage, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# BIGINT ids on PostgreSQL, INTEGER (rowid alias, autoincrement) on SQLite
BigId = BigInteger().with_variant(Integer(), "sqlite")


def Ident(length: int) -> TypeEngine:  # noqa: N802 - a column type, named like one
    """An identifier (tenant, booking, customer, event id; a planning key): compared byte by byte.

    Identifiers are not words of a language, so on PostgreSQL they take the "C" collation
    whatever the database's default: every index probe and insert on them compares with
    memcmp instead of the locale's strcoll (which copies both strings first). That was a tenth
    of PostgreSQL's work in `bench ingest` even on a C.UTF-8 database; on a en_US.UTF-8 one it
    costs more. SQLite compares bytes (BINARY) already. Queries that compare such a column
    with values of their own collation (an unnested text array) say COLLATE "C"
    (`store.batch.key_lookup_sql`), so the index still applies."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

tenants = Table(
    "tenants",
    metadata,
    Column("id", Ident(128), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("home_region", String(2), nullable=False),
    Column("language", String(8), nullable=False),
    Column("channels", JSON, nullable=False),  # enabled channels (R2)
    Column("company", JSON, nullable=False),  # name, address, phone... for templates (R42)
    Column("settings", JSON, nullable=False),  # notification defaults (R26, R43)
    Column("revision", Integer, nullable=False, server_default="0"),  # of tenant.settings_updated
    Column("updated_at", UTCDateTime, nullable=False),
    # where staff notices and activities go: set by the operator's tenant file only, never by an event
    Column("webhook_url", String(2000)),
    # the tenant's opt-in to message.sent / delivered / read / failed / withdrawn on the outbound queue
    Column("message_events", Boolean, nullable=False, server_default="0"),
    Column("sender", JSON),  # its own mail_from, reply_to, sms_from, sms_messaging_service; NULL: the settings'
)

resources = Table(
    "resources",
    metadata,
    Column("tenant_id", Ident(128), primary_key=True),
    Column("id", Ident(128), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("type", String(32), nullable=False),
    Column("timezone", String(64)),
    Column("settings", JSON, nullable=False),  # per-resource overrides
    Column("revision", Integer, nullable=False, server_default="0"),  # of resource.updated
    ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
)

customers = Table(
    "customers",
    metadata,
    Column("tenant_id", Ident(128), primary_key=True),
    Column("id", Ident(128), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("phone", String(32)),  # E.164 (R5)
    Column("phone_error", String(200)),  # why the given number is not sendable
    Column("email", String(254)),
    Column("language", String(8), nullable=False),
    Column("consents", JSON, nullable=False),
    Column("privacy_accepted", Boolean, nullable=False),
    Column("created_via_online_booking", Boolean, nullable=False),
    Column("revision", Integer, nullable=False),  # of the last customer.updated applied (0: none yet)
    Column("snapshot_at", UTCDateTime, nullable=False),  # occurred_at of the data held; breaks ties
    Column("phone_type", String(24)),  # mobile, fixed_line, ... (phonenumbers), invalid; NULL: not known
    # channels the customer opted out of by a reply or at the provider (R3); NULL: none. Not the
    # booking system's: its customer.updated events leave it as it is
    Column("opted_out", JSON),
    ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
)
Index("ix_customers_phone", customers.c.phone)  # a reply is matched to its customer by number (R3, R11, R14)

bookings = Table(
    "bookings",
    metadata,
    Column("tenant_id", Ident(128), primary_key=True),
    Column("id", Ident(128), primary_key=True),
    Column("customer_id", Ident(128), nullable=False),
    Column("resource_id", Ident(128), nullable=False),
    Column("starts_at", UTCDateTime, nullable=False),
    Column("ends_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("scheduled_at", UTCDateTime, nullable=False),
    Column("source", String(16), nullable=False),
    Column("service", String(200)),
    Column("status", String(16), nullable=False),
    Column("cancelled_by", String(16)),  # customer | staff | workflow
    Column("cancelled_at", UTCDateTime),
    Column("cancel_reason", Text),
    Column("needs_approval", Boolean, nullable=False, server_default="0"),
    Column("approved_at", UTCDateTime),
    Column("workflow_status", JSON),  # {id, name, kind} of the tenant's workflow (R30-R35)
    Column("confirmed_at", UTCDateTime),
    Column("visit_outcome", String(16)),  # arrived | no_show
    Column("revision", Integer, nullable=False),
    Column("red_since", UTCDateTime),  # R12
    Column("late_since", UTCDateTime),  # R16: the orange "late" marker
    Column("late_counter_since", UTCDateTime),  # R16: the late counter
    Column("released_at", UTCDateTime),  # R18
    Column("next_check_at", UTCDateTime),  # when a marker may change without an event (the state sweep)
    Column("received_at", UTCDateTime),  # when notifier first applied it (NULL: as created_at)
    Column("send_card", Boolean),  # the booking system's choice for this booking (R22); NULL: the default
    Column("reminders", Boolean, nullable=False, server_default="1"),  # ... and for its reminders (R15)
    Column("not_planned", JSON),  # what planning left out and why, as recorded on the timeline; NULL: nothing
    ForeignKeyConstraint(["tenant_id", "customer_id"], ["customers.tenant_id", "customers.id"]),
    ForeignKeyConstraint(["tenant_id", "resource_id"], ["resources.tenant_id", "resources.id"]),
)

Index("ix_bookings_next_check", bookings.c.next_check_at, postgresql_where=bookings.c.next_check_at.isnot(None),
      sqlite_where=bookings.c.next_check_at.isnot(None))
# a customer's or resource's open bookings, replanned when the customer or resource changes
Index("ix_bookings_customer", bookings.c.tenant_id, bookings.c.customer_id)
Index("ix_bookings_resource", bookings.c.tenant_id, bookings.c.resource_id)

messages = Table(
    "messages",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", Ident(128), nullable=False),
    Column("booking_id", Ident(128), nullable=False),
    Column("key", Ident(200), nullable=False),  # planning key, unique per booking
    Column("kind", String(32), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("recipient", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("lease_until", UTCDateTime),  # a claim (queued / sending) expires at this time
    Column("attempts", Integer, nullable=False, default=0),
    # the fencing token of the current claim for sending, one more with each claim (notifier/leases.py)
    Column("claim_token", Integer, nullable=False, default=0, server_default="0"),
    Column("provider_message_id", Ident(200)),
    Column("sent_at", UTCDateTime),
    Column("error", Text),
    Column("template_version", String(64)),
    Column("stamped_at", UTCDateTime),  # due_at when first claimed for sending: links and card keep it
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("provider", String(16)),  # who issued provider_message_id: smtp, twilio, meta, webhook (callbacks)
    # the operator who made (a resend) or withdrew this message by hand; planning leaves it alone. NULL: the planner's
    Column("by", String(200)),
    Column("resend_of", BigId),  # the failed message this one sends again (an operator's resend)
    # one index both finds a booking's messages and keeps each planning key once per booking
    UniqueConstraint("tenant_id", "booking_id", "key", name="uq_messages_booking_key"),
    # (tenant_id, booking_id) names a booking, but is not a foreign key: the check it costs on every
    # planned message was a fifth of PostgreSQL's work in `bench ingest`. A message is written only
    # by the unit of work that has written its booking, and neither is ever deleted; a test checks
    # that no message lacks its booking (tests/contract/test_store.py).
)
# the sweep's two questions, each answered from an index that holds only the rows it asks about
Index("ix_messages_due", messages.c.due_at, postgresql_where=messages.c.state == "planned",
      sqlite_where=messages.c.state == "planned")
Index("ix_messages_lease", messages.c.lease_until,
      postgresql_where=messages.c.state.in_(["queued", "sending"]),
      sqlite_where=messages.c.state.in_(["queued", "sending"]))
# status callbacks find their message; a message has an id only once sent, so planned ones stay out
Index("ix_messages_provider_id", messages.c.provider_message_id,
      postgresql_where=messages.c.provider_message_id.isnot(None),
      sqlite_where=messages.c.provider_message_id.isnot(None))

send_attempts = Table(
    "send_attempts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("message_id", BigId, nullable=False, index=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),  # sent | temporary | permanent | unknown
    Column("provider_code", String(64)),
    Column("error", Text),
    # the provider account the call went to (a channel may have several: notifier/failover.py);
    # an attempt whose answer is unknown puts the message in doubt at that account
    Column("account", String(64)),
    # message_id names a message but is not a foreign key: a withdrawn message that was never
    # attempted is deleted (`BatchSession.flush`), and the check each delete cost (a query on this
    # table per row) was a tenth of PostgreSQL's work in `bench ingest`. Attempts exist only for
    # messages that were attempted (`attempts` > 0), and those are never deleted; a test checks
    # that no attempt lacks its message (tests/contract/test_store.py).
)
Index("ix_send_attempts_started_at", send_attempts.c.started_at)  # housekeeping: attempts past retention

timeline = Table(
    "timeline",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", Ident(128), nullable=False),
    Column("booking_id", Ident(128), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("message_id", BigId),
    Column("detail", JSON, nullable=False),
    Column("dedup_key", Ident(300), unique=True),  # set where a retry could record it twice
    # the messages the entry's event planned and withdrew (`plan_changes_detail`), shown after it
    Column("plan", JSON),
)
Index("ix_timeline_booking", timeline.c.tenant_id, timeline.c.booking_id, timeline.c.at)

processed_events = Table(
    "processed_events",
    metadata,
    Column("event_id", Ident(128), primary_key=True),
    Column("tenant_id", Ident(128), nullable=False),
    Column("type", String(64), nullable=False),
    Column("aggregate", Ident(200), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),  # applied | stale
    Column("processed_at", UTCDateTime, nullable=False),
)
Index("ix_processed_events_processed_at", processed_events.c.processed_at)  # housekeeping: ids past retention

held_events = Table(
    "held_events",  # arrived before what they follow: applied when the gap closes, or after hold_s
    metadata,
    Column("event_id", Ident(128), primary_key=True),
    Column("tenant_id", Ident(128), nullable=False),
    Column("aggregate", Ident(200), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("body", Text, nullable=False),
    Column("held_at", UTCDateTime, nullable=False),
    Column("reason", String(200), nullable=False),
)
Index("ix_held_events_aggregate", held_events.c.tenant_id, held_events.c.aggregate, held_events.c.revision)
Index("ix_held_events_held_at", held_events.c.held_at)

template_bundles = Table(
    "template_bundles",  # R40: what admins loaded, validated, versioned; one active per tenant
    metadata,
    Column("tenant_id", Ident(128), primary_key=True),
    Column("version", Ident(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("manifest", JSON, nullable=False),
    Column("files", JSON, nullable=False),  # relative path -> template source
    Column("loaded_at", UTCDateTime, nullable=False),
    Column("active", Boolean, nullable=False),
    ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
)

pending_statuses = Table(
    "pending_statuses",  # provider status reports that came before their send was recorded
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("provider_message_id", Ident(200), nullable=False),
    Column("status", String(32), nullable=False),
    Column("error", Text),
    Column("received_at", UTCDateTime, nullable=False),
    Column("provider", String(16)),  # the callback's provider: it applies to that provider's message only
    # the message the report names (its StatusCallback URL, Meta's biz_opaque_callback_data): a copy
    # whose answer never reached us is found by it (dispatch), not sent again
    Column("message_id", BigId),
)
Index("ix_pending_statuses_provider_id", pending_statuses.c.provider_message_id)
Index("ix_pending_statuses_message_id", pending_statuses.c.message_id)

receipts = Table(
    "receipts",  # a provider's answer to a claim's send, committed the instant it came (notifier/receipts.py)
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("message_id", BigId, nullable=False),
    Column("claim_token", Integer, nullable=False),  # the claim that sent it: a later claim finds this copy
    Column("provider", String(16)),
    Column("account", String(64)),  # the provider account that took it (notifier/failover.py)
    Column("provider_message_id", String(200)),
    Column("provider_code", String(64)),
    Column("received_at", UTCDateTime, nullable=False),
)
Index("ix_receipts_message_id", receipts.c.message_id)
Index("ix_receipts_received_at", receipts.c.received_at)
Index("ix_pending_statuses_received_at", pending_statuses.c.received_at)  # housekeeping

# a customer's message to us (R3, R11, R14), once per provider message: a webhook delivered again is
# recognised; what it meant and what became of it. Deleted after `retention_attempts_s`.
inbound_messages = Table(
    "inbound_messages",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("provider", String(16), nullable=False),  # twilio | meta
    Column("provider_message_id", Ident(200), nullable=False),
    Column("channel", String(16), nullable=False),  # sms | whatsapp
    Column("tenant_id", Ident(128)),  # NULL: no customer of ours has the number
    Column("customer_id", Ident(128)),
    Column("booking_id", Ident(128)),  # the booking it most likely belongs to
    Column("intent", String(16)),  # opt_out | opt_in | confirm | cancel; NULL: nothing we know
    Column("outcome", String(32), nullable=False),
    Column("text", Text),
    Column("received_at", UTCDateTime, nullable=False),
    UniqueConstraint("provider", "provider_message_id", name="uq_inbound_provider_id"),
)
Index("ix_inbound_messages_received_at", inbound_messages.c.received_at)  # housekeeping

outbox = Table(
    "outbox",  # events for the booking system, written with the change, published after commit
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", Ident(128), nullable=False),
    Column("type", String(64), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("published_at", UTCDateTime),
)
Index("ix_outbox_unpublished", outbox.c.id, postgresql_where=outbox.c.published_at.is_(None),
      sqlite_where=outbox.c.published_at.is_(None))
# housekeeping: published rows past retention (the unpublished ones are not in it)
Index("ix_outbox_published", outbox.c.published_at, postgresql_where=outbox.c.published_at.isnot(None),
      sqlite_where=outbox.c.published_at.isnot(None))

links = Table(
    "links",  # the customer's link (notifier/links.py): its opaque token, and the booking it stands for
    metadata,
    Column("token", Ident(32), primary_key=True),
    Column("tenant_id", Ident(128), nullable=False),
    Column("booking_id", Ident(128), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("received_at", UTCDateTime, nullable=False),
    Column("source", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("body", Text, nullable=False),  # at most DEAD_LETTER_BODY_BYTES of it, NUL bytes replaced
    Column("replayed_at", UTCDateTime),
    Column("body_bytes", Integer),  # the whole body's size (NULL: kept before migration 0011)
    Column("body_sha256", String(64)),  # of the whole body as received, whatever it held
)
Index("ix_dead_letters_received_at", dead_letters.c.received_at)  # housekeeping: past retention

api_keys = Table(
    "api_keys",  # who may call /api: a tenant's key reads that tenant; an operator's key (tenant NULL) all
    metadata,
    Column("id", String(32), primary_key=True),  # public: shown by `keys list`, named by `keys revoke`
    Column("key_hash", String(64), nullable=False, unique=True),  # SHA-256 of the key; the key itself is not kept
    Column("tenant_id", Ident(128)),
    Column("name", String(200), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
)
