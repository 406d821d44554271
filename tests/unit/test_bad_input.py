"""Bad input, counted (issue 9; N3, N4, N5, N6, R40): what `python -m bench.bad_input` found,
kept from coming back, and the generated families run small with no promise broken.

Found by the counts: an event whose revision does not fit the store stopped its whole batch
(on PostgreSQL the ingester retried it for ever, as if the database were down); a bundle with an
undecodable file or a manifest that is not the documented shape made `validate_bundle` raise
instead of reporting; an email or staff template that parses but fails when rendered passed
validation and failed at its first send; a template that is a link out of the bundle was read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import bad_input
from notifier.domain.model import Tenant
from notifier.rendering.bundles import validate_bundle
from notifier.services import apply_events
from notifier.settings import shipped_path
from tests.conftest import START, created

TENANT = Tenant(id="salon", name="Salon", company={"name": "Salon", "address": "Hauptstr. 1", "phone": "+49 30 1"})


@pytest.fixture
def bundle(tmp_path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(shipped_path("templates"), copy)
    return copy


def errors_in(root: Path, name: str) -> list[str]:
    return [p.message for p in validate_bundle(root, tenants=[TENANT]) if p.severity == "error" and p.file == name]


def test_N3_a_revision_the_store_cannot_hold_is_dead_lettered_and_the_batch_goes_on(ctx):
    huge = dict(created("b-huge"), revision=2**63)
    report = apply_events(ctx.store, [json.dumps(huge), json.dumps(created("b-after"))], now=START, source="test")
    assert (report.dead, report.applied) == (1, 1)
    assert "revision" in report.dead_reasons[0]


@pytest.mark.parametrize("manifest", [
    "whatsapp: [",  # not YAML
    "- a\n- b\n",  # not a mapping
    "whatsapp: 42",
    "whatsapp:\n  info:\n    template: x\n    param_count: many\n    params: [a]\n    languages: {de: de}",
    "whatsapp:\n  info:\n    template: x\n    param_count: 1\n    params: 5\n    languages: {de: de}",
    "!!python/object/apply:os.system ['id']",
    "\x00\x01",
])
def test_N3_R40_a_broken_manifest_is_reported_with_the_reason_not_raised(bundle, manifest):
    (bundle / "bundle.yaml").write_text(manifest, encoding="utf-8")
    assert errors_in(bundle, "bundle.yaml")


def test_N3_a_template_that_is_not_utf8_is_reported_not_raised(bundle):
    (bundle / "default" / "de" / "change.email.j2").write_bytes(b"{% block text %}caf\xe9{% endblock %}")
    assert any("not UTF-8" in e for e in errors_in(bundle, "default/de/change.email.j2"))


@pytest.mark.parametrize("expression", ["{{ 1 / 0 }}", "{{ [][0] }}", "{% include 'missing.j2' %}",
                                        "{{ booking.starts_at|date(none) }}"])
@pytest.mark.parametrize("name", ["default/de/change.email.j2", "default/de/staff_cancelled.staff.j2"])
def test_N3_a_template_that_fails_when_rendered_is_reported_at_validation(bundle, name, expression):
    path = bundle / name
    path.write_text(path.read_text(encoding="utf-8").replace("{% block text %}", "{% block text %}" + expression),
                    encoding="utf-8")
    assert any("does not render" in e for e in errors_in(bundle, name))


def test_R40_a_template_that_links_out_of_the_bundle_is_refused(bundle, tmp_path):
    outside = tmp_path / "elsewhere.email.j2"
    shutil.copy(bundle / "default" / "de" / "change.email.j2", outside)
    (bundle / "default" / "de" / "leak.email.j2").symlink_to(outside)
    assert errors_in(bundle, "default/de/leak.email.j2") == ["a link to a file outside the bundle"]


def test_the_shipped_bundle_still_renders_every_template():
    assert [p for p in validate_bundle(shipped_path("templates"), tenants=[TENANT]) if p.severity == "error"] == []


# --- the generated families, small: every input ends in a stated outcome, none breaks a promise ----------

def test_N3_events_generated_and_corpus_each_end_dead_lettered_applied_or_ignored(tmp_path):
    """Issue 15's poison families among them: each refused by the contract with its reason."""
    tallies = bad_input.fuzz_events(tmp_path, 40, seed=1, store_url=f"sqlite:///{tmp_path / 'e.db'}", label="SQLite")
    for tally in tallies:
        assert tally.tried and tally.bugs == 0, tally.outcomes


def test_N1_N3_every_loop_goes_on_past_rows_the_contract_refuses_today(tmp_path):
    """Stored rows another version may have left (settings out of the model, unknown zones,
    channels and statuses, a message claimed `max_claims` times): the due sweep, dispatch and the
    state sweep serve every other booking and tenant, and the booking at fault ends with its reason."""
    [tally] = bad_input.fuzz_loops(tmp_path, f"sqlite:///{tmp_path / 'loops.db'}", "SQLite")
    assert tally.tried == len(bad_input._legacy_rows()) and tally.bugs == 0, tally.examples
    assert not [o for o in tally.outcomes if o.startswith("still works")], tally.examples


def test_N3_bad_tenant_files_are_refused_naming_file_and_key_and_load_nothing(tmp_path):
    for tally in bad_input.fuzz_tenant_files(tmp_path, 0, seed=1):
        assert tally.tried and tally.bugs == 0, tally.outcomes


def test_N4_tampered_foreign_expired_and_replayed_links_never_act(tmp_path):
    for tally in bad_input.fuzz_links(tmp_path, 40, seed=1):
        assert tally.tried and tally.bugs == 0, tally.outcomes


def test_N5_forged_callbacks_are_refused_and_change_nothing(tmp_path):
    tallies = {t.family: t for t in bad_input.fuzz_callbacks(tmp_path, 30, seed=1)}
    for family in ("Twilio, forged or missing signature", "Meta, forged or missing signature",
                   "Twilio, signed, malformed or unknown fields",
                   "signed, another provider's message id (Twilio for Meta or email, Meta for Twilio or email)"):
        assert tallies[family].tried and tallies[family].bugs == 0, tallies[family].outcomes


def test_N3_N5_a_signed_but_malformed_meta_callback_is_a_clear_4xx_or_ignored(tmp_path):
    tallies = {t.family: t for t in bad_input.fuzz_callbacks(tmp_path, 30, seed=1)}
    assert tallies["Meta, signed, malformed body"].bugs == 0, tallies["Meta, signed, malformed body"].outcomes
