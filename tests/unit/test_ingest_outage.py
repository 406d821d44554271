"""N1, N2 (issue 9; found by `python -m bench chaos`): the ingester outlives a broker restart.

Both ingesters of the chaos run exited with redis.exceptions.ConnectionError the moment Redis
restarted. Now a broker error from fetch waits and fetches again, and a batch committed but not
acknowledged is fetched again and recognised by event_id."""

from __future__ import annotations

import json

import redis
from sqlalchemy import func, select

from notifier import ingest
from notifier.ingest import Batch
from notifier.store import schema as t
from tests.conftest import created


class RestartingBroker:
    """A source whose broker goes away twice while fetching and once while acknowledging; the
    unacknowledged batch comes back, as Redis's processing list brings it back."""

    name = "restarting"

    def __init__(self, bodies: list[str]) -> None:
        self.bodies = bodies
        self.script = ["down", "down", "batch", "batch", "empty"]
        self.acks_refused = 0
        self.acked = 0
        self.recovered = 0

    def fetch(self, max_n: int, wait_s: float, block_s: float) -> Batch | None:
        step = self.script.pop(0) if self.script else "empty"
        if step == "down":
            raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        if step == "empty":
            return None
        return Batch(bodies=[b.encode() for b in self.bodies], ack=self._ack)

    def _ack(self) -> None:
        if self.acks_refused == 0:
            self.acks_refused += 1
            raise redis.exceptions.ConnectionError("Connection closed by server.")
        self.acked += 1

    def recover(self) -> None:
        self.recovered += 1

    @property
    def done(self) -> bool:
        return not self.script


def test_N1_N2_a_broker_restart_neither_stops_the_ingester_nor_applies_anything_twice(ctx, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(ingest.time, "sleep", waits.append)  # the back-off, recorded instead of waited
    source = RestartingBroker([json.dumps(created("b1")), json.dumps(created("b2"))])

    total = ingest.run(ctx, source, stop=lambda: source.done)

    assert (total.applied, total.duplicates) == (2, 2)  # the batch came back once and was recognised
    assert source.acked == 1 and source.recovered == 2
    assert waits == [0.5, 1.0]  # backed off, doubling, while the broker was down
    with ctx.store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.bookings)).scalar_one() == 2
        created_entries = conn.execute(select(func.count()).select_from(t.timeline)
                                       .where(t.timeline.c.kind == "booking.created")).scalar_one()
    assert created_entries == 2
