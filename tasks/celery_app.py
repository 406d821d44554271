"""The Celery app: queues (one per channel), routes and the beat schedule.

Configuration is read lazily (`add_defaults`) the first time Celery needs it, so
importing this module opens nothing and reads no file.

Queues:  sweep (beat's scans and housekeeping), email, sms, whatsapp, staff, activity (dispatch
         per channel). Tasks, as Flower lists them:
  notifier.sweep_due       claim due messages, hand them to the channel queues, publish the outbox
  notifier.sweep_states    markers that change with time (red counter, late marker and counter, auto-release)
  notifier.housekeeping    expired holds, old processed event ids / outbox rows / attempts
  notifier.dispatch_batch  send a batch of one channel, shown as "dispatch sms (100)"; its args read
                           "sms: 100 messages" (ids only, N7); FAILURE when a message failed for good
"""

from __future__ import annotations

import logging
import time
from functools import cache
from typing import Any

from celery import Celery, beat
from celery.signals import worker_process_shutdown
from kombu import Queue

from notifier.domain.model import Channel

SWEEP_QUEUE = "sweep"
CHANNEL_QUEUES = {channel: channel.value for channel in Channel}  # kind to channel queue: one visible table
ALL_QUEUES = (SWEEP_QUEUE, *CHANNEL_QUEUES.values())

app = Celery("notifier", include=["tasks.sweep", "tasks.dispatch"])


def celery_config() -> dict[str, Any]:
    from notifier.bootstrap import kombu_url
    from notifier.settings import load_settings

    settings = load_settings()
    broker, transport_options = kombu_url(settings.broker_url, settings)
    return {
        "broker_url": broker,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "task_queues": [Queue(name, routing_key=name) for name in ALL_QUEUES],
        "task_default_queue": SWEEP_QUEUE,
        "task_routes": {"notifier.sweep_due": {"queue": SWEEP_QUEUE}, "notifier.sweep_states": {"queue": SWEEP_QUEUE},
                        "notifier.housekeeping": {"queue": SWEEP_QUEUE}},
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        # ack after the task ran: a worker killed mid-batch gets its batch redelivered; the
        # database claims make the redelivery harmless (N1, N2)
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Celery's consumer, whose Redis channels outlive a broker crash (finding K1)
        "worker_consumer": "tasks.consumer:Consumer",
        "worker_hijack_root_logger": False,
        "beat_schedule": {
            "sweep-due": {"task": "notifier.sweep_due", "schedule": settings.sweep_interval_s,
                          "options": {"queue": SWEEP_QUEUE, "expires": max(settings.sweep_interval_s * 5, 10)}},
            "sweep-states": {"task": "notifier.sweep_states", "schedule": settings.sweep_interval_s,
                             "options": {"queue": SWEEP_QUEUE, "expires": max(settings.sweep_interval_s * 5, 10)}},
            "housekeeping": {"task": "notifier.housekeeping", "schedule": settings.housekeeping_interval_s,
                             "options": {"queue": SWEEP_QUEUE, "expires": settings.housekeeping_interval_s}},
        },
        # the schedule lives in memory, not in a shelve file that two beats would share
        "beat_scheduler": "tasks.celery_app:MemoryScheduler",
        "timezone": "UTC",
    }


app.add_defaults(celery_config)


# beat's sweeps, and the question (`Store.work_waiting`) that says whether one has work
WORK_QUESTIONS = {"notifier.sweep_due": "due", "notifier.sweep_states": "states"}
log = logging.getLogger("notifier.beat")


class MemoryScheduler(beat.Scheduler):
    """Beat's schedule in memory. Celery's default keeps it in a shelve file
    (`celerybeat-schedule`) that two beats on one data folder would corrupt; a second beat (by
    mistake, or for availability) must be harmless (N2), and what beat sends is safe to run
    twice. Every entry runs once at start, so a beat restarted more often than the
    housekeeping interval still does its housekeeping.

    A sweep is sent when the store says its work is waiting (one indexed probe a row: a due
    message, a lapsed claim, an unpublished outbox event; a booking whose markers change), and
    otherwise once every `sweep_idle_s`, a heartbeat through broker and worker (the
    NotifierBeatSilent alert watches it). An idle pipeline no longer fills Flower's task list,
    the broker and the worker's log with sweeps that find nothing. A store beat cannot ask is
    no reason to hold a sweep back: it is sent, and its worker says what is wrong."""

    def setup_schedule(self) -> None:
        super().setup_schedule()
        self._last_sent: dict[str, float] = {}
        for entry in self.schedule.values():
            run_every = getattr(entry.schedule, "run_every", None)
            if run_every is not None:
                entry.last_run_at = entry.default_now() - run_every

    def apply_entry(self, entry: beat.ScheduleEntry, producer: Any = None) -> None:
        question = WORK_QUESTIONS.get(entry.task)
        if question is not None and not self._worth_sending(entry.name, question):
            log.debug("beat: %s has nothing to do; not sent", entry.task)
            return
        self._last_sent[entry.name] = time.monotonic()
        super().apply_entry(entry, producer=producer)

    def _worth_sending(self, name: str, question: str) -> bool:
        last = self._last_sent.get(name)
        ctx = context()
        if last is None or time.monotonic() - last >= ctx.settings.sweep_idle_s:
            return True
        try:
            return ctx.store.work_waiting(question, ctx.clock.now())
        except Exception as exc:  # noqa: BLE001 - the sweep goes; its worker reports the trouble
            log.warning("beat: cannot ask the store whether %s sweep has work (%s: %s); sending it", question,
                        exc.__class__.__name__, exc)
            return True


@cache
def context():
    """The worker process's Context, built on first use (after the pool forked)."""
    from notifier.bootstrap import build

    return build()


@worker_process_shutdown.connect
def _close(**_: Any) -> None:
    if context.cache_info().currsize:
        context().close()
