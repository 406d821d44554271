"""docs/requirements.md defines every requirement ID a test names, and its links resolve (issue 21).

The check is kept loose where other work moves on: a new test naming a defined ID passes at once
(`make requirements` adds it to the page's "Tests:" lines); a test naming an ID the page lacks fails."""

from __future__ import annotations

import re

from tests import requirements
from tests.requirements import MARK, PAGE, ROOT, defined_ids, named_ids, render

OUTSIDE = "/".join(("..", "shared"))  # the folder beside the repository that a cloner does not have
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_id_a_test_names_is_defined_on_the_page():
    defined = set(defined_ids())
    missing = {id_: where[:3] for id_, where in named_ids().items() if id_ not in defined}
    assert not missing, f"tests name IDs docs/requirements.md does not define: {missing}"


def test_the_page_defines_each_id_once_with_its_tests_line():
    ids = defined_ids()
    assert len(ids) == len(set(ids)) == PAGE.read_text(encoding="utf-8").count(MARK)
    numbers = {letter: sorted(int(i[1:]) for i in ids if i[0] == letter) for letter in "RPN"}
    assert numbers["P"] == list(range(1, 8)) and numbers["N"] == list(range(1, 8))
    assert numbers["R"] == [*range(1, 7), *range(10, 28), *range(30, 36), *range(40, 46)]


def test_links_in_the_readme_and_docs_resolve_inside_the_repository():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert OUTSIDE not in text, f"{page.relative_to(ROOT)} points outside the repository"
        for target in LINK.findall(text):
            if "://" not in target and not target.startswith("mailto:") and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_nothing_in_the_repository_points_at_files_outside_it():
    found = [str(path.relative_to(ROOT)) for top in ("notifier", "tasks", "bench", "tests", "docs", "deploy")
             for path in (ROOT / top).rglob("*") if path.is_file() and path.suffix in (".py", ".md", ".yaml", ".yml")
             and OUTSIDE in path.read_text(encoding="utf-8", errors="replace")]
    assert not found


def test_the_tests_lines_name_the_tests_that_name_each_id(tmp_path, monkeypatch):
    r = "R"  # spelled apart, so that this file does not name the IDs it makes up
    page = tmp_path / "docs" / "requirements.md"
    page.parent.mkdir()
    page.write_text(f"- **{r}16** late\n  <!-- tests -->\n- **{r}17** activity\n  <!-- tests -->Tests: stale.\n"
                    f"- **{r}18** release\n  <!-- tests -->\n- **{r}19** cancel\n  <!-- tests -->\n")
    tests = tmp_path / "tests" / "unit"
    tests.mkdir(parents=True)
    (tests / "test_late.py").write_text(
        f'"""The late path ({r}19)."""\n\n# --- {r}16-{r}18 late ---------\n\n'
        f"def test_follow_up():\n    pass\n\n\ndef test_release():\n    assert True  # {r}18 and {r}17\n")
    monkeypatch.setattr(requirements, "ROOT", tmp_path)
    monkeypatch.setattr(requirements, "TESTS", tmp_path / "tests")
    lines = render(page, tmp_path / "tests").splitlines()
    link = "[unit/test_late.py](../tests/unit/test_late.py)"
    assert lines[1] == f"  {MARK}Tests: {link} (test_follow_up)."  # from the section heading
    assert lines[3] == f"  {MARK}Tests: {link} (test_follow_up, test_release)."
    assert lines[5] == f"  {MARK}Tests: {link} (test_follow_up, test_release)."
    assert lines[7] == f"  {MARK}Tests: {link}."  # the module docstring: the whole file


def test_the_license_file_is_the_one_pyproject_declares():
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert declared == {"text": "MIT"} and (ROOT / "LICENSE").read_text().startswith("MIT License\n")


def test_P6_the_packages_the_pipeline_is_built_on_are_declared():
    """P6: the runtime list names celery, kombu, redis, sqlalchemy, jinja2 and requests; Flower is an
    extra; pytest and fakeredis are development tools."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[\[<>=~! ;]", r, maxsplit=1)[0].lower() for r in requirements}

    assert {"celery", "kombu", "redis", "sqlalchemy", "jinja2", "requests"} <= names(project["dependencies"])
    assert "flower" in names(project["optional-dependencies"]["flower"])
    assert {"pytest", "fakeredis"} <= names(project["optional-dependencies"]["dev"])
