"""Ships `templates/` and `config/` as data files (share/notifier/...) beside the packages.

pyproject.toml holds the metadata; this file only walks the two trees, which
setuptools' declarative `data-files` cannot do recursively.
"""

from pathlib import Path

from setuptools import setup


def _tree(top: str) -> list[tuple[str, list[str]]]:
    entries = []
    for folder in sorted(p for p in Path(top).rglob("*") if p.is_dir()) + [Path(top)]:
        files = sorted(str(f) for f in folder.iterdir() if f.is_file())
        if files:
            entries.append((f"share/notifier/{folder}", files))
    return entries


setup(data_files=_tree("templates") + _tree("config"))
