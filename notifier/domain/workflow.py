"""Status workflows (R30-R35): statuses with a kind, and their history newest first."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

KINDS = ("start", "confirmation", "cancellation", "none")


@dataclass(frozen=True)
class Status:
    """R31: a tenant's status, as its booking system defines it."""

    id: str
    name: str
    kind: str = "none"  # start | confirmation | cancellation | none
    description: str = ""
    position: int = 0
    colour: str = ""


@dataclass(frozen=True)
class StatusEntry:
    at: datetime
    status: str
    kind: str
    reason: str | None = None
    description: str | None = None  # R31: how the booking system describes and shows the status
    position: int | None = None
    colour: str | None = None


def status_history(entries: Iterable[StatusEntry]) -> list[StatusEntry]:
    """R35: every status a booking passed, the newest first (ties: the later recorded first)."""
    indexed = list(enumerate(entries))
    return [e for _, e in sorted(indexed, key=lambda pair: (pair[1].at, pair[0]), reverse=True)]
