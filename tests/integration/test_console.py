"""Issue 22, acceptance 3: the ops console in a real browser (N3, N7, P5, R3, R21, R40).

Headless Chromium (one for the module, as in test_browser_links.py) on `notifier web` served by
uvicorn on a loopback port, the store on PostgreSQL and mail through a real SMTP server on
loopback: an unauthenticated visit is sent to the sign-in form and an unsigned POST refused; an
operator's key signs in; a search by the customer's email finds their messages, by their phone
(as they wrote it) their SMS, and by channel, status, booking and due days what each says; a
cancellation that came before the change it follows is listed as held, with why; a planned
reminder is withdrawn and a failed message sent again (it reaches the SMTP server at the next
sweep), each on the booking's timeline with the key that did it; a dead letter is replayed once
its tenant exists; a template is previewed with a booking's data, HTML and text side by side, an
SMS's segments counted, another resource type's template with the samples, and a test sent to
a typed address reaches the SMTP server and the booking's timeline (who, the address masked), as
does one from `notifier templates preview --send-to`. With
NOTIFIER_SCREENSHOTS=DIR the preview is saved as DIR/console-preview.png (`make screenshots`).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import select

from notifier.access import create_key
from notifier.bootstrap import Context, build_channels
from notifier.services import apply_events, load_tenants, timeline_of
from notifier.store import schema as t
from tests.conftest import START, TENANTS, created, customer, event, make_context, make_settings, settings_env
from tests.integration.test_browser_links import (  # noqa: F401 - chromium: the module's one browser
    WAIT_S,
    chromium,
    gone,
    screenshot,
    serious_accessibility_problems,
    serve,
)
from tests.unit.test_services import run_due

TENANT = "salon-console"
VISIT = START + timedelta(days=2, hours=6)  # Thursday 3 December 2026, 13:00 in Berlin
BOUNCES = "weg@example.org"


@dataclass
class Console:
    ctx: Context
    base_url: str
    mail: Any  # MailSink
    key: str  # an operator's

    def rows(self, booking_id: str) -> dict[str, Any]:
        with self.ctx.store.engine.connect() as conn:
            return {r.key.split("/")[0] + ("+" if r.resend_of else ""): r for r in conn.execute(
                select(t.messages).where(t.messages.c.booking_id == booking_id))}


@pytest.fixture
def console(tmp_path: Path, pg_url: str, mail_sink: Any, clock: Any) -> Iterator[Console]:
    from notifier.fake_providers import FakeProviders
    from notifier.web.app import create_app

    folder = tmp_path / "tenants"
    folder.mkdir()
    (folder / f"{TENANT}.yaml").write_text(yaml.safe_dump({
        "id": TENANT, "name": "Salon Console", "timezone": "Europe/Berlin", "home_region": "DE", "language": "de",
        "channels": ["email", "sms"], "message_events": True,
        "company": {"name": "Salon Console", "address": "Konsolenweg 1, 10115 Berlin", "phone": "+49 30 5550199"},
        "sender": {"mail_from": "Salon Console <termine@salon-console.example>"},
        "settings": {"info": {"channels": ["email"]}, "reminder": {"channels": ["sms", "email"]},
                     "confirmation": {"enabled": False}, "feedback": {"enabled": False},
                     "quiet_hours": {"enabled": False}, "staff": {"enabled": False}},
        "resources": [{"id": "anna", "name": "Anna Weber"}]}))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with FakeProviders() as providers:  # SMS for customers who consented to it: their reminder goes by SMS
        settings = make_settings(tmp_path, database_url=pg_url, tenants_path=folder, public_url=base_url,
                                 smtp_port=mail_sink.port, dispatch_concurrency=1, twilio_api_url=providers.url,
                                 twilio_account_sid=providers.account_sid, twilio_auth_token=providers.auth_token,
                                 twilio_from="+4930123456")
        ctx = make_context(settings, channels=build_channels(settings))
        stop = serve(create_app(ctx), sock)
        try:
            yield Console(ctx, base_url, mail_sink, create_key(ctx.store, tenant_id=None, name="ops",
                                                               now=START).key)
        finally:
            stop()
            ctx.close()
            sock.close()


@pytest.fixture
def browser(chromium: Any) -> Any:  # noqa: F811 - the module's browser (imported above), signed out
    chromium.delete_all_cookies()
    chromium.set_window_size(1400, 1000)
    return chromium


def book(console: Console, booking_id: str, email: str, *, starts_at: Any = VISIT, **who: Any) -> None:
    apply_events(console.ctx.store, [json.dumps(created(booking_id, tenant=TENANT, starts_at=starts_at, cust=customer(
        f"c-{booking_id}", email=email, **who)))], now=console.ctx.clock.now(), source="test")


def go(driver: Any, url: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(ec.presence_of_element_located((By.TAG_NAME, "h1")))
    return driver.find_element(By.TAG_NAME, "main").text


def submit(driver: Any, button: Any) -> str:
    """Click a submit button; the text of the page that replaced this one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    button.click()
    WebDriverWait(driver, WAIT_S).until(lambda _: gone(button))
    WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script("return document.readyState") == "complete")
    WebDriverWait(driver, WAIT_S).until(ec.presence_of_element_located((By.TAG_NAME, "h1")))
    return driver.find_element(By.TAG_NAME, "main").text


def sign_in(driver: Any, console: Console, start: str = "/console") -> str:
    from selenium.webdriver.common.by import By

    text = go(driver, console.base_url + start)
    assert driver.current_url.startswith(console.base_url + "/console/login") and "Sign in" in text
    driver.find_element(By.ID, "key").send_keys(console.key)
    return submit(driver, driver.find_element(By.CSS_SELECTOR, "form button[type=submit]"))


def in_row(driver: Any, message_id: int, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'tr[data-message="{message_id}"] {selector}')


def test_an_unauthenticated_visit_is_refused_and_only_a_valid_key_signs_in(console, browser):
    from selenium.webdriver.common.by import By

    book(console, "b1", "kunde@example.org")
    page = f"/console/tenants/{TENANT}/bookings/b1"
    go(browser, console.base_url + page)
    assert browser.current_url.startswith(console.base_url + "/console/login")  # refused: to the sign-in form
    assert "b1" not in browser.find_element(By.TAG_NAME, "main").text
    reminder = console.rows("b1")["reminder"].id
    forged = httpx.post(f"{console.base_url}/console/messages/{reminder}/withdraw", data={"csrf": "x"},
                        follow_redirects=False)
    assert forged.status_code == 403 and console.rows("b1")["reminder"].state == "planned"  # no session, no action
    browser.find_element(By.ID, "key").send_keys("ntf_" + "x" * 43)
    assert "unknown or revoked" in submit(browser, browser.find_element(By.CSS_SELECTOR, "form button"))
    browser.find_element(By.ID, "key").send_keys(console.key)
    text = submit(browser, browser.find_element(By.CSS_SELECTOR, "form button"))
    assert browser.current_url == console.base_url + page and "Booking b1" in text  # back where it was asked
    cookie = browser.get_cookie("notifier_console")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert browser.execute_script("return document.cookie") == ""  # the page's scripts cannot read the key
    assert not serious_accessibility_problems(browser), serious_accessibility_problems(browser)


def test_search_withdraw_resend_and_replay_each_on_the_timeline_with_who(console, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    book(console, "b1", "kunde@example.org")
    book(console, "b2", BOUNCES)
    console.mail.refuse.add(BOUNCES)
    run_due(console.ctx)  # b1's info is sent, b2's fails for good; both reminders wait for the visit's morning
    apply_events(console.ctx.store, [json.dumps(created("b3", tenant="salon-later"))], now=START, source="test")
    sign_in(browser, console)

    # search: the customer's email, any case
    go(browser, console.base_url + "/console")
    Select(browser.find_element(By.ID, "tenant")).select_by_visible_text(TENANT)
    browser.find_element(By.ID, "email").send_keys("KUNDE@example.org")
    text = submit(browser, browser.find_element(By.CSS_SELECTOR, "form[aria-label='Search messages'] button"))
    found = {int(r.get_attribute("data-message")) for r in browser.find_elements(By.CSS_SELECTOR, "tr[data-message]")}
    rows = console.rows("b1")
    assert found == {rows["info"].id, rows["reminder"].id} and "salon-console / b1" in text

    # withdraw b1's reminder, with a reason
    browser.find_element(By.LINK_TEXT, f"{TENANT} / b1").click()
    in_row(browser, rows["reminder"].id, "input[name=reason]").send_keys("the customer asked for no reminder")
    text = submit(browser, in_row(browser, rows["reminder"].id, "button[name=withdraw]"))
    assert f"Message {rows['reminder'].id} withdrawn." in text
    withdrawn = console.rows("b1")["reminder"]
    assert withdrawn.state == "withdrawn" and withdrawn.by.startswith("key_") and withdrawn.by.endswith(" (ops)")
    assert "by key_" in in_row(browser, rows["reminder"].id, "td:nth-child(7)").text

    # send b2's failed info again once the mailbox works
    console.mail.refuse.clear()
    go(browser, f"{console.base_url}/console/tenants/{TENANT}/bookings/b2")
    failed = console.rows("b2")["info"].id
    text = submit(browser, in_row(browser, failed, "button[name=resend]"))
    again = console.rows("b2")["info+"]
    assert f"Sent again as message {again.id}" in text and again.resend_of == failed
    run_due(console.ctx)
    assert [m["To"] for m in console.mail.messages] == ["kunde@example.org", BOUNCES]
    who = f"{console.rows('b1')['reminder'].by}"
    assert who.endswith("(ops)")
    for booking_id, kind in (("b1", "message.withdrawn"), ("b2", "message.resend")):
        entry = [e for e in timeline_of(console.ctx.store, TENANT, booking_id) if e["kind"] == kind][-1]
        assert entry["detail"]["by"] == who, entry
    go(browser, f"{console.base_url}/console/tenants/{TENANT}/bookings/b2")
    assert f"message.resend kind=info channel=email of={failed} by={who}" in \
        browser.find_element(By.CSS_SELECTOR, "ol.timeline").text

    # a dead letter: an unknown tenant's booking; the operator loads the tenant and replays it
    go(browser, console.base_url + "/console/queue")
    [dead] = browser.find_elements(By.CSS_SELECTOR, "tr[data-dead-letter]")
    assert "unknown tenant 'salon-later'" in dead.text
    later = Path(console.ctx.settings.tenants_path).parent / "later"
    later.mkdir()
    doc = yaml.safe_load((TENANTS / "salon-berlin.yaml").read_text()) | {"id": "salon-later"}
    (later / "salon-later.yaml").write_text(yaml.safe_dump(doc))
    load_tenants(console.ctx.store, later, now=START)
    text = submit(browser, dead.find_element(By.CSS_SELECTOR, "button[name=replay]"))
    assert "replayed" in text
    assert [e["detail"] for e in timeline_of(console.ctx.store, "salon-later", "b3")
            if e["kind"] == "event.replayed"][0]["by"] == who


def test_preview_side_by_side_and_a_test_send_reaches_the_smtp_server(console, browser):
    from selenium.webdriver.common.by import By

    book(console, "b1", "kunde@example.org")
    sign_in(browser, console)
    go(browser, f"{console.base_url}/console/templates?tenant={TENANT}&kind=reminder&channel=email&booking=b1")
    text = browser.find_element(By.ID, "text").text
    assert "Donnerstag, 3. Dezember 2026 um 13:00 Uhr" in text and "/l/xxxxxxxxxxxxxxxxx" in text
    assert browser.find_element(By.ID, "subject").text.startswith("Erinnerung")
    frame = browser.find_element(By.CSS_SELECTOR, "iframe")
    browser.switch_to.frame(frame)
    html = browser.find_element(By.TAG_NAME, "body").text
    browser.switch_to.default_content()
    assert "Donnerstag, 3. Dezember 2026 um 13:00 Uhr" in html  # the HTML part, beside the text
    if os.environ.get("NOTIFIER_SCREENSHOTS"):
        screenshot(browser, Path(os.environ["NOTIFIER_SCREENSHOTS"]) / "console-preview.png")
    assert not serious_accessibility_problems(browser), serious_accessibility_problems(browser)

    browser.find_element(By.ID, "to").send_keys("ops@salon-console.example")
    text = submit(browser, browser.find_element(By.CSS_SELECTOR, "button[name=send]"))
    assert "Test sent to ops@salon-console.example" in text
    [mail] = console.mail.messages
    assert mail["To"] == "ops@salon-console.example" and mail["Subject"].startswith("[Test] Erinnerung")
    assert mail["From"] == "Salon Console <termine@salon-console.example>"  # the tenant's own sender
    assert "13:00" in mail.get_body(("plain",)).get_content()
    assert console.rows("b1")["reminder"].state == "planned"  # the booking's own reminder is untouched
    [test] = [e["detail"] for e in timeline_of(console.ctx.store, TENANT, "b1") if e["kind"] == "message.test_sent"]
    assert test["by"].endswith(" (ops)") and test["channel"] == "email" and "ops@" not in test["to"]  # masked

    go(browser, f"{console.base_url}/console/templates?tenant={TENANT}&kind=reminder&channel=sms&language=it")
    segments = browser.find_element(By.ID, "segments").text
    assert "GSM-7" in segments and "segment" in segments
    assert "no HTML part" in browser.find_element(By.CSS_SELECTOR, "section[aria-label=HTML]").text


def test_search_by_phone_channel_status_and_days_held_events_and_a_preview_of_the_samples(console, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    book(console, "b1", "kunde@example.org", phone="+49 151 23456789", consents={"email": True, "sms": True})
    book(console, "b2", "gast@example.org", starts_at=VISIT + timedelta(days=7))  # the week after
    run_due(console.ctx)  # both infos are sent; b1's reminder waits by SMS, b2's by email
    apply_events(console.ctx.store, [json.dumps(event("booking.cancelled", {"booking_id": "b2", "by": "staff"},
                                                      tenant=TENANT, revision=3))], now=START, source="test")
    b1, b2 = console.rows("b1"), console.rows("b2")
    assert (b1["reminder"].channel, b2["reminder"].channel) == ("sms", "email")
    sign_in(browser, console)

    def search(**fields: str) -> set[int]:
        go(browser, console.base_url + "/console")
        Select(browser.find_element(By.ID, "tenant")).select_by_visible_text(TENANT)
        for name, value in fields.items():
            field = browser.find_element(By.ID, name)
            if field.tag_name == "select":
                Select(field).select_by_visible_text(value)
            elif field.get_attribute("type") == "date":  # typed as the browser's locale wants: set it instead
                browser.execute_script("arguments[0].value = arguments[1]", field, value)
            else:
                field.send_keys(value)
        submit(browser, browser.find_element(By.CSS_SELECTOR, "form[aria-label='Search messages'] button"))
        for name, value in fields.items():  # the page keeps what was asked
            assert browser.find_element(By.ID, name).get_attribute("value") == value
        return {int(r.get_attribute("data-message")) for r in browser.find_elements(By.CSS_SELECTOR, "tr[data-message]")}

    # the number as the customer wrote it, read in the tenant's region: their SMS, not their emails
    assert search(phone="0151 23456789") == {b1["reminder"].id}
    assert search(channel="email", state="sent") == {b1["info"].id, b2["info"].id}
    assert search(booking="b2") == {b2["info"].id, b2["reminder"].id}
    # due days in the tenant's zone: the week after holds b2's reminder alone
    week_after = (VISIT + timedelta(days=4)).date().isoformat(), (VISIT + timedelta(days=8)).date().isoformat()
    assert search(**{"from": week_after[0], "to": week_after[1]}) == {b2["reminder"].id}
    assert search(**{"from": week_after[0], "to": week_after[1], "state": "sent"}) == set()

    # b2's cancellation came before the change it follows: held, with why
    go(browser, console.base_url + "/console/queue")
    [held] = browser.find_elements(By.CSS_SELECTOR, "table[aria-label='Held events'] tbody tr")
    cells = [c.text for c in held.find_elements(By.TAG_NAME, "td")]
    assert cells[1:5] == [TENANT, "b2", "booking.cancelled", "3"] and cells[5], cells

    # a template of the other resource type, with the samples: chosen in the form
    go(browser, console.base_url + "/console/templates")
    for name, value in (("tenant", TENANT), ("kind", "info"), ("channel", "email"), ("language", "en"),
                        ("resource_type", "equipment")):
        Select(browser.find_element(By.ID, name)).select_by_visible_text(value)
    submit(browser, browser.find_element(By.CSS_SELECTOR, "form[aria-label='Choose a template'] button"))
    facts = browser.find_element(By.CSS_SELECTOR, "dl.facts").text
    assert "equipment/en/info.email.j2" in facts and "samples" in facts, facts
    assert browser.find_element(By.ID, "text").text and browser.find_element(By.CSS_SELECTOR, "iframe")


def test_the_command_line_previews_a_template_and_sends_a_test_to_the_smtp_server(console):
    from click.testing import CliRunner

    from notifier.cli import main

    book(console, "b1", "kunde@example.org")
    shown = CliRunner().invoke(main, ["templates", "preview", "--tenant", TENANT, "--kind", "reminder", "--channel",
                                      "email", "--booking", "b1", "--send-to", "ops@salon-console.example",
                                      "--by", "anna"], env=settings_env(console.ctx.settings))
    assert shown.exit_code == 0, shown.output
    assert "Donnerstag, 3. Dezember 2026 um 13:00 Uhr" in shown.output and "test sent" in shown.output
    [mail] = console.mail.messages
    assert mail["To"] == "ops@salon-console.example" and mail["Subject"].startswith("[Test] Erinnerung")
    assert [e["detail"]["by"] for e in timeline_of(console.ctx.store, TENANT, "b1")
            if e["kind"] == "message.test_sent"] == ["anna"]
