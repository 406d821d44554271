"""The embedded broker: kombu's SQLAlchemy transport on an SQLite file, polled briskly.

Transactional, so a consumer never sees half a message (kombu's filesystem transport can
hand a reader a file that is still being written). kombu's own SQLAlchemy transport
passes every transport option to `create_engine`, so its polling interval (1 s) cannot be
set there; this subclass sets it. It also opens the file in WAL mode with a 30 s busy
timeout, as the store does: every worker thread polls each queue with BEGIN IMMEDIATE, and
with SQLite's defaults (rollback journal, 5 s) a slow disk could make a publish give up
("database is locked") and leave a claimed batch waiting for its lease to run out. And two
processes that declare the same queue at once both go on (kombu's own would fail one for good).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Channel as SQLAlchemyChannel
from kombu.transport.sqlalchemy import Transport as SQLAlchemyTransport
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError

ALIAS = "embedded"
BUSY_TIMEOUT_S = 30


class Channel(SQLAlchemyChannel):
    def _engine_from_config(self) -> Any:
        self.connection.client.transport_options.setdefault("connect_args", {"timeout": BUSY_TIMEOUT_S})
        engine = super()._engine_from_config()

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine

    def _get_or_create(self, queue: str) -> Any:
        """kombu's, but a queue that another process created between its query and its INSERT
        (worker and beat declare `sweep` as they start) is read back instead of leaving the
        session failed for good ("This Session's transaction has been rolled back")."""
        try:
            return super()._get_or_create(queue)
        except IntegrityError:
            self.session.rollback()
            return self.session.query(self.queue_cls).filter(self.queue_cls.name == queue).one()


class Transport(SQLAlchemyTransport):
    Channel = Channel
    polling_interval = 0.05


def register() -> None:
    """Make `embedded+sqlite:///PATH` a kombu URL (idempotent; opens nothing)."""
    TRANSPORT_ALIASES.setdefault(ALIAS, "notifier.embedded_broker:Transport")
