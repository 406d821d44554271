"""Templates are checked on their syntax tree, every branch and expression, before they go live
(issue 19; R40, R42, N3, N6): what the sandbox would refuse and names outside the documented
context are errors with the file and the line, from `templates validate` and `templates load`."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jinja2.sandbox
import pytest
from click.testing import CliRunner

from notifier.cli import main
from notifier.domain.model import Kind
from notifier.rendering import checks
from notifier.rendering.bundles import CONTEXT, validate_bundle
from notifier.settings import shipped_path
from tests.conftest import settings_env
from tests.unit.test_rendering import INJECTIONS

SHIPPED = shipped_path("templates")
DOCS = Path(__file__).resolve().parents[2] / "docs"
TARGET = "specialist/de/info.email.j2"
HIDDEN = '{% if booking.id == "x" %}{{ PAYLOAD }}{% endif %}'  # no sample booking takes this branch


@pytest.fixture
def bundle(tmp_path) -> Path:
    """The shipped bundle, for what is checked as an admin runs it (every kind and language)."""
    copy = tmp_path / "bundle"
    shutil.copytree(SHIPPED, copy)
    return copy


@pytest.fixture
def small(tmp_path) -> Path:
    """The new-booking info in German and the manifest: the rules need no more (`errors(small)`
    validates that kind and language only), and the suite stays quick."""
    copy = tmp_path / "small"
    for name in ("bundle.yaml", TARGET, "specialist/de/info.sms.j2", "equipment/de/info.email.j2",
                 "equipment/de/info.sms.j2"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHIPPED / name, copy / name)
    return copy


def test_the_small_bundle_passes_as_it_is(small):
    assert errors(small) == []


def hide(bundle: Path, payload: str, *, line: int = 4) -> int:
    """Put `payload` in an untaken branch on line `line` of the text block; returns the line."""
    path = bundle / TARGET
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[line - 1].strip(), "an ordinary line of text"
    lines[line - 1] += " " + HIDDEN.replace("PAYLOAD", payload)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return line


def errors(root: Path) -> list:
    narrow = {"kinds": (Kind.INFO,), "languages": ("de",)} if root.name == "small" else {}
    found = validate_bundle(root, **narrow)
    return [p for p in found if p.severity == "error"]


def test_N6_the_issue_payload_hidden_in_a_branch_is_refused_with_file_and_line(bundle):
    line = hide(bundle, "''.__class__.__mro__[1].__subclasses__()")
    found = errors(bundle)
    assert found and {(p.file, p.line) for p in found} == {(TARGET, line)}
    assert any("'.__class__'" in p.message and "sandbox" in p.message for p in found)


@pytest.mark.parametrize("payload", INJECTIONS)
def test_N6_every_injection_the_sandbox_refuses_is_refused_before_use_in_any_branch(small, payload):
    inner = payload.removeprefix("{{ ").removesuffix(" }}") if payload.startswith("{{") else None
    path = small / TARGET
    if inner is None:  # a statement: its own untaken branch
        path.write_text(path.read_text(encoding="utf-8").replace(
            "{% block text %}", '{% block text %}{% if booking.id == "x" %}' + payload + "{% endif %}", 1))
    else:
        hide(small, inner)
    assert [p for p in errors(small) if p.file == TARGET], payload


@pytest.mark.parametrize("expression, fragment", [
    ("booking['__class__']", "'['__class__']'"),
    ("booking.starts_at.mro", "'.mro'"),
    ("customer|map(attribute='__dict__')|list", "|map('__dict__')"),
    ("customer.items()|selectattr('_x')|list", "|selectattr('_x')"),
    ("customer[customer.name]", "a computed key"),
    ("customer|attr(customer.name)", "computed attribute name"),
    ("(customer.name ~ '{0}').format(customer)", "computed string"),
    ("'{0[__class__]}'.format(customer)", "reads '0[__class__]'"),
    ("[1].append(2)", "'.append(...)' changes data"),
    ("booking.secret", "unknown variable 'booking.secret'"),
    ("booking['secret']", "unknown variable 'booking.secret'"),
    ("settings.link_secret", "unknown variable 'settings'"),
])
def test_each_rule_names_what_it_refused(small, expression, fragment):
    line = hide(small, expression)
    found = errors(small)
    assert [(p.file, p.line) for p in found] and all((p.file, p.line) == (TARGET, line) for p in found), found
    assert any(fragment in p.message for p in found), [p.message for p in found]


@pytest.mark.parametrize("expression", [
    "booking.starts_at|date('short')", "company['name']", "'{0}, {1}'.format(customer.first_name, resource.name)",
    "customer.name|upper", "company.items()|list|length", "booking.id[:3]", "range(3)|join(',')",
])
def test_what_the_sandbox_allows_stays_allowed(small, expression):
    hide(small, expression)
    assert errors(small) == []


def test_loops_and_blocks_may_use_jinjas_own_names(small):
    path = small / TARGET
    path.write_text(path.read_text(encoding="utf-8").replace(
        "{% block text %}", "{% block text %}{% for part in ['a', 'b'] %}{{ loop.index }}{{ part }}{% endfor %}", 1))
    assert errors(small) == []


def test_R44_a_whatsapp_parameter_is_checked_too(small):
    manifest = small / "bundle.yaml"
    manifest.write_text(manifest.read_text(encoding="utf-8").replace(
        '"customer.first_name"', '"customer.__class__"', 1))
    found = errors(small)
    assert found and all(p.file == "bundle.yaml" for p in found)
    assert any("'.__class__'" in p.message and "sandbox" in p.message for p in found)


# what `templates validate` and `templates load` must refuse, hidden in a branch no sample takes, and
# the start of what the error says
REFUSED = {
    "issue": ("''.__class__.__mro__[1].__subclasses__()", "'.__class__'"),  # the payload of issue 19
    "globals": ("cycler.__init__.__globals__.os", "'.__init__'"),
    "filter": ("''|attr('__class__')", "|attr('__class__')"),
    "unknown-name": ("settings.link_secret", "unknown variable 'settings'"),  # outside the documented context
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_N6_R42_templates_validate_exits_1_naming_file_and_line(bundle, case):
    payload, said = REFUSED[case]
    line = hide(bundle, payload)
    result = CliRunner().invoke(main, ["templates", "validate", str(bundle)])
    assert result.exit_code == 1, result.output
    assert f"{TARGET}:{line}: error: " in result.output and said in result.output, result.output


@pytest.mark.parametrize("case", ["issue", "filter", "unknown-name"])
def test_N6_R42_templates_load_loads_nothing_when_a_branch_hides_a_payload(ctx, bundle, case):
    env = settings_env(ctx.settings)
    good = CliRunner().invoke(main, ["templates", "load", str(SHIPPED), "--tenant", "salon-berlin"], env=env)
    assert good.exit_code == 0, good.output
    with ctx.store.transaction() as tx:
        active = tx.active_bundle_version("salon-berlin")
    line = hide(bundle, REFUSED[case][0])
    refused = CliRunner().invoke(main, ["templates", "load", str(bundle), "--tenant", "salon-berlin"], env=env)
    assert refused.exit_code == 1
    assert f"{TARGET}:{line}: error:" in refused.output and "nothing loaded" in refused.output
    with ctx.store.transaction() as tx:
        assert tx.active_bundle_version("salon-berlin") == active  # the bundle that was active stays


def test_the_documented_context_is_the_checked_one():
    text = (DOCS / "templates.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| `(\w+)` \| (.*) \|$", text, re.M))
    assert set(table) == set(CONTEXT)
    for name, keys in CONTEXT.items():
        assert set(re.findall(r"`(\w+)`", table[name])) >= keys, name


def test_the_rules_cover_what_jinjas_sandbox_refuses():
    """If Jinja refuses more in a later version, these lists must learn it."""
    mutating = {name for _, names in jinja2.sandbox._mutable_spec for name in names}
    assert mutating <= checks.MUTATING_METHODS
    internal = (jinja2.sandbox.UNSAFE_FUNCTION_ATTRIBUTES | jinja2.sandbox.UNSAFE_METHOD_ATTRIBUTES
                | jinja2.sandbox.UNSAFE_GENERATOR_ATTRIBUTES | jinja2.sandbox.UNSAFE_COROUTINE_ATTRIBUTES
                | jinja2.sandbox.UNSAFE_ASYNC_GENERATOR_ATTRIBUTES)
    assert internal <= checks.INTERNAL_ATTRIBUTES


def test_problems_come_out_as_json_with_file_and_line(bundle):
    line = hide(bundle, "customer.__class__")
    result = CliRunner().invoke(main, ["templates", "validate", str(bundle), "--json"])
    report = json.loads(result.output)
    assert result.exit_code == 1 and report["ok"] is False
    assert {(p["file"], p["line"]) for p in report["problems"] if p["severity"] == "error"} == {(TARGET, line)}
