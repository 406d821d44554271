"""Outbound URLs come from the operator, never from events (issue 16; docs/security.md).

A webhook URL is set in the operator's tenant file; an event that tries to set one is a dead
letter. A URL that reaches a loopback, private or link-local address is refused unless its
network is allowed; what a receiver answers is not stored, only the status and its phrase.
The receiver here is a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from notifier.bootstrap import build_channels
from notifier.channels.fake import FakeChannel
from notifier.channels.outbound import parse_networks, refusal
from notifier.devtools import HttpSink
from notifier.domain.model import Channel
from notifier.services import TenantFilesInvalid, apply_events, load_tenants, timeline_of
from tests.conftest import START, created, event, make_context, make_settings
from tests.unit.test_services import run_due

TENANT = "salon-hooks"
SECRET_ANSWER = b"INTERNAL-ADMIN-PAGE root:x:0:0 token=abc123"


def tenant_file(folder, url: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{TENANT}.yaml").write_text(json.dumps({
        "id": TENANT, "name": "Salon Hooks", "timezone": "Europe/Berlin", "home_region": "DE", "language": "de",
        "channels": ["email"], "company": {"name": "Salon Hooks"}, "webhook_url": url,
        "resources": [{"id": "anna", "name": "Anna Weber", "type": "specialist"}]}))


@pytest.fixture(autouse=True)
def _clock(clock):  # the simulated clock at START (tests/conftest.py)
    return clock


@pytest.fixture
def hooks():
    with HttpSink() as sink:
        yield sink


def world(tmp_path, url: str, allowed: str):
    tenant_file(tmp_path / "tenants", url)
    settings = make_settings(tmp_path, tenants_path=tmp_path / "tenants", webhook_allowed_networks=allowed)
    channels = build_channels(settings)
    channels[Channel.EMAIL] = FakeChannel("email")
    ctx = make_context(settings, channels=channels)
    return ctx


def cancel_by_customer(ctx) -> list[dict]:
    """A customer's cancellation: the staff is told at once (R14), over the tenant's webhook."""
    apply_events(ctx.store, [json.dumps(created("b1", tenant=TENANT)),
                             json.dumps(event("booking.cancelled", {"booking_id": "b1", "by": "customer"},
                                              tenant=TENANT, revision=2))], now=START, source="test")
    ctx.clock.set(START + timedelta(seconds=1))
    run_due(ctx)
    return timeline_of(ctx.store, TENANT, "b1")


def staff_failures(entries: list[dict]) -> list[str]:
    return [str(e["detail"].get("reason")) for e in entries
            if e["kind"] == "message.failed" and e["detail"].get("channel") == "staff"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_webhook_url_reaching_loopback_is_refused_and_nothing_is_sent(tmp_path, hooks, host):
    ctx = world(tmp_path, hooks.url.replace("127.0.0.1", host), allowed="")
    try:
        entries = cancel_by_customer(ctx)
    finally:
        ctx.close()
    [reason] = staff_failures(entries)
    assert "webhook address refused: 127.0.0.1 is a loopback address" in reason
    assert "webhook_allowed_networks" in reason
    assert hooks.requests == []


def test_an_allowed_receivers_answer_is_not_stored_only_its_status(tmp_path, hooks):
    hooks.answer_body = SECRET_ANSWER
    hooks.script.append(400)
    ctx = world(tmp_path, hooks.url, allowed="127.0.0.1/32")
    try:
        entries = cancel_by_customer(ctx)
        with ctx.store.engine.connect() as conn:
            stored = "\n".join(str(tuple(r)) for table in ("timeline", "send_attempts", "messages")
                               for r in conn.exec_driver_sql(f"SELECT * FROM {table}"))
    finally:
        ctx.close()
    assert staff_failures(entries) == ["webhook answered 400 Bad Request"]
    assert "INTERNAL-ADMIN-PAGE" not in stored and "abc123" not in stored


def test_an_event_cannot_set_a_webhook_url(tmp_path, hooks):
    ctx = world(tmp_path, hooks.url, allowed="127.0.0.1/32")
    try:
        report = apply_events(ctx.store, [json.dumps(event("tenant.settings_updated", {
            "settings": {"webhook_url": "http://169.254.169.254/latest/meta-data/"}}, tenant=TENANT, revision=1))],
            now=START, source="redis:notifier.events")
        with ctx.store.transaction() as tx:
            tenant = tx.tenant(TENANT)
    finally:
        ctx.close()
    assert report.dead == 1 and "webhook_url is set by the operator" in report.dead_reasons[0]
    assert tenant.webhook_url == hooks.url and "webhook_url" not in tenant.settings


def test_a_tenant_file_with_a_bad_webhook_url_or_one_in_its_settings_is_refused(tmp_path, ctx):
    folder = tmp_path / "bad"
    tenant_file(folder, "file:///etc/passwd")
    with pytest.raises(TenantFilesInvalid, match=r"webhook_url: String should match pattern .* \(got 'file:///etc"):
        load_tenants(ctx.store, folder, now=START)
    (folder / f"{TENANT}.yaml").write_text(json.dumps({"id": TENANT, "name": "x", "settings": {
        "webhook_url": "https://hooks.example.com/n"}}))
    with pytest.raises(TenantFilesInvalid, match="settings: webhook_url is set by the operator at the top of the"):
        load_tenants(ctx.store, folder, now=START)


@pytest.mark.parametrize(("address", "allowed", "why"), [
    ("127.0.0.1", "", "loopback"), ("::1", "", "loopback"), ("::ffff:127.0.0.1", "", "loopback"),
    ("10.1.2.3", "", "private"), ("192.168.0.10", "", "private"), ("169.254.169.254", "", "link-local"),
    ("fe80::1", "", "link-local"), ("100.64.0.1", "", "not a public"), ("0.0.0.0", "", "unspecified"),
    ("10.1.2.3", "10.0.0.0/8", None), ("127.0.0.1", "127.0.0.1", None), ("93.184.215.14", "", None),
    ("2606:4700::1111", "", None)])
def test_which_addresses_are_refused(address, allowed, why):
    reason = refusal(address, parse_networks(allowed))
    assert (reason is None) if why is None else (why in reason)
