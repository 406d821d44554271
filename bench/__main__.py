"""python -m bench NAME [options] | all

`all` (what `make bench` runs) runs every benchmark but chaos with its defaults, each in a process of its
own: a bench leaves nothing behind for the next (a Celery app keeps the connection pool, and
so the Redis key prefix, of its first use; caches stay warm); it says how long each took.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time

BENCHES = ("ingest", "dispatch", "burst", "steady", "sweep", "memory", "limits", "chaos", "ingest_cost", "bad_input")
# `all` stays within make bench's 20 minutes; chaos (about 6 min more) runs by name: make chaos;
# ingest_cost needs valgrind, which the machine may not have; bad_input counts outcomes, not
# speed (docs/reliability.md)
ALL = tuple(b for b in BENCHES if b not in ("chaos", "ingest_cost", "bad_input"))


def run_all() -> int:
    """Every bench, even after one failed (the others' figures are still worth having); the exit
    code is the first failure's."""
    took: list[str] = []
    failed: list[tuple[str, int]] = []
    started = time.perf_counter()
    for bench in ALL:
        begun = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", "bench", bench])
        took.append(f"{bench} {time.perf_counter() - begun:.0f} s" + (f" (failed: exit {code})" if code else ""))
        print(f"bench all: {', '.join(took)}", file=sys.stderr)
        if code:
            failed.append((bench, code))
    print(f"bench all: {time.perf_counter() - started:.0f} s in total"
          + (f"; failed: {', '.join(name for name, _ in failed)}" if failed else ""), file=sys.stderr)
    return failed[0][1] if failed else 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m bench {{{','.join(BENCHES)},all}} [options]")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "all":
        return run_all()
    if name not in BENCHES:
        print(f"unknown benchmark {name!r}; known: {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    return importlib.import_module(f"bench.{name}").main(rest) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
