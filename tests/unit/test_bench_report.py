"""docs/benchmarks.md is generated from docs/bench/*.json: every bench in the order `make
bench` runs them, its command, figures, notes and plots (issue 8), and the percentile the
lateness figures use."""

from __future__ import annotations

import json

from bench.common import percentile
from bench.report import write_report

MACHINE = {"cores": 2, "cpu": "test", "memory_gb": 1.0, "python": "3.11", "postgres_client": "psql 15"}


def _entry(name: str, **extra) -> dict:
    return {"name": name, "command": f"python -m bench {name}", "date": "2026-12-01 06:00 UTC",
            "machine": MACHINE, "figures": {"x_per_s": 1}, "notes": f"{name} notes", **extra}


def test_report_lists_benches_in_run_order_with_summary_and_images(tmp_path):
    results = tmp_path / "bench"
    results.mkdir()
    for entry in (_entry("steady", summary="p99 1.2 s", images=[{"path": "img/steady-lateness.png",
                                                                 "caption": "lateness"}]),
                  _entry("ingest"), _entry("zz-other")):
        (results / f"{entry['name']}.json").write_text(json.dumps(entry))
    out = tmp_path / "benchmarks.md"

    write_report(results, out)

    text = out.read_text()
    assert text.index("## ingest") < text.index("## steady") < text.index("## zz-other")
    assert "| [`steady`](#steady) | p99 1.2 s | 2026-12-01 06:00 UTC |" in text
    assert "![lateness](img/steady-lateness.png)" in text
    assert "`python -m bench steady`" in text and "| `x_per_s` | 1 |" in text and "steady notes" in text


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))  # 1..100, shuffled order does not matter
    assert percentile(values[::-1], 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0], 99) == 3.0
