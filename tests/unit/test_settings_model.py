"""The notification-settings model (R26, R43): one typed, bounded model for every surface that
accepts settings (events, tenant files), and what it refuses (N3, issue 15)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from notifier.domain import events as ev
from notifier.domain.config import InvalidConfig, tenant_config
from notifier.domain.model import NotificationSettings, TenantSettings
from notifier.services import TenantFilesInvalid, load_tenants
from tests.conftest import ROOT, START, TENANTS, event, make_settings, settings_env

BAD_SETTINGS = [  # (settings, key path, words of the reason)
    ({"late": {"delay_s": 1e30}}, "late.delay_s", "valid integer"),
    ({"late": {"release_delay_s": 10**12}}, "late.release_delay_s", "less than or equal"),
    ({"info": {"delay": 600}}, "info.delay", "unknown key"),
    ({"info": {"delay_s": "ten"}}, "info.delay_s", "valid integer"),
    ({"info": {"delay_s": -5}}, "info.delay_s", "greater than or equal"),
    ({"confirmation": {"repetitions": 1_000_000}}, "confirmation.repetitions", "less than or equal"),
    ({"confirmation": {"repetitions": 1.5}}, "confirmation.repetitions", "valid integer"),
    ({"reminder": {"morning_at": 630}}, "reminder.morning_at", "HH:MM"),
    ({"reminder": {"morning_at": "25:99"}}, "reminder.morning_at", "HH:MM"),
    ({"info": {"enabled": "yes"}}, "info.enabled", "valid boolean"),
    ({"info": {"channels": ["pigeon"]}}, "info.channels.0", "email"),
    ({"staff": {"channels": ["sms"]}}, "staff.channels", "not allowed"),
    ({"staff": {"email": "a@b.example, c@d.example"}}, "staff.email", "not one email address"),
    ({"fallback": {"whatsapp": "activity"}}, "fallback", "customer channels only"),
    ({"channel_policy": "some"}, "channel_policy", "first"),
    ({"unavailable": ["sms"]}, "unavailable", "unknown key"),  # the platform's, never a tenant's (R6)
    ({"nonsense": {}}, "nonsense", "unknown key"),
]


@pytest.mark.parametrize(("settings", "path", "words"), BAD_SETTINGS)
def test_N3_R26_settings_that_do_not_fit_the_model_are_refused_with_key_and_reason(settings, path, words):
    body = json.dumps(event("resource.updated", {"resource": {"id": "anna", "name": "Anna"}, "settings": settings}))
    with pytest.raises(ev.InvalidEvent) as refused:
        ev.parse_event(body)
    assert f"settings.{path}: " in refused.value.reason and words in refused.value.reason
    body = json.dumps(event("tenant.settings_updated", {"settings": settings}))
    with pytest.raises(ev.InvalidEvent, match=f"settings.{path.replace('.', '[.]')}: "):
        ev.parse_event(body)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_N3_non_finite_numbers_are_refused_not_stored_as_null(literal):
    body = json.dumps(event("resource.updated", {"resource": {"id": "anna", "name": "Anna"},
                                                 "settings": {"late": {"delay_s": 0}}})).encode()
    with pytest.raises(ev.InvalidEvent, match="late.delay_s"):
        ev.parse_event(body.replace(b'"delay_s": 0', b'"delay_s": ' + literal))


def test_R26_R43_valid_overrides_are_kept_as_given_and_merged_key_by_key_with_the_defaults():
    tenant = TenantSettings.model_validate({"late": {"delay_s": 600}, "reminder": {"morning_at": "09:30"}})
    resource = NotificationSettings.model_validate({"late": {"release_delay_s": 3600}, "channel_policy": "all"})
    assert tenant.overrides() == {"late": {"delay_s": 600}, "reminder": {"morning_at": "09:30"}}
    merged = NotificationSettings.from_layers(tenant.overrides(), resource.overrides())
    assert (merged.late.delay_s, merged.late.release_delay_s, merged.late.counter_delay_s) == (600, 3600, 600)
    assert merged.reminder.morning_at.strftime("%H:%M") == "09:30" and merged.channel_policy == "all"
    assert merged.info.channel_policy == "all" and merged.change.channel_policy == "all"


def test_N3_zones_names_and_addresses_the_store_or_a_mail_header_cannot_hold_are_refused():
    cases = [
        (event("resource.updated", {"resource": {"id": "r", "name": "R"}, "timezone": "Mars/Olympus"}),
         "data.timezone: unknown time zone"),
        (event("tenant.settings_updated", {"timezone": "Invalid/Zone"}), "data.timezone: unknown time zone"),
        (event("tenant.settings_updated", {"company": {"name": "Salon\r\nBcc: x@example.org"}}),
         "data.company.name: control character U[+]000D"),
    ]
    for body, reason in cases:
        with pytest.raises(ev.InvalidEvent, match=reason):
            ev.parse_event(json.dumps(body))


# --- tenant files -------------------------------------------------------------------------------

def test_N3_a_tenant_file_goes_through_the_same_model(tmp_path):
    doc = {"id": "t1", "name": "T", "timezone": "Mars/Olympus", "settings": {"info": {"delay": 600}},
           "resources": [{"id": "r1", "name": "R", "settings": {"late": {"delay_s": 1e30}}}]}
    with pytest.raises(InvalidConfig) as refused:
        tenant_config(doc)
    problems = "\n".join(refused.value.problems)
    assert "timezone: unknown time zone 'Mars/Olympus'" in problems
    assert "settings.info.delay: unknown key" in problems
    assert "resources.0.settings.late.delay_s: Input should be a valid integer (got 1e+30)" in problems


def test_N3_load_tenants_loads_the_good_files_and_names_file_key_and_reason_of_the_bad(ctx, tmp_path):
    folder = tmp_path / "tenants"
    shutil.copytree(TENANTS, folder)
    bad = folder / "zz-bad.yaml"
    bad.write_text("id: zz-bad\nname: Bad\nresources: [{id: r1, name: R}]\nsettings:\n  late: {delay_s: 1.0e+30}\n")
    with pytest.raises(TenantFilesInvalid) as refused:
        load_tenants(ctx.store, folder, now=START)
    assert refused.value.problems == [f"{bad}: settings.late.delay_s: Input should be a valid integer (got 1e+30)"]
    assert "salon-berlin" in refused.value.loaded and "zz-bad" not in refused.value.loaded
    with ctx.store.transaction() as tx:
        assert tx.tenant("zz-bad") is None and tx.resource("zz-bad", "r1") is None


def test_N3_cli_tenants_load_exits_1_naming_file_key_and_reason_and_loads_nothing_of_that_file(tmp_path, clock):
    """Acceptance (issue 15): `notifier tenants load` on a file with a bad setting."""
    settings = make_settings(tmp_path)
    env = settings_env(settings)
    folder = tmp_path / "tenants"
    folder.mkdir()
    bad = folder / "salon-bad.yaml"
    bad.write_text("id: salon-bad\nname: Salon\nresources: [{id: anna, name: Anna}]\n"
                   "settings:\n  info: {delay_s: ten}\n")
    run = subprocess.run([sys.executable, "-m", "notifier.cli", "init"], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([sys.executable, "-m", "notifier.cli", "tenants", "load", str(folder)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert f"{bad}: settings.info.delay_s: Input should be a valid integer (got 'ten')" in run.stderr
    assert "Traceback" not in run.stderr
    from notifier.store.sql import Store, make_engine

    store = Store(make_engine(settings.database_url))
    with store.transaction() as tx:
        assert tx.tenant("salon-bad") is None and tx.resource("salon-bad", "anna") is None
    store.engine.dispose()
