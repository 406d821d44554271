"""What the public web app refuses before it does any work (issue 16; docs/security.md):
bodies over the limit, signatures in odd characters, days and ids out of range; and what the
customer's link pages tell the browser (N4)."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from notifier.services import apply_events
from notifier.web.app import create_app
from notifier.web.pages import security_headers
from tests.conftest import START, api_client, created

MB = 1 << 20


@pytest.fixture
def app(ctx):
    return create_app(ctx)


def call_asgi(app, *, headers: list[tuple[bytes, bytes]], chunks: int, chunk_bytes: int = 64 * 1024):
    """POST /callbacks/meta straight into the ASGI app; the body is handed over as the app asks
    for it. Answers the status and how many bytes the app took."""
    taken, sent = 0, []

    async def receive():
        nonlocal taken
        if taken >= chunks * chunk_bytes:
            return {"type": "http.request", "body": b"", "more_body": False}
        taken += chunk_bytes
        return {"type": "http.request", "body": b"x" * chunk_bytes, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/callbacks/meta", "raw_path": b"/callbacks/meta", "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], taken


def test_a_100_mb_unsigned_callback_is_refused_before_it_is_read(app, ctx):
    limit = ctx.settings.max_body_bytes
    status, taken = call_asgi(app, headers=[(b"content-length", str(100 * MB).encode())], chunks=1600)
    assert (status, taken) == (413, 0)
    # chunked, without a length: refused once the bytes received pass the limit, not at the end
    status, taken = call_asgi(app, headers=[(b"transfer-encoding", b"chunked")], chunks=1600)
    assert status == 413 and taken <= limit + 64 * 1024
    # under the limit the signature decides, as before
    status, _ = call_asgi(app, headers=[(b"content-length", str(64 * 1024).encode())], chunks=1)
    assert status == 403


def test_N5_a_signature_header_in_non_ascii_characters_is_a_403(app):
    client = TestClient(app, raise_server_exceptions=False)
    body = json.dumps({"entry": []}).encode()
    meta = client.post("/callbacks/meta", content=body, headers={"X-Hub-Signature-256": "sha256=é".encode("latin-1")})
    twilio = client.post("/callbacks/twilio", data={"MessageSid": "SM1", "MessageStatus": "delivered"},
                         headers={"X-Twilio-Signature": "ü".encode("latin-1")})
    verify = client.get("/callbacks/meta", params={"hub.mode": "subscribe", "hub.verify_token": "ключ",
                                                   "hub.challenge": "1"})
    assert (meta.status_code, twilio.status_code, verify.status_code) == (403, 403, 403)


def test_out_of_range_query_parameters_are_422_not_500(ctx):
    client = api_client(ctx)
    tenant = "salon-berlin"
    for path, params in ((f"/api/tenants/{tenant}/counters", {"day": "9999-12-31"}),
                         (f"/api/tenants/{tenant}/markers", {"day": "0001-01-01"}),
                         ("/api/dead-letters", {"after": "99999999999999999999"})):
        answer = client.get(path, params=params)
        assert answer.status_code == 422, (path, params, answer.text)
    assert client.get(f"/api/tenants/{tenant}/counters", params={"day": "9998-12-31"}).status_code == 200


def test_N4_link_pages_forbid_framing_referrers_and_caching_and_allow_only_their_own_style(ctx, app):
    apply_events(ctx.store, [json.dumps(created("b1", starts_at=START + timedelta(days=1)))], now=START,
                 source="test")
    token = ctx.links.token("salon-berlin", "b1")
    with ctx.store.transaction() as tx:
        tx.save_links([(token, "salon-berlin", "b1")], START)
    client = TestClient(app)
    for answer in (client.get(f"/l/{token}"), client.get("/l/forged"), client.post("/l/forged/confirm")):
        headers = answer.headers
        policy = dict(part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";"))
        assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
        assert policy["form-action"] == "'self'" and "unsafe-inline" not in headers["content-security-policy"]
        [style] = re.findall(r"<style>(.*?)</style>", answer.text, re.S)
        assert policy["style-src"] == security_headers(f"<style>{style}</style>")["Content-Security-Policy"].split(
            "style-src ")[1]
        assert headers["referrer-policy"] == "no-referrer" and headers["cache-control"] == "no-store"
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(("args", "expected"), [
    ([], ["flower", "--port=5555", "--address=127.0.0.1"]),
    (["--port", "5566", "--basic-auth=ops:s3cret", "--url-prefix=flower"],
     ["flower", "--port=5566", "--address=127.0.0.1", "--basic-auth=ops:s3cret", "--url-prefix=flower"]),
    (["--address", "0.0.0.0", "--auth=.*@example\\.org"],
     ["flower", "--port=5555", "--address=0.0.0.0", "--auth=.*@example\\.org"]),
])
def test_flower_listens_on_loopback_by_default_and_takes_flowers_own_options(monkeypatch, args, expected):
    from click.testing import CliRunner

    from notifier import cli
    from tasks.celery_app import app as celery_app

    started = []
    monkeypatch.setattr(celery_app, "start", started.append)
    result = CliRunner().invoke(cli.main, ["flower", *args])
    assert result.exit_code == 0, result.output
    assert started == [expected]
