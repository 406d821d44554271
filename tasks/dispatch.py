"""Dispatch: one task carries a batch of message ids of one channel (ids only: N7)."""

from __future__ import annotations

from notifier import dispatch
from tasks.celery_app import app, context


@app.task(name="notifier.dispatch_batch")
def dispatch_batch(channel: str, message_ids: list[int]) -> dict[str, int]:
    report = dispatch.dispatch_batch(context(), message_ids)
    return vars(report)
