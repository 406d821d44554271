"""The customer's appointment page in a real browser (issues 7 and 20; R11, R12, R14, R19, R22,
R23, R45, N4, P4).

A headless Chromium from Debian's packages (/usr/bin/chromium) opens the link that arrived by
email, on the web app served by uvicorn on a loopback port, with the store on PostgreSQL and the
outbound events on Redis:
- every status in words (request pending, waiting for confirmation, confirmed, moved, under way,
  over, cancelled with its reason, declined) in German and English, at 360 and 1280 px: no
  sideways scrolling, nothing loaded from elsewhere, and axe-core (tests/data/axe, run in the
  page through Selenium) finds no serious or critical accessibility problem;
- confirming (with the keyboard): the timeline has it, the red counter drops, and
  `booking.confirmed_by_customer` reaches the booking system;
- cancelling inside the window: the slot is released (`slot.released`) and the staff hear of it
  with the customer's reason; with the window closed the page says until when it was open and
  gives the phone number, and a POST is refused;
- a moved booking opened through its old link shows the new time; the calendar card downloads
  and parses; a scanner's fetches change nothing; forged, foreign and expired links get a clear
  page and change nothing; a used link replayed does nothing more.

Driven with Selenium (WebDriver, over Debian's /usr/bin/chromedriver, same build as the browser):
it is the W3C standard protocol and the best-kept Python client for it, it clicks and types like
a user (real events, real form POST), and its explicit waits (WebDriverWait: a condition and a
deadline) are how these tests synchronise with the page. With the driver's path given, Selenium
Manager never runs, so nothing is downloaded. One browser serves the whole module.

The web server runs in a thread of the test process (its socket bound before the settings are
made, so the links in the emails point at it); the steps beat's tasks take between two clicks
(dispatching due messages, the state sweep, publishing the outbox) are run by calling the same
functions those tasks call. Without Chromium these tests are skipped (or fail under
NOTIFIER_REQUIRE_SERVICES=1); `.ci/run` installs it. With NOTIFIER_SCREENSHOTS=DIR the status
test writes the README's pictures there (`make screenshots`).
"""

from __future__ import annotations

import json
import os
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
from tests.conftest import (
    ROOT,
    START,
    created,
    customer,
    event,
    make_context,
    make_settings,
    operator_headers,
    unavailable,
)
from tests.unit.test_services import run_due

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1")
AXE = ROOT / "tests" / "data" / "axe" / "axe.min.js"
TENANT = "praxis-am-see"
LOGO = ("data:image/svg+xml;base64,PHN2ZyB4bWxucz0iaHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmciIHZpZXdCb3g9IjAgMCA0OCA0OCI"
        "+PGNpcmNsZSBjeD0iMjQiIGN5PSIyNCIgcj0iMjIiIGZpbGw9IiMwZjc2NmUiLz48cGF0aCBkPSJNMTAgMjhjNi04IDIyLTggMjggMCIgc3"
        "Ryb2tlPSIjZmZmIiBzdHJva2Utd2lkdGg9IjQiIGZpbGw9Im5vbmUiLz48L3N2Zz4=")  # a wave in a teal circle
# every setting at its default (R27): the confirmation request goes out a day ahead, and the page
# it links to can cancel until the window closes two hours before the visit (R11, R23); a teal
# brand colour and a logo
TENANT_YAML = f"""
id: {TENANT}
name: Praxis am See
timezone: Europe/Berlin
home_region: DE
language: de
channels: [email]
company: {{name: Praxis am See, address: "Seestraße 1, 14467 Potsdam", phone: "+49 331 5550100",
           accent_color: "#14b8a6", logo_url: "{LOGO}"}}
settings: {{}}
resources:
  - {{id: dr-weiss, name: Dr. Weiss, type: specialist}}
"""
VISIT = START + timedelta(days=3, hours=3)  # Friday 4 December 2026, 10:00 in Berlin
VISIT_DATE, VISIT_TIME = "Freitag, 4. Dezember 2026", "10:00–11:00 Uhr"
WIDTHS = (360, 1280)
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

@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the module (starting one is the slow part), driven over WebDriver."""
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
    home = tmp_path_factory.mktemp("chromium")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={home / 'profile'}"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(home / "chromedriver.log")),
                                  options=options)
    except WebDriverException as exc:
        unavailable("headless Chromium (it did not start)", exc)
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S * 2)
    driver.downloads = home / "downloads"  # type: ignore[attr-defined]
    driver.downloads.mkdir()
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow",
                                                           "downloadPath": str(driver.downloads)})
    yield driver
    driver.quit()


@pytest.fixture
def browser(chromium: Any) -> Any:
    """The module's browser, as a new customer would find it: no cookies, a phone's width."""
    chromium.delete_all_cookies()
    chromium.set_window_size(WIDTHS[0], 900)
    return chromium


def open_page(driver: Any, url: str, *, width: int | None = None) -> str:
    """Open a link as the customer does; returns the page's text once it has loaded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    if width:
        driver.set_window_size(width, 900)
    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(ec.presence_of_element_located((By.TAG_NAME, "h1")))
    return driver.find_element(By.TAG_NAME, "body").text


def text_of(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.ID, element_id)
    return found[0].text if found else ""


def buttons(driver: Any) -> list[str]:
    """The page's actions, in order: its buttons and the links styled as buttons."""
    from selenium.webdriver.common.by import By

    return [b.get_attribute("id") for b in driver.find_elements(By.CSS_SELECTOR, "button, .button")
            if b.is_displayed()]


def press(driver: Any, button_id: str) -> None:
    """Click a button that submits; returns once the answer page replaced this one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    button = WebDriverWait(driver, WAIT_S).until(ec.element_to_be_clickable((By.ID, button_id)))
    button.click()
    WebDriverWait(driver, WAIT_S).until(lambda _: gone(button))


def gone(element: Any) -> bool:
    """Whether the page that held `element` was replaced. Asked while the old page unloads,
    chromedriver may answer "Node with given id does not belong to the document" instead of a
    stale reference: that is gone too."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False


def cancel_on_page(driver: Any, reason: str = "") -> None:
    """Open the cancel step, give a reason, confirm."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, "cancel").click()
    WebDriverWait(driver, WAIT_S).until(ec.visibility_of_element_located((By.ID, "cancel-confirm")))
    if reason:
        driver.find_element(By.ID, "reason-text").send_keys(reason)
    press(driver, "cancel-confirm")


def serious_accessibility_problems(driver: Any) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now."""
    if not driver.execute_script("return typeof window.axe === 'object'"):
        driver.execute_script(AXE.read_text(encoding="utf-8"))
    found = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then(r => done(r.violations.map(v => [v.impact, v.id, v.help, v.nodes.map(n => n.target.join(' '))])))"
        ".catch(e => done([['critical', 'axe-error', String(e), []]]));")
    return [f"{impact} {rule}: {what} at {where}" for impact, rule, what, where in found
            if impact in ("serious", "critical")]


def fits(driver: Any) -> bool:
    """Nothing sticks out sideways: readable without horizontal scrolling."""
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def foreign_requests(driver: Any, base_url: str) -> list[str]:
    """What the page loaded from anywhere but notifier (the logo is a data: URL here)."""
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return [u for u in loaded if not u.startswith((base_url, "data:"))]


def screenshot(driver: Any, path: Path) -> None:
    """The whole page at the current width (Chromium's own capture, beyond the viewport)."""
    import base64

    width, height = driver.execute_script("return [window.innerWidth, document.documentElement.scrollHeight]")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
        "x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))


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

    def apply(self, *bodies: dict[str, Any]) -> None:
        apply_events(self.ctx.store, [json.dumps(b) for b in bodies], now=self.ctx.clock.now(), source="test")

    def book(self, booking_id: str, customer_id: str, *, language: str = "de", starts_at: datetime = VISIT,
             tenant: str = TENANT, **data: Any) -> dict[str, Any]:
        body = created(booking_id, tenant=tenant, starts_at=starts_at,
                       cust=customer(customer_id, email=f"{customer_id}@example.org", language=language),
                       resource={"id": "dr-weiss", "name": "Dr. Weiss", "type": "specialist"})
        body["data"].update(data)
        self.apply(body)
        return body

    def link_in_mail(self, customer_id: str, kind: str = "confirmation") -> str:
        """The link in the emails the customer received up to the first message of `kind`."""
        with self.ctx.store.engine.connect() as conn:
            due_at = conn.execute(select(func.min(t.messages.c.due_at)).where(
                t.messages.c.booking_id.in_(select(t.bookings.c.id).where(t.bookings.c.customer_id == customer_id)),
                t.messages.c.kind == kind)).scalar()
        if due_at is not None and self.ctx.clock.now() < due_at:
            self.at(due_at)
        self.beat()
        mails = [m.get_body(("plain",)).get_content() for m in self.mail.messages
                 if m["To"] == f"{customer_id}@example.org"]
        links = {link for text in mails for link in re.findall(r"http://127\.0\.0\.1:\d+/l/\w+", text)}
        assert len(links) == 1, links  # every message carries the same one link
        return links.pop()

    def link_of(self, booking_id: str, tenant: str = TENANT) -> str:
        """A booking's link, recorded as dispatch records it before the first message carrying it."""
        links = self.ctx.links
        with self.ctx.store.transaction() as tx:
            tx.save_links([(links.token(tenant, booking_id), tenant, booking_id)], self.ctx.clock.now())
        return links.url(tenant, booking_id)

    def snapshot(self) -> tuple:
        """Everything a link could change: bookings, timeline, outbox, message states."""
        with self.ctx.store.engine.connect() as conn:
            return (conn.execute(select(t.bookings).order_by(t.bookings.c.id)).all(),
                    conn.execute(select(func.count()).select_from(t.timeline)).scalar_one(),
                    conn.execute(select(func.count()).select_from(t.outbox)).scalar_one(),
                    conn.execute(select(t.messages.c.id, t.messages.c.state, t.messages.c.due_at)
                                 .order_by(t.messages.c.id)).all())

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




# --- every status, two languages, two widths -------------------------------------------------------

STATUS_WORDS = {  # the status line, as the customer reads it
    "requested": ("Anfrage offen", "Request pending"),
    "awaiting": ("Wartet auf Ihre Bestätigung", "Waiting for your confirmation"),
    "confirmed": ("Bestätigt", "Confirmed"),
    "moved": ("Verlegt", "Moved"),
    "started": ("Läuft gerade", "Under way"),
    "over": ("Termin vorbei", "Visit over"),
    "cancelled": ("Abgesagt", "Cancelled"),
    "declined": ("Anfrage abgelehnt", "Request declined"),
}
ACTIONS = {  # what each status offers (with the cancellation window open)
    "requested": ["cancel"], "awaiting": ["confirm", "calendar", "cancel"], "confirmed": ["calendar", "cancel"],
    "moved": ["confirm", "calendar", "cancel"], "started": [], "over": [], "cancelled": [], "declined": [],
}
PICTURED = ("requested", "awaiting", "confirmed", "moved", "cancelled", "over")  # in the README


def a_booking_in_each_status(world: World, language: str) -> dict[str, str]:
    """status -> its booking's link, for a customer speaking `language`."""
    now = world.ctx.clock.now()
    ids = {status: f"{status}-{language}" for status in STATUS_WORDS}
    world.at(now - timedelta(hours=4))  # booked before, seen arriving, over by now
    world.book(ids["over"], f"c-{ids['over']}", language=language, starts_at=now - timedelta(hours=3))
    world.apply(event("booking.visit_marked", {"booking_id": ids["over"], "outcome": "arrived"}, tenant=TENANT,
                      revision=2, at=now - timedelta(hours=3)))
    world.at(now - timedelta(minutes=15))
    world.book(ids["started"], f"c-{ids['started']}", language=language, starts_at=now - timedelta(minutes=10))
    world.at(now)
    for status, booking_id in ids.items():
        if status not in ("over", "started"):
            world.book(booking_id, f"c-{booking_id}", language=language, needs_approval=status in ("requested",
                       "declined"), service="Erstberatung" if status == "confirmed" else None)
    later = dict(tenant=TENANT, revision=2, at=now + timedelta(minutes=5))
    world.apply(
        event("booking.confirmed", {"booking_id": ids["confirmed"], "via": "phone"}, **later),
        event("booking.rescheduled", {"booking_id": ids["moved"], "starts_at": (VISIT + timedelta(days=1)).isoformat(),
                                      "ends_at": (VISIT + timedelta(days=1, hours=1)).isoformat()}, **later),
        event("booking.cancelled", {"booking_id": ids["cancelled"], "by": "staff",
                                    "reason": "Dr. Weiss ist erkrankt" if language == "de" else "Dr Weiss is ill"},
              **later),
        event("booking.cancelled", {"booking_id": ids["declined"], "by": "staff",
                                    "reason": "Ausgebucht" if language == "de" else "Fully booked"}, **later))
    return {status: world.link_of(booking_id) for status, booking_id in ids.items()}


def test_R45_N4_every_status_in_words_in_two_languages_at_two_widths_accessible_and_self_contained(world, browser):
    """Each status says so in German and English, offers only what applies, fits a 360 px phone
    and a 1280 px screen without sideways scrolling, loads nothing from elsewhere, and axe-core
    finds no serious or critical accessibility problem. Opening the pages changes nothing."""
    pictures = Path(os.environ.get("NOTIFIER_SCREENSHOTS") or world.ctx.settings.data_dir)
    links = {language: a_booking_in_each_status(world, language) for language in ("de", "en")}
    before = world.snapshot()
    problems: list[str] = []
    for index, language in enumerate(("de", "en")):
        for status, url in links[language].items():
            for width in WIDTHS:
                shown = open_page(browser, url, width=width)
                where = f"{status} {language} {width}px"
                assert text_of(browser, "status") == STATUS_WORDS[status][index], where
                assert buttons(browser) == ACTIONS[status], where
                assert fits(browser), f"{where}: scrolls sideways"
                assert foreign_requests(browser, world.base_url) == [], where
                problems += [f"{where}: {p}" for p in serious_accessibility_problems(browser)]
                if status in ("cancelled", "declined"):
                    assert ("Dr. Weiss ist erkrankt" if status == "cancelled" else "Ausgebucht") in shown \
                        if language == "de" else ("Dr Weiss is ill" if status == "cancelled" else "Fully booked") in shown
                if status == "moved":
                    assert ("Samstag, 5. Dezember 2026" if language == "de" else "Saturday, December 5, 2026") in shown
                if width == WIDTHS[0] and status in PICTURED:
                    screenshot(browser, pictures / f"page-{language}-{status}.png")
    assert problems == []
    open_page(browser, links["en"]["awaiting"], width=WIDTHS[1])
    screenshot(browser, pictures / "page-en-awaiting-wide.png")
    assert world.snapshot() == before  # a GET never acts (N4)


# --- the actions ---------------------------------------------------------------------------------------

def test_R11_R12_confirming_with_the_keyboard_shows_on_the_timeline_drops_the_red_counter_and_tells_the_booking_system(
        world, browser):
    """R11: the customer confirms with the emailed link, using only the keyboard; R12: the red
    counter drops; P4: the timeline shows it and the booking system receives
    `booking.confirmed_by_customer`; N4: the GET showed a page and changed nothing, the POST did it."""
    from selenium.webdriver.common.keys import Keys

    world.book("b1", "c1")
    link = world.link_in_mail("c1")
    world.at(VISIT - timedelta(minutes=90))  # still unanswered 90 minutes before: red (R12)
    world.beat()
    assert world.api(f"/api/tenants/{TENANT}/counters", day="2026-12-04")["dr-weiss"]["red"] == 1
    [lit] = [e for e in world.published() if e["type"] == "counters.changed"]
    assert lit["data"]["booking_id"] == "b1" and lit["data"]["red"] is True

    shown = open_page(browser, link)
    assert VISIT_DATE in shown and VISIT_TIME in shown and "Dr. Weiss" in shown and "Praxis am See" in shown
    assert "Seestraße 1, 14467 Potsdam" in shown and text_of(browser, "duration") == "1 Stunde"
    assert buttons(browser) == ["confirm", "calendar"]  # 90 minutes before: too late to cancel online
    assert world.booking("b1").confirmed_at is None  # opening the link did nothing (N4)
    # the page's own style applies under its Content-Security-Policy (issue 16), which forbids framing
    assert browser.execute_script("return getComputedStyle(document.querySelector('main')).maxWidth") == "576px"
    policy = httpx.get(link, timeout=WAIT_S).headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy

    body = browser.switch_to.active_element
    for _ in range(12):  # Tab through the page as a keyboard user does, to the confirm button
        body.send_keys(Keys.TAB)
        body = browser.switch_to.active_element
        if body.get_attribute("id") == "confirm":
            break
    assert body.get_attribute("id") == "confirm"
    assert browser.execute_script("return getComputedStyle(document.activeElement).outlineStyle") == "solid"
    body.send_keys(Keys.ENTER)
    until(lambda: "Danke! Ihr Termin ist bestätigt." in text_of(browser, "notice"), "the confirmation")
    assert text_of(browser, "status") == "Bestätigt" and "confirm" not in buttons(browser)
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


def test_R11_R14_R27_a_customer_cancels_from_the_confirmation_request_under_the_defaults(world, browser):
    """R27: a tenant that changed no setting. The confirmation request arrives the day before the
    visit; its link opens the page, where the customer can still cancel (the default window
    closes 2 hours before the visit); the slot is released."""
    world.book("b1", "c1")
    link = world.link_in_mail("c1")  # 10:00 the day before
    assert world.ctx.clock.now() == VISIT - timedelta(days=1)
    open_page(browser, link)
    assert text_of(browser, "status") == "Wartet auf Ihre Bestätigung"
    assert buttons(browser) == ["confirm", "calendar", "cancel"]
    cancel_on_page(browser)
    assert text_of(browser, "status") == "Abgesagt" and "Ihr Termin ist abgesagt." in text_of(browser, "notice")
    assert world.booking("b1").status == "cancelled"
    world.beat()
    assert {e["type"] for e in world.published()} >= {"booking.cancelled_by_customer", "slot.released"}
    world.book("b2", "c2")  # another visit at the same time: the window closes 2 hours before
    for before, offered in ((timedelta(hours=2, minutes=1), True), (timedelta(hours=1, minutes=59), False)):
        world.at(VISIT - before)
        open_page(browser, world.link_of("b2"))
        assert ("cancel" in buttons(browser)) is offered, before
    assert text_of(browser, "cancel-closed").startswith("Online absagen konnten Sie bis Freitag, 4. Dezember 2026, 08:00.")


def test_R14_R19_cancelling_inside_the_window_releases_the_slot_and_tells_the_staff_why(world, browser):
    """R14, R19: an English customer cancels with the emailed link a day ahead (inside the
    window, R23), at desktop width, giving a reason: the booking system receives `slot.released`,
    and the staff's webhook the notice with the reason."""
    world.book("b1", "c1", language="en")
    link = world.link_in_mail("c1")  # arrives a day before the visit
    world.published()

    shown = open_page(browser, link, width=WIDTHS[1])
    assert "Friday, December 4, 2026" in shown and buttons(browser) == ["confirm", "calendar", "cancel"]
    cancel_on_page(browser, reason="My train was cancelled")
    assert "Your appointment is cancelled." in text_of(browser, "notice")
    assert text_of(browser, "status") == "Cancelled" and buttons(browser) == []
    assert "You cancelled this appointment." in text_of(browser, "explain")
    assert serious_accessibility_problems(browser) == []

    row = world.booking("b1")
    assert (row.status, row.cancelled_by, row.cancel_reason) == ("cancelled", "customer", "My train was cancelled")
    assert "slot.released" in [e["kind"] for e in world.api(f"/api/tenants/{TENANT}/bookings/b1/timeline")]
    world.beat()
    released = {e["type"]: e["data"] for e in world.published()}
    assert released["slot.released"]["booking_id"] == "b1"
    assert released["slot.released"]["starts_at"] == VISIT.isoformat()
    assert released["booking.cancelled_by_customer"]["reason"] == "My train was cancelled"
    [notice] = [r["json"] for r in world.staff.requests if r["json"].get("kind") == "staff_cancelled"]
    assert notice["booking_id"] == "b1" and "abgesagt" in notice["body"] and "My train was cancelled" in notice["body"]


def test_R23_with_the_window_closed_the_page_says_until_when_and_gives_the_phone_and_a_post_is_refused(world, browser):
    """R23: an hour before the visit the (default, 2-hour) window has closed: no cancel button; the page says until when cancelling online was possible and gives the number to
    call; a POST anyway is refused and changes nothing; the staff hear nothing."""
    world.book("b1", "c1")
    link = world.link_in_mail("c1")
    world.at(VISIT - timedelta(hours=1))
    world.beat()
    world.published()
    before = world.snapshot()

    open_page(browser, link)
    assert "cancel" not in buttons(browser)
    closed = text_of(browser, "cancel-closed")
    assert closed.startswith("Online absagen konnten Sie bis ") and closed.endswith(
        "Um jetzt noch abzusagen, rufen Sie uns bitte an: +49 331 5550100")
    from selenium.webdriver.common.by import By

    assert browser.find_element(By.CSS_SELECTOR, "#cancel-closed a").get_attribute("href") == "tel:+493315550100"
    refused = httpx.post(f"{link}/cancel", data={"visit": VISIT.isoformat()}, timeout=WAIT_S)
    assert refused.status_code == 409 and "Für eine Online-Absage ist es zu spät." in refused.text
    assert world.snapshot() == before and world.booking("b1").status == "active"
    world.beat()
    assert [e["type"] for e in world.published()] == []
    assert not [r for r in world.staff.requests if r["json"].get("kind") == "staff_cancelled"]


def test_N4_a_moved_booking_opened_through_its_old_link_shows_the_new_time(world, browser):
    """The link of the first message still works after the visit moved: it shows the new time
    and the old one, and confirming confirms the new time."""
    world.book("b1", "c1")
    link = world.link_in_mail("c1", kind="info")  # sent when the booking was made
    world.apply(event("booking.rescheduled", {"booking_id": "b1", "starts_at": (VISIT + timedelta(days=1)).isoformat(),
                                              "ends_at": (VISIT + timedelta(days=1, hours=1)).isoformat()},
                      tenant=TENANT, revision=2, at=world.ctx.clock.now()))
    shown = open_page(browser, link)
    assert text_of(browser, "status") == "Verlegt" and "Samstag, 5. Dezember 2026" in shown
    assert text_of(browser, "moved-from") == "Vorher: Freitag, 4. Dezember 2026, 10:00."
    press(browser, "confirm")
    assert text_of(browser, "status") == "Bestätigt" and world.booking("b1").confirmed_at is not None
    assert world.booking("b1").starts_at == VISIT + timedelta(days=1)


def test_R22_the_calendar_card_downloads_and_parses_as_the_visit(world, browser):
    from icalendar import Calendar

    world.book("b1", "c1", language="en", service="First consultation")
    link = world.link_in_mail("c1", kind="info")
    open_page(browser, link)
    for old in browser.downloads.glob("*"):
        old.unlink()
    browser.find_element("id", "calendar").click()
    card = until(lambda: next(iter(browser.downloads.glob("*.ics")), None), "the download")
    until(lambda: card.stat().st_size > 0 and not list(browser.downloads.glob("*.crdownload")), "the whole file")
    assert card.name == "appointment.ics"
    [entry] = Calendar.from_ical(card.read_bytes()).walk("VEVENT")
    assert entry["UID"] == f"booking-{TENANT}-b1@notifier" and entry.decoded("DTSTART") == VISIT
    assert entry.decoded("DTEND") == VISIT + timedelta(hours=1) and str(entry["STATUS"]) == "CONFIRMED"
    assert "First consultation" in str(entry["SUMMARY"]) and "Seestraße 1" in str(entry["LOCATION"])


def test_N4_a_scanners_fetches_change_nothing(world, browser):
    """Mail scanners and link previews fetch every link, follow it, and fetch what it points at:
    none of it confirms, cancels or changes anything."""
    world.book("b1", "c1")
    link = world.link_in_mail("c1")
    world.beat()
    world.published()
    before = world.snapshot()
    for url in (link, f"{link}?done=confirmed", f"{link}/calendar.ics", f"{link}/confirm", f"{link}/cancel"):
        httpx.get(url, timeout=WAIT_S, follow_redirects=True)
        httpx.head(url, timeout=WAIT_S)
    for url in (link, f"{link}?done=confirmed"):
        open_page(browser, url)
        assert "Danke" not in text_of(browser, "main")  # an outcome made up in the address is not shown
    for action in ("confirm", "cancel"):  # a POST that did not come from the page's form
        assert httpx.post(f"{link}/{action}", timeout=WAIT_S).status_code == 409
    assert world.snapshot() == before
    world.beat()
    assert [e["type"] for e in world.published()] == []


@pytest.mark.parametrize("kind", ["tampered", "another install", "expired"])
def test_N4_forged_foreign_and_expired_links_get_a_clear_page_and_change_nothing(world, browser, kind):
    """N4: a token edited, one made by another installation's secret, and a genuine one long after
    the visit: each gets a page that says so, with no button and nothing of the booking, and
    neither the page nor a direct POST changes anything."""
    from notifier.links import BookingLinks

    world.book("b1", "c1")
    link = world.link_in_mail("c1")
    world.beat()
    world.published()
    base, token = link.rsplit("/", 1)
    url, says = {
        # no booking, so no customer's language: the browser's (Chromium's own is English)
        "tampered": (f"{base}/{token[:-1]}{'A' if token[-1] != 'A' else 'B'}", "This link is not valid"),
        "another install": (BookingLinks("another installation's link secret", base.rsplit("/l", 1)[0])
                            .url(TENANT, "b1"), "This link is not valid"),
        "expired": (link, "Dieser Link ist abgelaufen"),
    }[kind]
    if kind == "expired":
        world.at(VISIT + timedelta(hours=1, seconds=world.ctx.settings.link_valid_after_visit_s))
    before = world.snapshot()
    shown = open_page(browser, url)
    assert says in text_of(browser, "refusal") and buttons(browser) == [] and VISIT_DATE not in shown
    assert serious_accessibility_problems(browser) == []
    for action in ("confirm", "cancel"):
        assert httpx.post(f"{url}/{action}", data={"visit": VISIT.isoformat()}, timeout=WAIT_S).status_code in (404,
                                                                                                                 410)
    assert world.snapshot() == before and world.booking("b1").confirmed_at is None


def test_N4_a_used_link_replayed_says_so_and_cannot_undo_a_cancellation(world, browser):
    """N4: once confirmed, the page offers no confirm, and a replayed POST says "already done"
    and does nothing; after the customer cancelled, confirming cannot bring the booking back,
    and the cancel replayed does nothing more (N2: no second event, no second staff notice)."""
    world.book("b1", "c1")
    link = world.link_in_mail("c1")
    open_page(browser, link)
    press(browser, "confirm")
    world.beat()
    assert "booking.confirmed_by_customer" in [e["type"] for e in world.published()]

    before = world.snapshot()
    open_page(browser, link)
    assert text_of(browser, "status") == "Bestätigt" and "confirm" not in buttons(browser)
    again = httpx.post(f"{link}/confirm", data={"visit": VISIT.isoformat()}, timeout=WAIT_S, follow_redirects=True)
    assert again.status_code == 200 and "Das ist bereits erledigt." in again.text
    assert world.snapshot() == before

    cancel_on_page(browser)  # inside the window: cancelling a confirmed visit is allowed
    world.beat()
    assert sorted(e["type"] for e in world.published()) == ["booking.cancelled_by_customer", "slot.released"]
    notices = len(world.staff.requests)

    before = world.snapshot()
    open_page(browser, link)
    assert text_of(browser, "status") == "Abgesagt" and buttons(browser) == []
    assert httpx.post(f"{link}/confirm", data={"visit": VISIT.isoformat()}, timeout=WAIT_S).status_code == 409
    assert httpx.post(f"{link}/cancel", data={"visit": VISIT.isoformat()}, timeout=WAIT_S).status_code == 303
    assert world.snapshot() == before and world.booking("b1").status == "cancelled"
    world.beat()
    assert world.published() == [] and len(world.staff.requests) == notices
