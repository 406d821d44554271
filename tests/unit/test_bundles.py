"""Template bundles are checked before use (R40-R42, N3): each broken bundle fails with the
file, the line and the problem; the shipped bundle passes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from notifier.domain.model import Kind, Tenant
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
    sizes = json.loads(ok.stdout)["sms"]
    for language in ("de", "en", "it", "ru"):  # N4: the confirmation request and its link fit two segments
        assert sizes[f"default/{language}/confirmation.sms.j2"]["segments"] <= 2
    (bundle / "default" / "de" / "late.sms.j2").write_text("{% block text %}{{ oops {% endblock %}")
    bad = subprocess.run([sys.executable, "-m", "notifier.cli", "templates", "validate", str(bundle)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "default/de/late.sms.j2:1: error: syntax error" in bad.stderr
    assert re.search(r"SMS: (\d+) of \1 templates within 2 segments", bad.stdout), bad.stdout


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
    # a file that is not there has no line: it is named without one (it used to read ":0")
    assert all(p.line is None and str(p).startswith(f"{p.file}: error: missing") for p in missing)


def test_an_unknown_filter_is_reported_on_its_own_line(bundle):
    """Jinja reports an unknown filter only when it compiles the template, and rendering then fails
    on the first line; the check reads it from the template itself (issue 21)."""
    path = bundle / "specialist" / "de" / "info.email.j2"
    lines = path.read_text().splitlines()
    lines[5] += " {{ booking.starts_at | frobnicate }}"
    path.write_text("\n".join(lines))
    [problem] = errors(bundle)
    assert str(problem) == "specialist/de/info.email.j2:6: error: unknown filter 'frobnicate'"


def test_a_template_that_fails_when_rendered_names_the_line_that_failed(bundle):
    path = bundle / "specialist" / "de" / "info.email.j2"
    lines = path.read_text().splitlines()
    lines[6] += " {{ booking.duration_min // 0 }}"
    path.write_text("\n".join(lines))
    [problem] = errors(bundle)
    assert (problem.file, problem.line) == ("specialist/de/info.email.j2", 7)
    assert "does not render with a sample booking: ZeroDivisionError" in problem.message


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


# --- loading, versions, overrides (R40, R41, R43, R44) ----------------------------------------------

def _load(ctx, path, tenant="salon-berlin"):
    from notifier.rendering.bundles import read_bundle

    problems = [p for p in validate_bundle(path) if p.severity == "error"]
    assert not problems, problems
    with ctx.store.transaction() as tx:
        tx.save_bundle(tenant, read_bundle(path), ctx.clock.now())
    return read_bundle(path).version


def _send_info(ctx, booking_id, resource=None):
    from tests.conftest import created
    from tests.unit.test_services import apply, run_due

    apply(ctx, created(booking_id, resource=resource))
    assert run_due(ctx)["sent"] >= 1


def _template_versions(ctx):
    from sqlalchemy import select

    from notifier.store import schema as t

    with ctx.store.engine.connect() as conn:
        return {r.booking_id: r.template_version for r in conn.execute(
            select(t.messages.c.booking_id, t.messages.c.template_version).where(t.messages.c.kind == "info"))}


def test_R40_a_loaded_bundle_is_versioned_and_every_sent_message_records_it(ctx, email, bundle):
    _send_info(ctx, "b1")
    assert _template_versions(ctx)["b1"] == "shipped:specialist/de/info.email.j2"
    path = bundle / "specialist" / "de" / "info.email.j2"
    path.write_text(path.read_text().replace("wir haben Ihren Termin eingetragen", "Ihr Termin steht"))
    version = _load(ctx, bundle)
    _send_info(ctx, "b2")
    assert _template_versions(ctx)["b2"] == f"{version}:specialist/de/info.email.j2"
    assert "Ihr Termin steht" in email.sent[-1].text and "Ihr Termin steht" not in email.sent[0].text
    path.write_text(path.read_text().replace("Ihr Termin steht", "Alles klar"))
    assert _load(ctx, bundle) != version  # new content, new version


def test_R41_a_resource_may_have_its_own_wording(ctx, email, bundle):
    own = bundle / "resources" / "sauna" / "de"
    own.mkdir(parents=True)
    (own / "info.email.j2").write_text("{% block subject %}Sauna gebucht{% endblock %}"
                                       "{% block text %}Handtuch nicht vergessen, {{ customer.first_name }}!"
                                       "{% endblock %}")
    _load(ctx, bundle)
    _send_info(ctx, "b1", resource={"id": "sauna", "name": "Sauna 2", "type": "equipment"})
    _send_info(ctx, "b2")
    texts = {m.subject: m.text for m in email.sent}
    assert texts["Sauna gebucht"] == "Handtuch nicht vergessen, Erika!"
    assert len(texts) == 2  # the other resource keeps the shared wording


def test_R43_new_tenant_defaults_apply_to_resources_created_later(ctx):
    from sqlalchemy import select

    from notifier.store import schema as t
    from tests.conftest import START, created, event
    from tests.unit.test_services import apply

    apply(ctx, event("tenant.settings_updated", {"settings": {"info": {"delay_s": 3600},
                                                              "reminder": {"enabled": False}}}))
    apply(ctx, created("b1", resource={"id": "new-room", "name": "Neuer Raum", "type": "equipment"}))
    with ctx.store.engine.connect() as conn:
        rows = {r.kind: r.due_at for r in conn.execute(select(t.messages.c.kind, t.messages.c.due_at))}
    assert rows["info"] == START + timedelta(hours=1) and "reminder" not in rows  # the new defaults, not the old


def test_R44_whatsapp_parameters_must_match_what_the_provider_approved(bundle):
    manifest = bundle / "bundle.yaml"
    manifest.write_text(manifest.read_text().replace("    param_count: 6\n", "    param_count: 5\n", 1))
    [problem] = errors(bundle)
    info_line = 1 + manifest.read_text().splitlines().index("  info:")
    assert problem.file == "bundle.yaml" and problem.line == info_line
    assert "booking_info_v2 (info) was approved with 5 parameters, the bundle gives 6" in problem.message


def test_R44_whatsapp_renders_the_approved_template_with_its_parameters():
    from datetime import UTC, datetime

    from notifier.rendering.environment import Renderer

    context = {"customer": {"first_name": "Erika"}, "booking": {"starts_at": datetime(2026, 12, 3, 14, tzinfo=UTC)},
               "resource": {"name": "Anna"}, "company": {"name": "Salon"}, "links": {"page": LINK}}
    out = Renderer(SHIPPED).render("info", "whatsapp", "specialist", ("de",), context, timezone="Europe/Berlin",
                                   locale="de")
    assert (out.provider_template, out.provider_language) == ("booking_info_v2", "de")
    assert out.params == ("Erika", "03.12.2026", "15:00", "Anna", "Salon", LINK)


LINK = "https://termine.example.de/l/0Vt8NBv9otkt1QBI1"
CUSTOMER_KINDS = [k for k in Kind if not k.to_staff]


@pytest.mark.parametrize("language", ["de", "it", "ru", "en"])
def test_R11_R45_every_customer_message_carries_the_one_link_on_every_channel(language):
    """Email (text and HTML), SMS and WhatsApp, for every customer kind and resource type: the
    booking's one link, and no other."""
    from notifier.rendering.environment import Renderer
    from notifier.rendering.samples import sample_context

    renderer = Renderer(SHIPPED)
    for resource_type in ("specialist", "equipment"):
        context = dict(sample_context(language, resource_type), links={"page": LINK, "confirm": LINK, "cancel": LINK})
        context["booking"] = dict(context["booking"], cancel_reason="Krankheit")
        for kind in CUSTOMER_KINDS:
            for channel in ("email", "sms", "whatsapp"):
                out = renderer.render(kind.value, channel, resource_type, (language,), context,
                                      timezone="Europe/Berlin", locale=language)
                where = f"{kind.value} {channel} {resource_type} {language}"
                if channel == "whatsapp":
                    assert LINK in out.params, where
                    continue
                assert out.text.count("/l/") == out.text.count(LINK) >= 1, where
                if channel == "email":
                    assert f'href="{LINK}"' in out.html, where
                else:
                    encoding, segments = sms_segments(out.text)
                    assert segments <= 2, (where, encoding, len(out.text))


def test_R11_the_sms_budget_counts_the_link_at_the_deployments_length(bundle):
    """A long public address makes the same SMS too long: `templates validate` counts the link as sent."""
    long_url = "https://appointments.a-very-long-salon-chain-domain-name.example.com/customers"
    problems = errors(bundle, public_url=long_url)
    assert problems and all("SMS too long" in p.message for p in problems)
    assert errors(bundle, public_url="http://127.0.0.1:8000") == []  # a short one counts as the sample's


@pytest.mark.parametrize("language", ["de", "it", "ru", "en"])
def test_R34_the_reason_reaches_the_customer_in_the_cancellation_and_rejection_on_every_channel(language):
    """A cancellation or a rejected request says why, by email, SMS and WhatsApp; a reason as long
    as the contract allows still leaves the SMS within two segments, and no reason leaves no
    WhatsApp parameter empty (the provider refuses one)."""
    from notifier.rendering.environment import Renderer
    from notifier.rendering.samples import sample_context

    renderer = Renderer(SHIPPED)
    for kind in ("cancellation", "request_rejected"):
        for reason, told in (("Praxis zu", True), ("Wasserschaden " * 35, False), ("", False)):
            context = sample_context(language, "specialist")
            context["booking"] = dict(context["booking"], cancel_reason=reason.strip(), cancelled_by="staff")
            out = {channel: renderer.render(kind, channel, "specialist", (language,), context,
                                            timezone="Europe/Berlin", locale=language)
                   for channel in ("email", "sms", "whatsapp")}
            where = f"{kind} {language} {reason[:14]!r}"
            if told:
                assert reason in out["email"].text and reason in out["email"].html, where
                assert reason in out["sms"].text, where
                assert reason in out["whatsapp"].params, where
            assert sms_segments(out["sms"].text)[1] <= 2, (where, len(out["sms"].text))
            assert all(p.strip() for p in out["whatsapp"].params), where


def test_R41_whatsapp_templates_resolve_per_resource_type_then_resource_like_the_files(bundle):
    from datetime import UTC, datetime

    from notifier.rendering.environment import Renderer

    manifest = bundle / "bundle.yaml"
    manifest.write_text(manifest.read_text() + (
        "  resources/sauna:\n    info: {template: sauna_info_v1, languages: {de: de, it: it, ru: ru, en: en},"
        " param_count: 1, params: [links.page]}\n"))
    context = {"customer": {"first_name": "Erika"}, "company": {"name": "Salon", "phone": "+49 30 1"},
               "links": {"page": LINK},
               "booking": {"starts_at": datetime(2026, 12, 3, 14, tzinfo=UTC),
                           "ends_at": datetime(2026, 12, 3, 16, tzinfo=UTC)}, "resource": {"name": "Sauna 2"}}
    renderer = Renderer(bundle)

    def template(resource_type, resource_id=None, kind="info"):
        return renderer.render(kind, "whatsapp", resource_type, ("de",), context, timezone="Europe/Berlin",
                               locale="de", resource_id=resource_id).provider_template

    assert template("specialist") == "booking_info_v2"
    assert template("equipment") == "booking_info_room_v1"  # reserved from one time to another
    assert template("equipment", "sauna") == "sauna_info_v1"  # the resource's own
    assert template("equipment", "sauna", kind="late") == "booking_late_v2"  # a kind it has not: the bundle's
    assert errors(bundle) == []

    text = manifest.read_text().replace("      param_count: 7\n", "      param_count: 6\n", 1)
    manifest.write_text(text.replace("  resources/sauna:", "  rooms:"))
    lines = manifest.read_text().splitlines()
    problems = {p.line: p.message for p in errors(bundle)}
    info_line = 1 + lines.index("  equipment:") + 1
    assert "booking_info_room_v1 (info) was approved with 6 parameters, the bundle gives 7" in problems[info_line]
    assert "'rooms' is neither a resource type" in problems[1 + lines.index("  rooms:")]
