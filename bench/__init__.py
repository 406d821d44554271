"""Benchmarks: `python -m bench NAME` (or `all`). Each prints one JSON line last and records
its figures in docs/bench/NAME.json, from which docs/benchmarks.md is regenerated."""
