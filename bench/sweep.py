"""python -m bench sweep: does claiming what is due cost what is due, or what is stored?

On PostgreSQL, the time to claim 10,000 due rows with 10,000 future rows in the table, then
with 1,000,000 (two months booked ahead). The claim is what beat's due sweep runs:
`services.sweep_due` (`Store.claim_due`, then the per-channel batches), with `limit` =
the due rows, so one sweep takes them all.

Each figure is the median of `--repeats` claims after one warm-up; before every claim the
same due rows are put back to `planned` and the table is VACUUM ANALYZEd (as autovacuum keeps
a live table), so each claim finds the same state. Rows are generated inside PostgreSQL
(`bench.common.fill_future_messages`), bookings and customers with them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta

from sqlalchemy import text

from bench.common import fill_future_messages, prepared_store, record, scratch_database
from bench.workload import START

NOW = START + timedelta(days=1)


def _reset(store, tag: str) -> None:
    """The due rows back to planned, dead tuples vacuumed, statistics fresh."""
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE messages SET state = 'planned', lease_until = NULL "
                          "WHERE booking_id LIKE :pattern AND state <> 'planned'"), {"pattern": f"{tag}b%"})
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE messages"))


def claim_ms(store, due: int, repeats: int, lease_s: int) -> list[float]:
    """Milliseconds of each claim (after one warm-up claim)."""
    from notifier.services import sweep_due

    times = []
    for i in range(repeats + 1):
        _reset(store, "d")
        started = time.perf_counter()
        batches = sweep_due(store, now=NOW, lease_s=lease_s, limit=due, batch=100)
        elapsed_ms = (time.perf_counter() - started) * 1000
        claimed = sum(len(ids) for _, ids in batches)
        if claimed != due:
            raise SystemExit(f"claimed {claimed} rows, expected the {due} due")
        if i:
            times.append(elapsed_ms)
    return times


def plan_of_claim(store, due: int) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the claim statement, rolled back: what it touched."""
    from notifier.store.sql import claim_due_statement

    _reset(store, "d")
    statement = claim_due_statement("due", now=NOW, lease_s=120, limit=due, dialect="postgresql")
    compiled = statement.compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": True})
    with store.engine.connect() as conn:
        rows = conn.execute(text(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) {compiled}")).scalars().all()
        conn.rollback()
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sweep")
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=10_000, help="future rows in the first measurement")
    parser.add_argument("--large", type=int, default=1_000_000, help="future rows in the second")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lease-s", type=int, default=120)
    args = parser.parse_args(argv)

    with scratch_database() as url:
        store = prepared_store(url, [])
        fill_s = fill_future_messages(store, args.due, after=NOW - timedelta(minutes=10), span_s=590, tag="d")
        fill_s += fill_future_messages(store, args.small, after=NOW + timedelta(hours=1), tag="f")
        small = claim_ms(store, args.due, args.repeats, args.lease_s)
        print(f"sweep: {args.due} due + {args.small} future: {statistics.median(small):.1f} ms", file=sys.stderr)
        started = time.perf_counter()
        fill_future_messages(store, args.large - args.small, after=NOW + timedelta(hours=1), tag="g")
        large_fill_s = time.perf_counter() - started
        large = claim_ms(store, args.due, args.repeats, args.lease_s)
        print(f"sweep: {args.due} due + {args.large} future: {statistics.median(large):.1f} ms "
              f"(filled in {large_fill_s:.0f} s)", file=sys.stderr)
        plan = plan_of_claim(store, args.due)
        store.engine.dispose()
    small_ms, large_ms = statistics.median(small), statistics.median(large)
    ratio = large_ms / small_ms
    figures = {
        "due_rows": args.due, "future_rows_small": args.small, "future_rows_large": args.large,
        "claim_ms_small": round(small_ms, 1), "claim_ms_large": round(large_ms, 1), "ratio": round(ratio, 2),
        "claim_ms_small_all": [round(x, 1) for x in small], "claim_ms_large_all": [round(x, 1) for x in large],
        "fill_s_large": round(large_fill_s, 1), "goal_ratio": 1.5, "goal_claim_ms": 250,
    }
    met = ratio <= 1.5 and large_ms < 250
    verdict = "goal met" if met else "goal missed"
    verdict += f": ratio {ratio:.2f} (goal <= 1.5), {large_ms:.0f} ms with {args.large:,} future rows (goal < 250 ms)"
    record("sweep", ("python -m bench sweep " + " ".join(argv)).strip(), figures,
           summary=f"claim {args.due:,} due rows: {small_ms:.0f} ms with {args.small:,} future rows, "
                   f"{large_ms:.0f} ms with {args.large:,} (x{ratio:.2f})",
           notes=f"{verdict}. What beat's due sweep runs (`services.sweep_due`: `Store.claim_due`, one UPDATE "
                 f"... RETURNING over the partial index of planned rows, FOR UPDATE SKIP LOCKED, then the "
                 f"per-channel batches) on PostgreSQL, `limit` = the due rows; median of {args.repeats} claims "
                 f"after a warm-up, the due rows put back and the table VACUUM ANALYZEd before each. Future rows "
                 f"are due over the next two months, five per booking, generated in SQL. The claim's plan with "
                 f"{args.large:,} future rows (EXPLAIN ANALYZE, rolled back):\n\n```\n{plan}\n```")
    return 0
