"""Dispatch: one task carries a batch of message ids of one channel (ids only: N7).

What Flower shows of it (docs/operations.md, "Flower"): its name reads "dispatch sms (100)"
(the channel and the batch's size: the sweep sends it under that name), and its state is
SUCCESS when every message of the batch was sent, retried later or withdrawn, FAILURE when any
failed for good. Then the exception, `MessagesFailed`, says how many, which ids and what the
rest became; the messages are recorded before it is raised, and it is an expected outcome
(`throws`): the worker logs it at INFO without a traceback (each failure was logged at WARNING
when it was recorded), the task is acknowledged, nothing is retried.
"""

from __future__ import annotations

from notifier import dispatch
from tasks.celery_app import app, context


@app.task(name="notifier.dispatch_batch", throws=(dispatch.MessagesFailed,))
def dispatch_batch(channel: str, message_ids: list[int]) -> dict[str, int]:
    report = dispatch.dispatch_batch(context(), message_ids)
    if report.failed:
        raise dispatch.MessagesFailed.of(context(), channel, message_ids, report)
    return {outcome: count for outcome, count in vars(report).items() if count}
