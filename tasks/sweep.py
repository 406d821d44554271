"""Beat's sweep: claim what is due in the database and hand it to the channel queues."""

from __future__ import annotations

from notifier.client import OutboundPublisher
from notifier.services import publish_outbox, sweep_due, sweep_states
from tasks.celery_app import CHANNEL_QUEUES, app, context
from tasks.dispatch import dispatch_batch


@app.task(name="notifier.sweep_due")
def sweep_due_task() -> int:
    ctx = context()
    s = ctx.settings
    batches = sweep_due(ctx.store, now=ctx.clock.now(), lease_s=s.lease_s, limit=s.sweep_batch,
                        batch=s.dispatch_batch)
    for channel, ids in batches:
        dispatch_batch.apply_async(args=(channel.value, ids), queue=CHANNEL_QUEUES[channel])
    publish_outbox(ctx.store, OutboundPublisher(s), now=ctx.clock.now())  # after their commit, at least once
    return sum(len(ids) for _, ids in batches)


@app.task(name="notifier.sweep_states")
def sweep_states_task() -> int:
    """Markers that change with time: red and orange counters, late, auto-release (R12, R16, R18)."""
    ctx = context()
    changed = sweep_states(ctx.store, now=ctx.clock.now(), limit=ctx.settings.sweep_batch,
                           regions=ctx.settings.unavailable)
    publish_outbox(ctx.store, OutboundPublisher(ctx.settings), now=ctx.clock.now())
    return changed
