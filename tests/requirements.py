"""Which tests name which requirement of docs/requirements.md, and the lines there that link them.

A test names a requirement in its docstring, in a comment inside it, or under a section comment
of its file (`# --- R16-R18 late ---`); a name anywhere else in a test file (the module
docstring, a fixture) is taken for the whole file. A range such as `R16-R18` names every ID
between its ends that the page defines.

    python -m tests.requirements      # rewrite the "Tests:" lines of docs/requirements.md (make requirements)
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "requirements.md"
TESTS = ROOT / "tests"
NAME = re.compile(r"(?<![A-Za-z0-9-])([RPN])(\d{1,2})(?:[-\u2013]\1?(\d{1,2}))?(?![A-Za-z0-9])")
DEFINED = re.compile(r"^- \*\*([RPN]\d{1,2})\*\* ", re.MULTILINE)
MARK = "<!-- tests -->"
SECTION = re.compile(r"^\s*# ---")


@dataclass(frozen=True)
class Mention:
    """A test file names `id`, in test `test` (None: the file as a whole), on `line`."""
    id: str
    file: Path
    test: str | None
    line: int
    ranged: bool  # inside a range (R16-R18), not written out


def defined_ids(page: Path = PAGE) -> list[str]:
    return DEFINED.findall(page.read_text(encoding="utf-8"))


def _names(text: str, defined: set[str]) -> list[tuple[str, bool]]:
    found = []
    for match in NAME.finditer(text):
        letter, first, last = match.group(1), int(match.group(2)), match.group(3)
        found.append((f"{letter}{first}", False))
        if last is not None:
            end = int(last)
            found.extend((f"{letter}{n}", True) for n in range(first + 1, end) if f"{letter}{n}" in defined)
            found.append((f"{letter}{end}", False))
    return found


def _tests_of(tree: ast.Module) -> list[tuple[str, int, int]]:
    """(name, first line with decorators, last line) of each test function and test method."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            found.append((node.name, start, node.end_lineno or node.lineno))
    return sorted(found, key=lambda t: t[1])


def mentions(tests: Path = TESTS, defined: set[str] | None = None) -> list[Mention]:
    defined = set(defined_ids()) if defined is None else defined
    out: list[Mention] = []
    for file in sorted(tests.rglob("test_*.py")):
        source = file.read_text(encoding="utf-8")
        functions = _tests_of(ast.parse(source))
        lines = source.splitlines()
        sections = [n for n, text in enumerate(lines, 1) if SECTION.match(text)]
        specific = {name for name, start, end in functions  # tests whose own text names an ID
                    if any(_names(text, defined) for text in lines[start - 1:end])}
        for number, text in enumerate(lines, 1):
            names = _names(text, defined)
            if not names:
                continue
            inside = [name for name, start, end in functions if start <= number <= end]
            if inside:
                owners: list[str | None] = inside[-1:]
            elif number in sections:  # a section heading: its tests that name no ID of their own
                following = [s for s in sections if s > number]
                stop = following[0] if following else len(lines) + 1
                below = [name for name, start, _ in functions if number < start < stop]
                owners = [name for name in below if name not in specific] or ([] if below else [None])
            else:
                owners = [None]
            out.extend(Mention(id_, file, owner, number, ranged) for id_, ranged in names for owner in owners)
    return out


def named_ids(tests: Path = TESTS) -> dict[str, list[str]]:
    """Every ID a test file writes out (ends of ranges included), with where: what must be defined."""
    where: dict[str, list[str]] = defaultdict(list)
    for file in sorted(tests.rglob("test_*.py")):
        for number, text in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            for id_, ranged in _names(text, set()):
                if not ranged:
                    where[id_].append(f"{file.relative_to(ROOT)}:{number}")
    return where


def tests_line(id_: str, found: list[Mention], page: Path = PAGE) -> str:
    by_file: dict[Path, set[str | None]] = defaultdict(set)
    for m in found:
        if m.id == id_:
            by_file[m.file].add(m.test)
    if not by_file:
        return f"{MARK}Tests: none name it yet."
    parts = []
    for file in sorted(by_file):
        shown = file.relative_to(TESTS).as_posix()
        link = f"[{shown}]({Path('..', file.relative_to(ROOT)).as_posix()})"
        named = sorted(t for t in by_file[file] if t)
        parts.append(f"{link} ({', '.join(named)})" if named else link)
    return f"{MARK}Tests: " + "; ".join(parts) + "."


def render(page: Path = PAGE, tests: Path = TESTS) -> str:
    """The page with every "Tests:" line written from the tests as they are now."""
    text = page.read_text(encoding="utf-8")
    found = mentions(tests, set(defined_ids(page)))
    out, current = [], None
    for line in text.splitlines():
        item = DEFINED.match(line)
        if item:
            current = item.group(1)
        if line.lstrip().startswith(MARK) and current:
            line = line[: len(line) - len(line.lstrip())] + tests_line(current, found, page)
        out.append(line)
    return "\n".join(out) + "\n"


def main() -> int:
    PAGE.write_text(render(), encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
