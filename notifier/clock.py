"""Clocks: the only place the edges read the time. The domain takes `now` as an argument.

`file:PATH` is a simulated clock shared by processes: whoever owns the file (the demo,
a test) writes an ISO-8601 instant into it, and every worker, beat and ingester that
reads the clock sees that instant. It lets a whole day run in seconds, honestly.
"""

from __future__ import annotations

import os
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
        # three system calls (open, one read, close) where Path.read_text makes nine: a busy sender
        # thread reads the clock around each provider call, and each call gives up the GIL
        fd = os.open(self.path, os.O_RDONLY)
        try:
            raw = os.read(fd, 4096)
            while len(raw) >= 4096 and (more := os.read(fd, 4096)):  # longer than any instant: read to the end
                raw += more
        finally:
            os.close(fd)
        text = raw.decode().strip()
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
