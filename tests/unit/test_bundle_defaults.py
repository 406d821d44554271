"""A tenant's bundle written before a kind existed keeps working after the upgrade (R40, R41, R1):
the kind renders from the shipped default, `templates validate` and `templates load` say so as a
note, and a bundle that lacks a kind with no shipped default is refused as before.

The old bundle is the shipped one as it was before `staff_reply` (02e6ed2: the customer's message
forwarded to the staff) and before the staff notices' email channel (09e4990)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from notifier.channels.fake import FakeChannel
from notifier.cli import main
from notifier.domain.model import Channel, Tenant
from notifier.inbound import Inbound, receive_reply
from notifier.operations import Actor, PreviewRequest, preview_template
from notifier.rendering.bundles import shipped_defaults, validate_bundle
from notifier.services import apply_events
from notifier.settings import shipped_path
from notifier.store import schema as t
from tests.conftest import START, created, customer, make_context, make_settings, settings_env
from tests.unit.test_services import run_due

SHIPPED = shipped_path("templates")
TENANT = "clinic-full"  # staff notices on, German
PHONE = "+4915123456789"
ADDED_LATER = ["staff_cancelled.email", "staff_confirmed.email", "staff_new_request.email", "staff_released.email",
               "staff_reply.staff"]
OPS = Actor("key_0ps (ops)")
COMPANY = {"name": "Praxis Sonnenhof", "address": "Sonnenallee 5", "phone": "+49 30 5550199"}


def copy_without(target: Path, *patterns: str, source: Path = SHIPPED) -> Path:
    shutil.copytree(source, target)
    for pattern in patterns:
        for path in target.rglob(pattern):
            path.unlink()
    return target


@pytest.fixture
def old_bundle(tmp_path) -> Path:
    """The tenant's bundle, written before staff_reply and the staff's email: its own wording of the
    staff notice a cancellation sends, to tell it from the shipped one."""
    bundle = copy_without(tmp_path / "old", "staff_reply.*", "staff_*.email.j2")
    own = bundle / "default" / "de" / "staff_cancelled.staff.j2"
    own.write_text(own.read_text(encoding="utf-8").replace("{% block text %}", "{% block text %}[Sonnenhof] ", 1),
                   encoding="utf-8")
    return bundle


@pytest.fixture
def staff_ctx(tmp_path, clock):
    hooks = FakeChannel("staff")
    ctx = make_context(make_settings(tmp_path, staff_webhook_url="http://127.0.0.1:9/hooks"),
                       channels={Channel.EMAIL: FakeChannel("email"), Channel.STAFF: hooks})
    ctx.hooks = hooks
    yield ctx
    ctx.close()


def test_R40_R1_a_bundle_from_before_staff_reply_loads_and_the_reply_reaches_the_staff_in_the_shipped_words(
        staff_ctx, old_bundle):
    ctx = staff_ctx
    loaded = CliRunner().invoke(main, ["templates", "load", str(old_bundle), "--tenant", TENANT],
                                env=settings_env(ctx.settings))
    assert loaded.exit_code == 0, loaded.output
    assert f"from the shipped defaults: {', '.join(ADDED_LATER)}" in loaded.output
    with ctx.store.transaction() as tx:
        version = tx.active_bundle_version(TENANT)
    assert version is not None

    booking = created("b1", tenant=TENANT, resource={"id": "dr-weiss", "name": "Dr. Weiss", "type": "specialist"},
                      cust=customer("c1", phone=PHONE, consents={"sms": True, "email": True}))
    assert apply_events(ctx.store, [json.dumps(booking)], now=START, source="test").applied == 1
    said = "Kann ich statt um 8 auch um 9 Uhr kommen?"
    assert receive_reply(ctx.store, Inbound("twilio", Channel.SMS, "SM-old-bundle", sender=PHONE, text=said),
                         now=START, valid_after_visit_s=3600).status == "forwarded"
    run_due(ctx)

    [reply] = [m for m in ctx.hooks.sent if m.metadata["kind"] == "staff_reply"]
    shipped = (SHIPPED / "default" / "de" / "staff_reply.staff.j2").read_text(encoding="utf-8")
    assert reply.subject.startswith("Nachricht von") and shipped.startswith("{% block subject %}Nachricht von")
    assert said in reply.text
    with ctx.store.engine.connect() as conn:
        versions = dict(conn.execute(select(t.messages.c.kind, t.messages.c.template_version)
                                     .where(t.messages.c.channel == "staff")).all())
    # the tenant's bundle is the active one; the file came from the shipped templates, and says so
    assert versions["staff_reply"] == f"{version}:shipped:default/de/staff_reply.staff.j2"
    assert len(versions["staff_reply"]) <= t.messages.c.template_version.type.length

    # the preview says it too; the tenant's own wording stays its own
    preview = preview_template(ctx, PreviewRequest(TENANT, "staff_reply", "staff"), actor=OPS)
    assert "the active bundle has no staff_reply staff template: the shipped default is used" in preview.notes
    own = preview_template(ctx, PreviewRequest(TENANT, "staff_cancelled", "staff"), actor=OPS)
    assert own.text.startswith("[Sonnenhof] ") and own.notes == []


def test_R40_templates_validate_says_which_kinds_use_the_shipped_default_as_a_note(old_bundle):
    result = CliRunner().invoke(main, ["templates", "validate", str(old_bundle)])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if ": note: " in line]
    assert [line.split(":", 1)[0] for line in notes] == [f"{kind}.j2" for kind in
                                                         ["staff_new_request.email", "staff_confirmed.email",
                                                          "staff_cancelled.email", "staff_released.email",
                                                          "staff_reply.staff"]]
    assert "staff_reply.staff.j2: note: not in this bundle: staff_reply staff messages use the shipped default " \
           "(default/<language>/staff_reply.staff.j2 of " in result.output
    assert f"0 errors, 0 warnings; from the shipped defaults: {', '.join(ADDED_LATER)}" in result.output

    report = json.loads(CliRunner().invoke(main, ["templates", "validate", str(old_bundle), "--json"]).output)
    assert report["ok"] is True and report["shipped_defaults"] == ADDED_LATER
    assert {p["severity"] for p in report["problems"]} == {"note"}
    # the shipped bundle itself takes nothing from anywhere
    shipped = json.loads(CliRunner().invoke(main, ["templates", "validate", str(SHIPPED), "--json"]).output)
    assert shipped["ok"] is True and shipped["shipped_defaults"] == [] and shipped["problems"] == []


def test_R40_a_bundle_without_a_kind_that_has_no_shipped_default_is_still_refused(tmp_path, clock):
    """An operator's own templates (`templates_path`) without feedback: a bundle without it has
    nothing to fall back on, and is refused by validate and by load, each missing file named."""
    templates = copy_without(tmp_path / "ours", "feedback.*")
    bundle = copy_without(tmp_path / "bundle", "feedback.*", "staff_reply.*")
    found = validate_bundle(bundle, tenants=[Tenant(id="t", name="T", company=COMPANY)], shipped=templates)
    missing = [p for p in found if p.severity == "error"]
    assert {p.file for p in missing} == {f"{rt}/{lang}/feedback.{ch}.j2" for rt in ("specialist", "equipment")
                                         for lang in ("de", "it", "ru", "en") for ch in ("email", "sms")}
    assert str(missing[0]) == ("specialist/de/feedback.email.j2: error: missing: no feedback email template in 'de' "
                               "for specialist (nor in default/de/), and no shipped default to fall back on")
    assert shipped_defaults(found) == ["staff_reply.staff"]  # the kind that has one still falls back

    ctx = make_context(make_settings(tmp_path, templates_path=templates))
    try:
        refused = CliRunner().invoke(main, ["templates", "load", str(bundle), "--tenant", TENANT],
                                     env=settings_env(ctx.settings))
        assert refused.exit_code == 1 and "16 errors: nothing loaded, the active bundle stays" in refused.output
        assert "no shipped default to fall back on" in refused.output
        with ctx.store.transaction() as tx:
            assert tx.active_bundle_version(TENANT) is None
    finally:
        ctx.close()


def test_R41_a_kind_the_bundle_has_in_some_languages_only_is_missing_not_taken_from_the_shipped_default(tmp_path):
    """The bundle wrote staff_reply, but not in Italian: its own kind, to complete; the shipped
    Italian is not mixed in."""
    bundle = copy_without(tmp_path / "bundle", "it/staff_reply.*")
    found = validate_bundle(bundle)
    assert shipped_defaults(found) == []
    assert [str(p) for p in found] == [
        f"{rt}/it/staff_reply.staff.j2: error: missing: no staff_reply staff template in 'it' for {rt} "
        f"(nor in default/it/)" for rt in ("specialist", "equipment")]


def test_R42_company_details_a_shipped_default_uses_are_checked_against_the_tenant(old_bundle):
    """The shipped staff email names the company: a tenant without a name is told so at validation,
    the file named as the shipped one, not at the first staff email."""
    nameless = Tenant(id="nameless", name="N", company={k: v for k, v in COMPANY.items() if k != "name"})
    found = [p for p in validate_bundle(old_bundle, tenants=[nameless]) if p.file.startswith("shipped:")]
    assert {p.file for p in found} == {f"shipped:default/{lang}/staff_{kind}.email.j2"
                                       for lang in ("de", "it", "ru", "en")
                                       for kind in ("cancelled", "confirmed", "new_request", "released")}
    assert all(p.severity == "error" and p.line and "tenant 'nameless' has no company detail 'name'" in p.message
               for p in found)


def test_R42_a_company_detail_only_the_shipped_defaults_use_may_not_be_removed(ctx, old_bundle):
    """A bundle loaded before the upgrade that names the company nowhere itself: the shipped staff
    email it now falls back on does, so the booking system may not blank the name."""
    from notifier.rendering.bundles import read_bundle
    from tests.conftest import event

    for path in [*old_bundle.rglob("*.j2"), old_bundle / "bundle.yaml"]:
        path.write_text(path.read_text(encoding="utf-8").replace("company.name", "'Salon'"), encoding="utf-8")
    with ctx.store.transaction() as tx:
        tx.save_bundle("salon-berlin", read_bundle(old_bundle), ctx.clock.now())
    report = apply_events(ctx.store, [json.dumps(event("tenant.settings_updated", {"company": {"name": ""}}))],
                          now=ctx.clock.now(), source="test")
    assert report.dead_reasons == ["company detail(s) name are used by the tenant's active templates and may not be "
                                   "removed (R42); load a bundle without them first"]


def test_every_shipped_default_fits_the_template_version_a_message_records():
    """`<bundle version>:shipped:<file>` goes into messages.template_version (PostgreSQL refuses
    what is longer); a kind with a longer name would need the column widened first."""
    longest = max((str(p.relative_to(SHIPPED)) for p in SHIPPED.rglob("*.j2")), key=len)
    assert len(f"{'0' * 12}:shipped:{longest}") <= t.messages.c.template_version.type.length, longest
