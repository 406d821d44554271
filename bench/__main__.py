"""python -m bench NAME [options] | all"""

from __future__ import annotations

import importlib
import sys

BENCHES = ("ingest", "dispatch", "burst", "steady", "sweep")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m bench {{{','.join(BENCHES)},all}} [options]")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    names = BENCHES if name == "all" else (name,)
    for bench in names:
        if bench not in BENCHES:
            print(f"unknown benchmark {bench!r}; known: {', '.join(BENCHES)}", file=sys.stderr)
            return 2
        module = importlib.import_module(f"bench.{bench}")
        code = module.main(rest if name != "all" else [])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
