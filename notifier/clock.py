"""Clocks: the only place the edges read the time. The domain takes `now` as an argument.

`file:PATH` is a simulated clock shared by processes: whoever owns the file (the demo,
a test) writes an ISO-8601 instant into it, and every worker, beat and ingester that
reads the clock sees that instant. It lets a whole day run in seconds, honestly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FileClock:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def now(self) -> datetime:
        text = self.path.read_text().strip()
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            raise ValueError(f"{self.path}: the simulated clock needs an aware time, got {text!r}")
        return moment.astimezone(UTC)

    def set(self, moment: datetime) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(moment.astimezone(UTC).isoformat())
        tmp.replace(self.path)  # atomic: readers never see half a timestamp


def clock_from(spec: str) -> Clock:
    if spec in ("", "system"):
        return SystemClock()
    if spec.startswith("file:"):
        return FileClock(spec[len("file:"):])
    raise ValueError(f"unknown clock {spec!r}: use 'system' or 'file:PATH'")
