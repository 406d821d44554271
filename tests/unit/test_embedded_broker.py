"""The embedded broker (kombu's SQLAlchemy transport on SQLite) when processes start together."""

from __future__ import annotations

import sqlite3

from kombu import Connection
from sqlalchemy import event

from notifier import embedded_broker


def test_a_queue_another_process_declares_at_the_same_moment_is_used_not_fatal(tmp_path):
    """Worker and beat both declare `sweep` as they start. When the other one's INSERT lands between
    this one's look-up and its own INSERT, kombu's transport left its session failed for good: beat
    could send nothing ("This Session's transaction has been rolled back"). Ours reads the queue back."""
    embedded_broker.register()
    path = tmp_path / "broker.db"
    with Connection(f"embedded+sqlite:///{path}") as conn:
        channel = conn.default_channel
        channel._get_or_create("email")  # the tables exist; the queue `sweep` does not yet

        @event.listens_for(channel.session, "before_flush")
        def other_process_first(session, *_):  # the other process commits `sweep` just before ours
            with sqlite3.connect(path) as other:
                other.execute("INSERT INTO kombu_queue (name) VALUES ('sweep')")

        queue = channel._get_or_create("sweep")
        event.remove(channel.session, "before_flush", other_process_first)
        assert queue.name == "sweep" and queue.id is not None
        channel._put("sweep", {"body": "after the race"})  # the session works on
        assert channel._get("sweep") == {"body": "after the race"}
