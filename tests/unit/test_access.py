"""Who may call which route of the web app (issue 16; docs/security.md).

Every route the app serves is enumerated, from its OpenAPI document and from the app's own
route table (which also holds the routes left out of the document): each `/api` route answers
401 without a key, 403 with another tenant's key (or a tenant's key on an operator route) and
200 with the right key; every other route is on the public list below with the reason it may
be public. A route added later without protection fails here.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from fastapi.testclient import TestClient
from starlette.routing import Route

from notifier.access import create_key, list_keys, revoke_key
from notifier.services import apply_events
from notifier.web.app import create_app
from tests.conftest import START, created

TENANT, OTHER = "salon-berlin", "studio-roma"
BOOKING = "B-1001"
# what a path parameter is filled with; a route with a parameter not named here fails the test
PATH_VALUES = {"tenant_id": TENANT, "booking_id": BOOKING, "token": "not-a-token", "message_id": "1",
               "dead_letter_id": "1"}
# routes anyone may call, and why (docs/security.md says the same)
PUBLIC = {
    "/health": "up or down only; the details need the metrics token",
    "/metrics": "needs the metrics token itself (tested below)",
    "/openapi.json": "needs a key itself (tested below)",
    "/callbacks/twilio": "accepted only with Twilio's signature (N5)",
    "/callbacks/meta": "accepted only with Meta's signature or verify token (N5)",
    "/inbound/twilio": "customers' messages, accepted only with Twilio's signature (N5, R3, R11, R14)",
    "/l/{token}": "the customer's page: the opaque token is the key (N4)",
    "/l/{token}/{action}": "the page's buttons, under the same token (N4)",
    "/l/{token}/calendar.ics": "the page's calendar card, under the same token (R22, N4)",
    "/console/login": "the console's sign-in form: it asks for an API key, checked on POST (issue 22)",
}
CONSOLE = "/console"  # every other console route needs a session: an API key signed in (tested below)


@pytest.fixture
def world(ctx):
    apply_events(ctx.store, [json.dumps(created(BOOKING, tenant=TENANT))], now=START, source="test")
    keys = {who: create_key(ctx.store, tenant_id=tenant, name=who, now=START).key
            for who, tenant in (("tenant", TENANT), ("other", OTHER), ("operator", None))}
    return ctx, TestClient(create_app(ctx)), keys


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def concrete(path: str) -> str:
    names = re.findall(r"{(\w+)}", path)
    missing = [n for n in names if n not in PATH_VALUES]
    assert not missing, f"{path}: add a value for {missing} to PATH_VALUES"
    return path.format(**{n: PATH_VALUES[n] for n in names})


def api_routes(app) -> list[tuple[str, str]]:
    document = app.openapi()
    routes = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    routes |= {(method, path) for path, methods in _route_table(app.routes) for method in methods - {"HEAD"}}
    return sorted(routes)


def _route_table(routes, prefix: str = ""):
    """Every route the app answers, those of included routers too (left out of the OpenAPI
    document or not): FastAPI keeps an included router as one entry that holds its routes."""
    for route in routes:
        if isinstance(route, Route):
            yield prefix + route.path, set(route.methods or ())
        elif hasattr(route, "original_router"):
            yield from _route_table(route.original_router.routes, prefix + route.include_context.prefix)


def test_every_api_route_needs_a_key_and_refuses_other_tenants(world):
    ctx, client, keys = world
    routes = api_routes(client.app)
    api = [(m, p) for m, p in routes if p.startswith("/api/")]
    assert len(api) >= 4
    assert not [p for _, p in routes if not p.startswith(("/api/", CONSOLE)) and p not in PUBLIC], \
        "a route outside /api that is not on the public list"
    for method, path in api:
        url = concrete(path)

        def call(method=method, url=url, **kw):
            return client.request(method, url, **kw)

        no_key = call()
        assert no_key.status_code == 401 and no_key.headers["www-authenticate"] == "Bearer", (method, path)
        assert call(headers=bearer("ntf_" + "x" * 43)).status_code == 401, (method, path)
        tenant_route = "{tenant_id}" in path
        own = call(headers=bearer(keys["tenant"]))
        other = call(headers=bearer(keys["other"]))
        operator = call(headers=bearer(keys["operator"]))
        if tenant_route:
            assert other.status_code == 403, (method, path, other.text)
            assert own.status_code == 200, (method, path, own.text)
        else:  # cross-tenant: operators only
            assert own.status_code == 403 and other.status_code == 403, (method, path)
        assert operator.status_code == 200, (method, path, operator.text)
    document = client.app.openapi()
    assert document["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer", "description": document["components"]["securitySchemes"]["apiKey"][
            "description"]}
    for method, path in api:
        assert document["paths"][path][method.lower()]["security"] == [{"apiKey": []}], (method, path)


def test_a_revoked_key_is_refused_from_the_next_request_on(world):
    ctx, client, keys = world
    url = f"/api/tenants/{TENANT}/bookings/{BOOKING}/timeline"
    assert client.get(url, headers=bearer(keys["tenant"])).status_code == 200
    key_id = next(k["id"] for k in list_keys(ctx.store) if k["name"] == "tenant")
    assert revoke_key(ctx.store, key_id, now=START)
    assert client.get(url, headers=bearer(keys["tenant"])).status_code == 401
    assert not revoke_key(ctx.store, key_id, now=START)  # once


def test_keys_are_stored_as_hashes_only(world):
    ctx, _, keys = world
    with ctx.store.engine.connect() as conn:
        dump = "\n".join(str(tuple(row)) for row in conn.exec_driver_sql("SELECT * FROM api_keys"))
    assert all(key not in dump and key[4:] not in dump for key in keys.values())


def test_openapi_is_served_to_key_holders_only_and_there_is_no_swagger_page(world):
    _, client, keys = world
    assert client.get("/openapi.json").status_code == 401
    assert client.get("/openapi.json", headers=bearer(keys["other"])).json()["info"]["title"] == "notifier"
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404


def test_metrics_need_their_own_token_and_health_tells_the_public_only_up_or_down(world):
    ctx, client, keys = world
    token = ctx.settings.metrics_token
    assert token
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(keys["operator"])).status_code == 401  # an API key is not it
    assert client.get("/metrics", headers=bearer(token)).status_code == 200
    # the embedded broker's first probe opens its SQLite file, which takes seconds on a loaded
    # machine; the public answer is up or down and nothing more, and it comes up within a deadline
    deadline = time.monotonic() + 60
    while (public := client.get("/health").json()) != {"status": "ok"} and time.monotonic() < deadline:
        assert set(public) == {"status"}
    assert public == {"status": "ok"}
    detailed = client.get("/health", headers=bearer(token)).json()
    assert set(detailed["checks"]) == {"database", "broker"}


def test_metrics_are_off_without_a_token(world):
    from dataclasses import replace
    from types import SimpleNamespace

    ctx, _, _ = world
    off = SimpleNamespace(settings=replace(ctx.settings, metrics_token=""), store=ctx.store, clock=ctx.clock,
                          links=ctx.links)
    client = TestClient(create_app(off))
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers=bearer("")).status_code == 404


def test_no_redirect_is_built_from_the_host_header(world):
    _, client, keys = world
    answer = client.get("/api/dead-letters/", headers={**bearer(keys["operator"]), "Host": "evil.example"},
                        follow_redirects=False)
    assert answer.status_code == 404 and "evil.example" not in answer.headers.get("location", "")


def console_routes(app) -> list[tuple[str, str]]:
    return [(m, p) for m, p in api_routes(app) if p.startswith(CONSOLE) and p not in PUBLIC]


def signed_in(client, key: str):
    """A browser's session of the console: the key given to the sign-in form."""
    import re as _re

    from fastapi.testclient import TestClient

    browser = TestClient(client.app, base_url="https://testserver", follow_redirects=False)
    form = browser.get("/console/login")
    token = _re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    assert browser.post("/console/login", data={"key": key, "csrf": token}).status_code == 303
    return browser


def test_every_console_route_needs_a_signed_in_key_and_a_csrf_token(world):
    """Issue 22: the console's pages send a visitor without a session to the sign-in form, its
    POSTs refuse one (403), and with a session a POST without the page's token is refused too."""
    ctx, client, keys = world
    routes = console_routes(client.app)
    assert len(routes) >= 8
    from fastapi.testclient import TestClient

    stranger = TestClient(client.app, base_url="https://testserver", follow_redirects=False)
    operator = signed_in(client, keys["operator"])
    for method, path in routes:
        url = concrete(path)
        refused = stranger.request(method, url, headers=bearer(keys["operator"]))  # a bearer header is not a session
        if method == "GET":
            assert refused.status_code == 303 and refused.headers["location"].startswith("/console/login?next="), url
        else:
            assert refused.status_code == 403, (method, url)
            assert operator.request(method, url, data={"csrf": "forged"}).status_code == 403, (method, url)
    for method, path in routes:
        if method == "GET":
            assert operator.get(concrete(path)).status_code in (200, 404, 422), path  # 404: a page that says so
    assert stranger.post("/console/login", data={"key": keys["operator"]}).status_code == 403  # no form token


def test_a_tenants_key_sees_its_tenant_only_in_the_console(world):
    ctx, client, keys = world
    other = signed_in(client, keys["other"])
    page = other.get(f"/console/tenants/{TENANT}/bookings/{BOOKING}")
    assert page.status_code == 404 and BOOKING not in page.text.replace(f"No booking {BOOKING}", "")
    assert other.get("/console", params={"tenant": TENANT}).text.count("data-message=") == 0
    assert "sign in with an operator" in other.get("/console/queue").text
    own = signed_in(client, keys["tenant"])
    assert own.get(f"/console/tenants/{TENANT}/bookings/{BOOKING}").status_code == 200
    import re as _re

    csrf = _re.search(r'name="csrf" value="([^"]+)"', own.get("/console/queue").text).group(1)
    assert own.post("/console/dead-letters/1/replay", data={"csrf": csrf}).status_code == 403


def test_a_revoked_key_ends_its_console_session_and_the_cookie_is_strict(world):
    ctx, client, keys = world
    from fastapi.testclient import TestClient

    browser = TestClient(client.app, base_url="https://testserver", follow_redirects=False)
    import re as _re

    form = browser.get("/console/login")
    token = _re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    answer = browser.post("/console/login", data={"key": keys["operator"], "csrf": token})
    cookie = answer.headers["set-cookie"].lower()
    for part in ("httponly", "secure", "samesite=strict", "path=/console", "max-age="):
        assert part in cookie, part
    assert browser.get("/console").status_code == 200
    key_id = next(k["id"] for k in list_keys(ctx.store) if k["name"] == "operator")
    revoke_key(ctx.store, key_id, now=START)
    assert browser.get("/console").status_code == 303

