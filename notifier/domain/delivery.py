"""Delivery statuses move forward only (N5): queued, sent, delivered, read; or failed.

Providers report out of order and more than once; `advance` says what a report changes.
"""

from __future__ import annotations

from notifier.domain.model import MessageState

ORDER = {MessageState.SENDING: 0, MessageState.SENT: 1, MessageState.DELIVERED: 2, MessageState.READ: 3}

# what providers say, in our words
PROVIDER_STATUS = {
    "queued": MessageState.SENT, "accepted": MessageState.SENT, "sending": MessageState.SENT,
    "sent": MessageState.SENT, "delivered": MessageState.DELIVERED, "read": MessageState.READ,
    "undelivered": MessageState.FAILED, "failed": MessageState.FAILED,
}


def advance(current: MessageState, reported: MessageState) -> MessageState | None:
    """The new state, or None when the report changes nothing (a duplicate, or late news)."""
    if current not in ORDER:
        return None  # failed, withdrawn, planned...: a report cannot revive or move it
    if reported is MessageState.FAILED:
        # a message the customer got cannot fail afterwards
        return MessageState.FAILED if ORDER[current] < ORDER[MessageState.DELIVERED] else None
    if reported in ORDER and ORDER[reported] > ORDER[current]:
        return reported
    return None
