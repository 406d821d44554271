"""Receipts: a provider's answer to a send, written down the instant it comes.

A send's full record (attempt row, message state, timeline entry, message event: `dispatch.record`)
is a transaction of several statements, committed by the batch's recorder thread together with
whatever else came back meanwhile. On a starved machine that takes a second or two, and a worker
killed in that time took the record of every answer waiting for it with it: the provider had
the message, we did not know, and a provider that cannot be asked (SMTP) got it again.

So each sender thread hands the answer (message, claim token, provider, the provider's id and
code) to its process's `Receipts` as soon as the call returns, and a thread of its own commits
everything handed over since its last write in one INSERT, on a connection it keeps, in
autocommit: one round trip, whatever the recorder is doing. A message claimed again after its
worker died (or was paused past its lease) is in doubt; its receipt from the earlier claim, if
any, is the copy the provider took, recorded as found (`reconciled`), not sent again. Where no
receipt is there yet and the provider cannot be asked, the message waits `report_wait_s` once
(`dispatch.transmit`): a worker that was stalled past its lease rather than killed (a paused VM,
SIGSTOP) reads the answers waiting in its sockets when it runs again, and writes them down.

What remains is the time from the provider's taking the message to that one INSERT: its answer
on the way back, and a round trip. A receipt that cannot be written (the database away) is
dropped with a warning: its message is in doubt as before, and its full record, which waits
out the outage while the claim holds, usually comes first. Receipts are facts, not claims: a
stale worker's late receipt is written too, and found by whoever holds the message next.
Housekeeping deletes them after a day.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime
from queue import SimpleQueue
from typing import Any

from sqlalchemy import insert, select

from notifier.channels.base import SendResult
from notifier.store import schema as t

log = logging.getLogger("notifier.receipts")
_STOP = object()
_FIELDS = ("message_id", "claim_token", "provider", "account", "provider_message_id", "provider_code", "received_at")
# one statement for whatever came back since the last write, as arrays: nothing to compile per write
# (a multi-row VALUES built and compiled each time was a quarter of a busy sms worker's time)
_INSERT_PG = (
    f"INSERT INTO receipts ({', '.join(_FIELDS)}) SELECT * FROM unnest(%(message_id)s::int8[], "
    "%(claim_token)s::int4[], %(provider)s::text[], %(account)s::text[], %(provider_message_id)s::text[], "
    "%(provider_code)s::text[], %(received_at)s::timestamptz[])")


@dataclass(frozen=True)
class Receipt:
    """A copy the provider took under an earlier claim of the message."""

    provider: str | None
    account: str | None  # the provider account that took it (notifier/failover.py)
    result: SendResult


class Receipts:
    """The provider answers of one worker process, and the thread that writes them down."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.written = 0  # receipts committed since the process started
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def keep(self, message_id: int, claim_token: int, provider: str | None, account: str | None,
             result: SendResult, at: datetime) -> None:
        """The provider (its `account`) took message `message_id` under claim `claim_token`: write it down now."""
        self._start()
        self._queue.put({"message_id": message_id, "claim_token": claim_token, "provider": provider,
                         "account": (account or "")[:64] or None,
                         "provider_message_id": result.provider_message_id,
                         "provider_code": (result.provider_code or "")[:64] or None, "received_at": at})

    def _start(self) -> None:
        thread = self._thread  # the sender threads' every answer passes here: no lock while the writer runs
        if thread is not None and self._pid == os.getpid() and thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            self._pid = os.getpid()  # a forked child writes with a thread (and connection) of its own
            self._queue = SimpleQueue()
            self._thread = threading.Thread(target=self._run, name="receipts", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        conn = None
        while True:
            rows = [self._queue.get()]
            while not self._queue.empty():
                rows.append(self._queue.get())
            stop = any(row is _STOP for row in rows)
            rows = [row for row in rows if row is not _STOP]
            if rows:
                conn = self._write(conn, rows)
            if stop:
                if conn is not None:
                    conn.close()
                return

    def _write(self, conn: Any, rows: list[dict[str, Any]]) -> Any:
        """One INSERT of `rows`; a connection found dead (the database restarted) is replaced once."""
        for last_try in (False, True):
            try:
                if self.store.engine.dialect.name != "postgresql":
                    with self.store.engine.begin() as embedded:
                        embedded.execute(insert(t.receipts).values(rows))
                else:
                    if conn is None:
                        conn = self.store.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                    conn.exec_driver_sql(_INSERT_PG, {f: [row[f] for row in rows] for f in _FIELDS})
                    conn.commit()
                self.written += len(rows)
                return conn
            except Exception as exc:  # noqa: BLE001 - a receipt is a help, never a reason to stop sending
                if conn is not None:
                    conn.invalidate()
                    conn.close()
                    conn = None
                if last_try:
                    log.warning("could not write %d receipts (%s): their messages stay in doubt until recorded",
                                len(rows), exc.__class__.__name__)
        return conn

    def close(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            self._queue.put(_STOP)
            self._thread.join(timeout=5)


def receipted_copy(store: Any, message: Any) -> Receipt | None:
    """The copy the provider took under an earlier claim of `message` (`MessageRow`), if that
    claim's worker wrote down the provider's answer before it died or was stopped."""
    r = t.receipts.c
    with store.engine.connect() as conn:
        row = conn.execute(select(r.provider, r.account, r.provider_message_id, r.provider_code).where(
            r.message_id == message.id, r.claim_token < message.claim_token).order_by(r.id).limit(1)).first()
    if row is None:
        return None
    return Receipt(row.provider, row.account, SendResult(provider_message_id=row.provider_message_id,
                                            provider_code=row.provider_code or "accepted"))
