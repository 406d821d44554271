"""The embedded broker: kombu's SQLAlchemy transport on an SQLite file, polled briskly.

Transactional, so a consumer never sees half a message (kombu's filesystem transport can
hand a reader a file that is still being written). kombu's own SQLAlchemy transport
passes every transport option to `create_engine`, so its polling interval (1 s) cannot be
set there; this subclass sets it.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as SQLAlchemyTransport

ALIAS = "embedded"


class Transport(SQLAlchemyTransport):
    polling_interval = 0.05


def register() -> None:
    """Make `embedded+sqlite:///PATH` a kombu URL (idempotent; opens nothing)."""
    TRANSPORT_ALIASES.setdefault(ALIAS, "notifier.embedded_broker:Transport")
