"""The JSON API and `/metrics` of the web app on the embedded store (SQLite, embedded broker):
what a booking system's planner, an operator and Prometheus read (R12, R16, N3, P4, P5)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from notifier.services import apply_events, sweep_states
from notifier.store.sql import Store
from notifier.web.app import create_app
from tests.conftest import METRICS_HEADERS, START, api_client, created, customer
from tests.unit.test_services import run_due

TENANT = "clinic-full"
VISIT = START + timedelta(days=1, hours=3)  # Wednesday 2 December, 10:00 in Berlin
PERSONAL = "+491512345678"


def book(ctx, booking_id, resource="dr-weiss", starts_at=VISIT, tenant=TENANT):
    names = {"dr-weiss": ("Dr. Weiss", "specialist"), "room-1": ("Behandlungsraum 1", "equipment")}
    body = created(booking_id, tenant=tenant, starts_at=starts_at, cust=customer(f"c-{booking_id}"),
                   resource={"id": resource, "name": names[resource][0], "type": names[resource][1]})
    apply_events(ctx.store, [json.dumps(body)], now=ctx.clock.now(), source="test")


@pytest.fixture
def client(ctx):
    return api_client(ctx)


def metrics(client) -> dict[str, dict[tuple, float]]:
    """Samples by name, then by their labels (sorted pairs)."""
    response = client.get("/metrics", headers=METRICS_HEADERS)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


# --- dead letters (N3) -------------------------------------------------------------------------

def test_N3_dead_letters_are_listed_page_by_page_with_reason_and_source_and_no_personal_data(ctx, client):
    bad = ["{oops", json.dumps({"type": "booking.created"}),
           json.dumps(created("x1", tenant="no-such-tenant", cust=customer("c9", phone=PERSONAL)))]
    apply_events(ctx.store, bad * 2, now=START, source="redis:notifier.events")
    pages, after = [], 0
    while True:
        page = client.get("/api/dead-letters", params={"after": after, "limit": 4}).json()
        pages.append(page["items"])
        if page["next_after"] is None:
            break
        after = page["next_after"]
    items = [item for page in pages for item in page]
    assert [len(p) for p in pages] == [4, 2]
    assert [i["id"] for i in items] == sorted(i["id"] for i in items) and len({i["id"] for i in items}) == 6
    assert {i["source"] for i in items} == {"redis:notifier.events"}
    assert all(i["reason"] and i["received_at"].startswith("2026-12-01T06:00:00") for i in items)
    assert any("no-such-tenant" in i["reason"] for i in items)
    listing = client.get("/api/dead-letters").text
    assert PERSONAL not in listing and "Erika" not in listing  # the bodies stay in the store (N7)
    assert client.get("/api/dead-letters", params={"after": items[-1]["id"]}).json() == {"items": [],
                                                                                          "next_after": None}
    assert client.get("/api/dead-letters", params={"limit": 0}).status_code == 422


# --- health ------------------------------------------------------------------------------------

def test_health_answers_ok_when_the_database_and_the_broker_answer(client):
    body = client.get("/health", headers=METRICS_HEADERS)
    assert body.status_code == 200
    assert body.json()["status"] == "ok"
    assert {name: c["status"] for name, c in body.json()["checks"].items()} == {"database": "ok", "broker": "ok"}


def test_health_is_503_and_names_the_broker_when_it_is_down(ctx):
    down = SimpleNamespace(settings=replace(ctx.settings, broker_url="redis://127.0.0.1:1/0"), store=ctx.store,
                           clock=ctx.clock, links=ctx.links)
    answer = TestClient(create_app(down)).get("/health", headers=METRICS_HEADERS)
    assert answer.status_code == 503
    checks = answer.json()["checks"]
    assert answer.json()["status"] == "unavailable" and checks["database"]["status"] == "ok"
    assert checks["broker"]["status"] == "down" and "ConnectionError" in checks["broker"]["error"]


def test_health_is_503_and_names_the_database_when_it_is_down(ctx, tmp_path):
    gone = Store(create_engine(f"sqlite:///{tmp_path / 'no-such-folder' / 'notifier.db'}"))  # cannot be opened
    answer = TestClient(create_app(SimpleNamespace(settings=ctx.settings, store=gone, clock=ctx.clock,
                                                   links=ctx.links))).get("/health", headers=METRICS_HEADERS)
    assert answer.status_code == 503
    checks = answer.json()["checks"]
    assert checks["database"]["status"] == "down" and "unable to open database" in checks["database"]["error"]
    assert checks["broker"]["status"] == "ok"


def test_health_answers_within_its_deadline_when_a_dependency_hangs():
    """A host that accepts and never answers must not hang the health check (a load balancer's
    probe has its own timeout): the probe that is still waiting is reported down."""
    import threading

    from notifier.web.health import check

    release = threading.Event()
    try:
        checks = check({"database": lambda: None, "broker": lambda: release.wait(30)}, timeout_s=0.3)
    finally:
        release.set()
    assert checks["database"]["status"] == "ok"
    assert checks["broker"] == {"status": "down", "error": "no answer within 0.3 s"}


# --- counters and the markers behind them (R12, R16) ---------------------------------------------

def test_R12_markers_show_when_each_lit_before_any_sweep_and_counters_filter_by_resource(ctx, client):
    book(ctx, "b1")
    book(ctx, "b2", resource="room-1", starts_at=VISIT + timedelta(hours=4))
    ctx.clock.set(VISIT - timedelta(minutes=90))  # b1 is red since VISIT - 2 h; no sweep has run
    marks = client.get(f"/api/tenants/{TENANT}/markers").json()  # day: today in Berlin
    assert [(m["booking_id"], m["red_since"]) for m in marks] == [
        ("b1", "2026-12-02T07:00:00Z"), ("b2", None)]  # b2 is unconfirmed, not red yet
    assert marks[1]["unconfirmed"] and marks[1]["late_since"] is None
    counters = client.get(f"/api/tenants/{TENANT}/counters", params={"resource": "dr-weiss"}).json()
    assert counters == {"dr-weiss": {"unconfirmed": 1, "red": 1, "late": 0, "late_counter": 0}}
    sweep_states(ctx.store, now=ctx.clock.now())  # the sweep records the same moment
    assert client.get(f"/api/tenants/{TENANT}/markers", params={"resource": "dr-weiss"}).json() == marks[:1]

    ctx.clock.set(VISIT + timedelta(minutes=7))  # b1 started and is not marked arrived: late (R16)
    [late] = client.get(f"/api/tenants/{TENANT}/markers", params={"day": "2026-12-02",
                                                                     "resource": "dr-weiss"}).json()
    assert (late["red_since"], late["late_since"]) == (None, "2026-12-02T09:05:00Z")
    assert client.get(f"/api/tenants/{TENANT}/markers", params={"day": "2026-12-03"}).json() == []
    assert client.get(f"/api/tenants/{TENANT}/counters", params={"day": "2 Dec"}).status_code == 422
    assert client.get("/api/tenants/nobody/markers").status_code == 404


# --- metrics (P5) ------------------------------------------------------------------------------

def test_P5_metrics_show_queue_lag_then_lateness_and_sends_by_channel_and_status(ctx, client):
    book(ctx, "b1", tenant="salon-berlin", resource="dr-weiss", starts_at=START + timedelta(days=2))
    ctx.clock.set(START + timedelta(seconds=42))  # the new-booking info was due at START: 42 s late
    before = metrics(client)
    assert before["notifier_queue_lag_seconds"][()] == 42.0
    assert before["notifier_due_unsent_messages"][(("state", "planned"),)] == 1
    assert "notifier_send_lateness_seconds_bucket" not in before  # nothing sent in the window

    assert run_due(ctx)["sent"] == 1
    after = metrics(client)
    assert after["notifier_queue_lag_seconds"][()] == 0.0
    buckets = after["notifier_send_lateness_seconds_bucket"]
    assert buckets[(("channel", "email"), ("le", "30.0"))] == 0 and buckets[(("channel", "email"), ("le", "60.0"))] == 1
    assert buckets[(("channel", "email"), ("le", "+Inf"))] == 1
    assert after["notifier_send_lateness_seconds_gsum"][(("channel", "email"),)] == pytest.approx(42.0, abs=0.01)
    sends = after["notifier_recent_sends"]
    assert sends[(("channel", "email"), ("status", "sent"))] == 1
    assert sends[(("channel", "sms"), ("status", "failed"))] == 0  # every series is there, zero included
    assert after["notifier_metrics_source_up"] == {(("source", "store"),): 1.0}  # embedded broker: no lengths

    ctx.clock.set(START + timedelta(hours=1))  # out of the window: a gauge of what is recent
    assert "notifier_send_lateness_seconds_bucket" not in metrics(client)
