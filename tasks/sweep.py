"""What beat sends: the due sweep (claim what is due, hand it to the channel queues), the state
sweep and housekeeping. Each is safe to run twice at once (a second beat, N2)."""

from __future__ import annotations

from notifier.client import OutboundPublisher
from notifier.domain.model import Channel
from notifier.housekeeping import housekeeping, retention_from
from notifier.services import max_claims, publish_all_outbox, sweep_due, sweep_states
from tasks.celery_app import CHANNEL_QUEUES, app, context
from tasks.dispatch import dispatch_batch


def dispatch_argsrepr(channel: Channel, message_ids: list[int]) -> str:
    """What Flower and the logs show for a dispatch task: the channel and the batch size (the
    ids themselves are noise; the task never carries an address or a name, N7)."""
    return f"{channel.value}: {len(message_ids)} messages"


def dispatch_name(channel: Channel, message_ids: list[int]) -> str:
    """The name Flower and the worker's log give a dispatch task (Celery's `shadow`): "dispatch
    sms (100)"; it runs `notifier.dispatch_batch`."""
    return f"dispatch {channel.value} ({len(message_ids)})"


@app.task(name="notifier.sweep_due")
def sweep_due_task() -> int:
    """Claim due messages (and lapsed claims), dispatch them per channel, publish the outbox (P2)."""
    ctx = context()
    s = ctx.settings
    batches = sweep_due(ctx.store, now=ctx.clock.now(), lease_s=s.lease_s, limit=s.sweep_batch,
                        batch=s.dispatch_batch, max_claims=max_claims(s))
    for number, (channel, ids) in enumerate(batches):
        try:
            dispatch_batch.apply_async(args=(channel.value, ids), queue=CHANNEL_QUEUES[channel],
                                       argsrepr=dispatch_argsrepr(channel, ids), kwargsrepr="{}",
                                       shadow=dispatch_name(channel, ids))
        except Exception:
            # the broker refused (after Celery's own retries): what was not handed out goes back
            # to the plan for the next sweep instead of waiting out its lease
            ctx.store.release_claims([i for _, rest in batches[number:] for i in rest], now=ctx.clock.now())
            raise
    publish_all_outbox(ctx.store, OutboundPublisher(s), now=ctx.clock.now())  # after their commit, at least once
    return sum(len(ids) for _, ids in batches)


@app.task(name="notifier.sweep_states")
def sweep_states_task() -> int:
    """Markers that change with time: the red counter, the late marker and counter, auto-release (R12, R16, R18)."""
    ctx = context()
    changed = sweep_states(ctx.store, now=ctx.clock.now(), limit=ctx.settings.sweep_batch,
                           regions=ctx.unavailable)
    publish_all_outbox(ctx.store, OutboundPublisher(ctx.settings), now=ctx.clock.now())
    return changed


@app.task(name="notifier.housekeeping")
def housekeeping_task() -> dict[str, int]:
    """Expired holds, and processed event ids, published outbox rows and attempts past retention."""
    ctx = context()
    s = ctx.settings
    report = housekeeping(ctx.store, now=ctx.clock.now(), hold_s=s.hold_s, retention_s=retention_from(s),
                          batch=s.housekeeping_batch, regions=ctx.unavailable)
    return vars(report)
