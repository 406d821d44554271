"""Template bundles are checked before use (R40-R42, N3): each broken bundle fails with the
file, the line and the problem; the shipped bundle passes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from notifier.domain.model import Tenant
from notifier.rendering.bundles import sms_segments, validate_bundle
from notifier.settings import shipped_path

SHIPPED = shipped_path("templates")
TENANT = Tenant(id="salon", name="Salon", company={"name": "Salon", "address": "Hauptstr. 1", "phone": "+49 30 1"})


@pytest.fixture
def bundle(tmp_path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(SHIPPED, copy)
    return copy


def errors(root, **kw):
    return [p for p in validate_bundle(root, **kw) if p.severity == "error"]


def test_the_shipped_bundle_passes():
    assert errors(SHIPPED, tenants=[TENANT]) == []


def test_the_cli_passes_the_shipped_bundle_and_fails_a_broken_one(bundle):
    ok = subprocess.run([sys.executable, "-m", "notifier.cli", "templates", "validate", str(SHIPPED), "--json"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True
    (bundle / "default" / "de" / "late.sms.j2").write_text("{% block text %}{{ oops {% endblock %}")
    bad = subprocess.run([sys.executable, "-m", "notifier.cli", "templates", "validate", str(bundle)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "default/de/late.sms.j2:1: error: syntax error" in bad.stderr


def test_a_syntax_error_names_file_and_line(bundle):
    path = bundle / "specialist" / "de" / "info.email.j2"
    lines = path.read_text().splitlines()
    lines[4] = lines[4] + " {% if %}"
    path.write_text("\n".join(lines))
    [problem] = errors(bundle)
    assert (problem.file, problem.line) == ("specialist/de/info.email.j2", 5) and "syntax error" in problem.message


def test_an_unknown_variable_names_file_and_line(bundle):
    path = bundle / "default" / "it" / "change.email.j2"
    path.write_text(path.read_text().replace("Gentile {{ customer.first_name }},",
                                             "Gentile {{ customer.nickname }},", 1))
    [problem] = errors(bundle)
    assert problem.file == "default/it/change.email.j2" and problem.line == 4
    assert "unknown variable 'customer.nickname'" in problem.message


def test_a_missing_language_is_reported_per_kind_and_resource_type(bundle):
    shutil.rmtree(bundle / "default" / "ru")
    missing = [p for p in errors(bundle) if p.message.startswith("missing")]
    assert "specialist/ru/late.sms.j2" in {p.file for p in missing}
    assert all("'ru'" in p.message for p in missing)


def test_an_oversize_sms_is_reported_with_its_encoding_and_segments(bundle):
    (bundle / "default" / "en" / "late.sms.j2").write_text(
        "{% block text %}" + "Your appointment started. " * 14 + "{% endblock %}")
    [problem] = errors(bundle)
    assert problem.file == "default/en/late.sms.j2" and "GSM-7, 3 segments" in problem.message


def test_a_company_detail_the_tenant_lacks_is_reported_at_validation(bundle):
    no_phone = Tenant(id="bare", name="Bare", company={"name": "Bare", "address": "Weg 1"})
    problems = errors(bundle, tenants=[no_phone])
    assert problems and all("tenant 'bare' has no company detail 'phone'" in p.message for p in problems)
    assert any(p.file == "default/de/late.email.j2" and p.line > 0 for p in problems)


def test_an_email_without_a_subject_is_reported(bundle):
    path = bundle / "default" / "en" / "feedback.email.j2"
    path.write_text(path.read_text().split("\n\n", 1)[1])  # drop the subject block
    [problem] = errors(bundle)
    assert problem.file == "default/en/feedback.email.j2" and "missing block 'subject'" in problem.message


@pytest.mark.parametrize("text, expected", [
    ("a" * 160, ("GSM-7", 1)), ("a" * 161, ("GSM-7", 2)), ("€" * 80, ("GSM-7", 1)), ("€" * 81, ("GSM-7", 2)),
    ("я" * 70, ("UCS-2", 1)), ("я" * 71, ("UCS-2", 2)), ("ä" * 160, ("GSM-7", 1)),
])
def test_sms_segments_count_like_a_carrier(text, expected):
    assert sms_segments(text) == expected
