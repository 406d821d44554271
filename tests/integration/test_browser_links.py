"""Issue 7, acceptance 1 and 2: a customer's links in a real browser (R11, R12, R14, R19, R23, N4, P4).

A headless Chromium from Debian's packages (/usr/bin/chromium) opens the links that arrived by
email, on the web app served by uvicorn on a loopback port, with the store on PostgreSQL and the
outbound events on Redis:
- the confirmation link: the page shows the visit; Confirm; the timeline has the confirmation, the
  red counter drops, and `booking.confirmed_by_customer` reaches the booking system;
- the cancel link inside the window: the slot is released (`slot.released`) and the staff hear of it
  (their webhook receives the notice); outside the window the cancellation is refused;
- tampered, expired, replayed and cross-booking links get a clear page and change nothing.

Driven with Selenium (WebDriver, over Debian's /usr/bin/chromedriver, same build as the browser):
it is the W3C standard protocol and the best-kept Python client for it, it clicks like a user
(real events, real form POST), and its explicit waits (WebDriverWait: a condition and a
deadline) are how these tests synchronise with the page. With the driver's path given, Selenium
Manager never runs, so nothing is downloaded. Chromium's DevTools protocol through a small
library would do too, but would mean writing our own waits and clicks.

The web server runs in a thread of the test process (its socket bound before the settings are
made, so the links in the emails point at it); the steps beat's tasks take between two clicks
(dispatching due messages, the state sweep, publishing the outbox) are run by calling the same
functions those tasks call. Without Chromium these tests are skipped (or fail under
NOTIFIER_REQUIRE_SERVICES=1); `.ci/run` installs it.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from notifier.bootstrap import Context, build_channels
from notifier.client import OutboundPublisher
from notifier.clock import FileClock
from notifier.devtools import HttpSink
from notifier.services import apply_events, publish_outbox, sweep_states
from notifier.store import schema as t
from tests.conftest import START, created, customer, make_context, make_settings, operator_headers, unavailable
from tests.unit.test_services import run_due

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
TENANT = "praxis-am-see"
# every kind at its default: the confirmation request goes out a day ahead, and its cancel link
# works until the (default) window closes two hours before the visit (R11, R23, R27)
TENANT_YAML = f"""
id: {TENANT}
name: Praxis am See
timezone: Europe/Berlin
home_region: DE
language: de
channels: [email]
company: {{name: Praxis am See, address: "Seestraße 1, 14467 Potsdam", phone: "+49 331 5550100"}}
settings: {{}}
resources:
  - {{id: dr-weiss, name: Dr. Weiss, type: specialist}}
"""
VISIT = START + timedelta(days=3, hours=3)  # Friday 4 December 2026, 10:00 in Berlin
VISIT_SHOWN = "Freitag, 4. Dezember 2026, 10:00"
WAIT_S = 15.0


def until(condition: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    """Poll `condition` until it is truthy; fail with `what` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.02)
    return value


# --- the browser ---------------------------------------------------------------------------------

@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium with a fresh profile, driven over WebDriver."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        unavailable("headless Chromium (Debian's chromium and chromium-driver)", FileNotFoundError(
            f"{', '.join(missing)} not installed; `apt-get install chromium chromium-driver` (.ci/run does)"))
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        unavailable("selenium (pip install -e '.[dev]')", exc)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")),
                                  options=options)
    except WebDriverException as exc:
        unavailable("headless Chromium (it did not start)", exc)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def page_says(driver: Any, text: str) -> str:
    """Wait until the page's status line contains `text`; returns the whole page's text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S).until(ec.text_to_be_present_in_element((By.ID, "message"), text))
    return driver.find_element(By.TAG_NAME, "body").text


def open_page(driver: Any, url: str) -> str:
    """Open a link as the customer does; returns the page's text once it has loaded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(ec.presence_of_element_located((By.TAG_NAME, "h1")))
    return driver.find_element(By.TAG_NAME, "body").text


def buttons(driver: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    return [b.get_attribute("id") for b in driver.find_elements(By.TAG_NAME, "button")]


def press(driver: Any, button_id: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    button = WebDriverWait(driver, WAIT_S).until(ec.element_to_be_clickable((By.ID, button_id)))
    button.click()
    WebDriverWait(driver, WAIT_S).until(ec.staleness_of(button))  # the answer page replaced this one


# --- the server and the world around it ----------------------------------------------------------

@dataclass
class World:
    ctx: Context
    base_url: str
    outbound: Any  # Redis client
    outbound_queue: str
    staff: HttpSink
    mail: Any  # MailSink
    api_headers: dict[str, str]  # an operator key's

    def api(self, path: str, **params: Any) -> Any:
        response = httpx.get(self.base_url + path, params=params, headers=self.api_headers, timeout=WAIT_S)
        response.raise_for_status()
        return response.json()

    def at(self, moment: datetime) -> None:
        self.ctx.clock.set(moment)

    def beat(self) -> None:
        """What beat's tasks do on a tick: the state sweep, due messages sent, the outbox published."""
        now = self.ctx.clock.now()
        sweep_states(self.ctx.store, now=now)
        run_due(self.ctx)
        publish_outbox(self.ctx.store, OutboundPublisher(self.ctx.settings), now=now)

    def published(self) -> list[dict[str, Any]]:
        """The events the booking system has received since the last look."""
        out = []
        while (raw := self.outbound.lpop(self.outbound_queue)) is not None:
            out.append(json.loads(raw))
        return out

    def book(self, booking_id: str, customer_id: str) -> None:
        body = created(booking_id, tenant=TENANT, starts_at=VISIT,
                       cust=customer(customer_id, email=f"{customer_id}@example.org"),
                       resource={"id": "dr-weiss", "name": "Dr. Weiss", "type": "specialist"})
        apply_events(self.ctx.store, [json.dumps(body)], now=self.ctx.clock.now(), source="test")

    def confirmation_links(self, booking_id: str, customer_id: str) -> dict[str, str]:
        """The links in the confirmation request the customer received by email (R11)."""
        with self.ctx.store.engine.connect() as conn:
            due_at = conn.execute(select(t.messages.c.due_at).where(
                t.messages.c.booking_id == booking_id, t.messages.c.kind == "confirmation")).scalar_one()
        if self.ctx.clock.now() < due_at:
            self.at(due_at)
        self.beat()
        [mail] = [m for m in self.mail.messages
                  if m["To"] == f"{customer_id}@example.org" and m["Subject"].startswith("Bitte bestätigen")]
        text = mail.get_body(preferencelist=("plain",)).get_content()
        confirm, cancel = re.findall(r"http://127\.0\.0\.1:\d+/l/\S+", text)
        return {"confirm": confirm, "cancel": cancel}

    def snapshot(self) -> tuple:
        """Everything a link could change: bookings, timeline, outbox, message states."""
        with self.ctx.store.engine.connect() as conn:
            return (conn.execute(select(t.bookings).order_by(t.bookings.c.id)).all(),
                    conn.execute(select(func.count()).select_from(t.timeline)).scalar_one(),
                    conn.execute(select(func.count()).select_from(t.outbox)).scalar_one(),
                    conn.execute(select(t.messages.c.id, t.messages.c.state).order_by(t.messages.c.id)).all())

    def booking(self, booking_id: str) -> Any:
        with self.ctx.store.engine.connect() as conn:
            return conn.execute(select(t.bookings).where(t.bookings.c.id == booking_id)).one()


def serve(app: Any, sock: socket.socket) -> Callable[[], None]:
    """uvicorn on an already bound socket, in a thread; returns the stopper."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    until(lambda: server.started or not thread.is_alive(), "the web server to start")
    assert server.started, "the web server did not start"

    def stop() -> None:
        server.should_exit = True
        thread.join(WAIT_S)

    return stop


@pytest.fixture
def world(tmp_path: Path, pg_url: str, redis_url: str, key_prefix: str, mail_sink: Any, clock: FileClock
          ) -> Iterator[World]:
    import redis

    from notifier.web.app import create_app

    tenants = tmp_path / "tenants"
    tenants.mkdir()
    (tenants / f"{TENANT}.yaml").write_text(TENANT_YAML)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with HttpSink() as staff:
        # one sender thread: the first provider calls of a process, made at once from several
        # threads, can race in notifier.observability.metrics.metrics() (@cache is not a lock:
        # DuplicateTimeseries); these tests are about the links, not that
        settings = make_settings(tmp_path, database_url=pg_url, tenants_path=tenants, public_url=base_url,
                                 link_secret="browser-test-link-secret-0123456789", smtp_port=mail_sink.port,
                                 staff_webhook_url=staff.url, outbound_url=redis_url,
                                 outbound_queue=f"{key_prefix}.outbound", dispatch_concurrency=1)
        ctx = make_context(settings, channels=build_channels(settings))
        stop = serve(create_app(ctx), sock)
        client = redis.Redis.from_url(redis_url)
        try:
            yield World(ctx, base_url, client, settings.outbound_queue, staff, mail_sink, operator_headers(ctx))
        finally:
            stop()
            client.close()
            ctx.close()
            sock.close()


# --- acceptance 1 ------------------------------------------------------------------------------------

def test_R11_R12_confirming_in_the_browser_shows_on_the_timeline_drops_the_red_counter_and_tells_the_booking_system(
        world, browser):
    """R11: the customer confirms with the emailed link; R12: the red counter drops; P4: the
    timeline shows it and the booking system receives `booking.confirmed_by_customer`; N4: the
    GET showed a page and changed nothing, the button's POST did it."""
    world.book("b1", "c1")
    links = world.confirmation_links("b1", "c1")
    world.at(VISIT - timedelta(minutes=90))  # still unanswered 2 hours before: red (R12)
    world.beat()
    assert world.api(f"/api/tenants/{TENANT}/counters", day="2026-12-04")["dr-weiss"]["red"] == 1
    [lit] = [e for e in world.published() if e["type"] == "counters.changed"]
    assert lit["data"]["booking_id"] == "b1" and lit["data"]["red"] is True

    shown = open_page(browser, links["confirm"])
    assert VISIT_SHOWN in shown and "Dr. Weiss" in shown and "Praxis am See" in shown
    assert buttons(browser) == ["confirm"]
    assert world.booking("b1").confirmed_at is None  # opening the link did nothing (N4)
    # the page's own style applies under its Content-Security-Policy (issue 16), which forbids framing
    assert browser.execute_script("return getComputedStyle(document.body).maxWidth") == "512px"
    policy = httpx.get(links["confirm"], timeout=WAIT_S).headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy

    press(browser, "confirm")
    assert "Danke! Ihr Termin ist bestätigt." in page_says(browser, "bestätigt")
    assert world.booking("b1").confirmed_at == VISIT - timedelta(minutes=90)
    timeline = world.api(f"/api/tenants/{TENANT}/bookings/b1/timeline")
    assert {"kind": "booking.confirmed", "detail": {"via": "link"}, "at": "2026-12-04T07:30:00+00:00"} in timeline
    assert world.api(f"/api/tenants/{TENANT}/counters", day="2026-12-04")["dr-weiss"] == {
        "unconfirmed": 0, "red": 0, "late": 0, "late_counter": 0}
    assert world.api(f"/api/tenants/{TENANT}/markers", day="2026-12-04") == []

    world.beat()  # beat's tick publishes what the confirmation wrote to the outbox
    events = {e["type"]: e for e in world.published()}
    assert events["booking.confirmed_by_customer"]["tenant_id"] == TENANT
    assert events["booking.confirmed_by_customer"]["data"]["booking_id"] == "b1"
    assert events["counters.changed"]["data"]["red"] is False  # the planner's red counter goes down


def test_R14_R19_cancelling_inside_the_window_releases_the_slot_and_notifies_the_staff(world, browser):
    """R14, R19: the customer cancels with the emailed link a day ahead (inside the window, R23,
    R27): the booking system receives `slot.released`, and the staff's webhook the notice."""
    world.book("b1", "c1")
    links = world.confirmation_links("b1", "c1")  # arrives 24 hours before the visit
    world.published()

    shown = open_page(browser, links["cancel"])
    assert VISIT_SHOWN in shown and buttons(browser) == ["cancel"]
    press(browser, "cancel")
    assert "Der Platz ist wieder frei" in page_says(browser, "abgesagt")

    row = world.booking("b1")
    assert (row.status, row.cancelled_by) == ("cancelled", "customer")
    assert "slot.released" in [e["kind"] for e in world.api(f"/api/tenants/{TENANT}/bookings/b1/timeline")]
    world.beat()
    released = {e["type"]: e["data"] for e in world.published()}
    assert released["slot.released"]["booking_id"] == "b1"
    assert released["slot.released"]["starts_at"] == VISIT.isoformat()
    assert released["booking.cancelled_by_customer"]["booking_id"] == "b1"
    [notice] = [r["json"] for r in world.staff.requests if r["json"].get("kind") == "staff_cancelled"]
    assert notice["booking_id"] == "b1" and "abgesagt" in notice["body"] and "Der Slot ist wieder frei" in notice["body"]


def test_R23_cancelling_outside_the_window_is_refused_and_changes_nothing(world, browser):
    """R23: an hour before the visit the 2-hour window has closed: the page says to call, the
    booking stays, no slot is released and the staff hear nothing."""
    world.book("b1", "c1")
    links = world.confirmation_links("b1", "c1")
    world.at(VISIT - timedelta(hours=1))
    world.beat()
    world.published()
    before = world.snapshot()

    open_page(browser, links["cancel"])
    press(browser, "cancel")
    assert "nicht mehr möglich. Bitte rufen Sie uns an." in page_says(browser, "nicht mehr möglich")
    assert buttons(browser) == []
    assert world.snapshot() == before and world.booking("b1").status == "active"
    world.beat()
    assert [e["type"] for e in world.published()] == []
    assert not [r for r in world.staff.requests if r["json"].get("kind") == "staff_cancelled"]


# --- acceptance 2 ------------------------------------------------------------------------------------

def forged(world: World, kind: str, links: dict[str, str]) -> str:
    """A link the customer was not given: edited, too old, or moved onto another booking."""
    from itsdangerous import URLSafeTimedSerializer

    base, token = links["confirm"].rsplit("/", 1)
    payload, stamp, signature = token.rsplit(".", 2)
    if kind == "tampered":  # a character of the signature changed
        return f"{base}/{payload}.{stamp}.{signature[:-1]}{'A' if signature[-1] != 'A' else 'B'}"
    if kind == "expired":  # signed with the real secret, 61 days ago (links live 60)
        return world.ctx.links.url(TENANT, "b1", "confirm", VISIT, issued_at=world.ctx.clock.now() - timedelta(days=61))
    if kind == "cross-booking":  # b1's signature on a payload naming b2 (what editing the link amounts to)
        other = URLSafeTimedSerializer("an attacker's own secret key", salt="x").dumps(
            [TENANT, "b2", "confirm", VISIT.isoformat()])
        return f"{base}/{other.rsplit('.', 2)[0]}.{stamp}.{signature}"
    raise ValueError(kind)


@pytest.mark.parametrize(("kind", "says"), [("tampered", "This link is not valid."),
                                            ("expired", "This link has expired."),
                                            ("cross-booking", "This link is not valid.")])
def test_N4_tampered_expired_and_cross_booking_links_are_refused_with_a_clear_page(world, browser, kind, says):
    """N4: links are signed, scoped to one booking and expire: a forged one shows a page that says
    so, without a button, and neither the page nor a direct POST (a scanner's) changes anything."""
    world.book("b1", "c1")
    world.book("b2", "c2")
    links = world.confirmation_links("b1", "c1")
    world.at(VISIT - timedelta(minutes=90))
    world.beat()
    world.published()
    before = world.snapshot()
    url = forged(world, kind, links)

    shown = open_page(browser, url)
    assert says in page_says(browser, says) and buttons(browser) == [] and VISIT_SHOWN not in shown
    assert httpx.post(url, timeout=WAIT_S).status_code == 400  # no button needed to try: still refused
    assert world.snapshot() == before
    assert world.booking("b1").confirmed_at is None and world.booking("b2").confirmed_at is None
    world.beat()
    assert [e["type"] for e in world.published()] == []


def test_N4_a_used_link_replayed_says_so_and_cannot_undo_a_cancellation(world, browser):
    """N4: a confirmation link used once says "already done" when opened again; after the
    customer cancelled, the confirmation link cannot bring the booking back, and the used cancel
    link does nothing more (N2: no second event, no second staff notice)."""
    world.book("b1", "c1")
    links = world.confirmation_links("b1", "c1")
    open_page(browser, links["confirm"])
    press(browser, "confirm")
    page_says(browser, "bestätigt")
    world.beat()
    assert "booking.confirmed_by_customer" in [e["type"] for e in world.published()]

    before = world.snapshot()
    open_page(browser, links["confirm"])
    assert "Das ist bereits erledigt." in page_says(browser, "erledigt") and buttons(browser) == []
    assert httpx.post(links["confirm"], timeout=WAIT_S).status_code == 200  # says "already", does nothing
    assert world.snapshot() == before

    open_page(browser, links["cancel"])  # inside the window: cancelling a confirmed visit is allowed
    press(browser, "cancel")
    page_says(browser, "abgesagt")
    world.beat()
    assert sorted(e["type"] for e in world.published()) == ["booking.cancelled_by_customer", "slot.released"]
    notices = len(world.staff.requests)

    before = world.snapshot()
    for link, says in ((links["confirm"], "Ihr Termin ist abgesagt."), (links["cancel"], "Das ist bereits erledigt.")):
        open_page(browser, link)
        assert says in page_says(browser, says) and buttons(browser) == []
        httpx.post(link, timeout=WAIT_S)
    assert world.snapshot() == before and world.booking("b1").status == "cancelled"
    world.beat()
    assert world.published() == [] and len(world.staff.requests) == notices
