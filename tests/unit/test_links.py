"""The customer's page behind the one link (R11, R14, R19, R22, R23, N4), through the web app on
SQLite: the token is short and opaque; a GET shows the visit as it is now and changes nothing;
the page offers only what applies now, and the POSTs behind its buttons act once; the link
survives moves and stops working a while after the visit. The same in a real browser:
tests/integration/test_browser_links.py."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from icalendar import Calendar
from sqlalchemy import func, select

from notifier.dispatch import sender_identity, template_context
from notifier.domain.model import Channel
from notifier.domain.planning import zone_of
from notifier.links import ALPHABET, TOKEN_CHARS, BookingLinks
from notifier.rendering.calendar import calendar_card
from notifier.services import apply_events, load_tenants, publish_outbox, timeline_of
from notifier.store import schema as t
from notifier.web.app import create_app
from notifier.web.pages import PAGE_BACKGROUND, accessible_accent, brand_of
from tests.conftest import START, created, customer, event
from tests.unit.test_services import run_due

TENANT = "clinic-full"  # every setting at its default
VISIT = START + timedelta(days=3, hours=3)  # Friday 4 December 2026, 10:00 in Berlin
WEISS = {"id": "dr-weiss", "name": "Dr. Weiss", "type": "specialist"}


def book(ctx, booking_id="b1", *, tenant=TENANT, starts_at=VISIT, language="de", **kw):
    body = created(booking_id, tenant=tenant, starts_at=starts_at, cust=customer(f"c-{booking_id}", language=language),
                   resource=WEISS, **kw)
    apply_events(ctx.store, [json.dumps(body)], now=ctx.clock.now(), source="test")


def tenant_from(ctx, tmp_path, yaml_text):
    """A tenant of the test's own, loaded as an operator loads tenant files."""
    folder = tmp_path / "tenants"
    folder.mkdir(exist_ok=True)
    (folder / "t.yaml").write_text(yaml_text)
    load_tenants(ctx.store, folder, now=START)


def page_url(ctx, booking_id="b1", tenant=TENANT):
    """The booking's link as dispatch records it before the first message carrying it leaves."""
    with ctx.store.transaction() as tx:
        tx.save_links([(ctx.links.token(tenant, booking_id), tenant, booking_id)], ctx.clock.now())
    return "/l/" + ctx.links.token(tenant, booking_id)


@pytest.fixture
def web(ctx):
    book(ctx)
    return TestClient(create_app(ctx), follow_redirects=False)


def row(ctx, booking_id="b1"):
    with ctx.store.engine.connect() as conn:
        return conn.execute(select(t.bookings).where(t.bookings.c.id == booking_id)).one()


def outbound(ctx):
    sent = []
    publish_outbox(ctx.store, lambda type_, tenant, payload: sent.append((type_, payload)), now=ctx.clock.now())
    return sent


def snapshot(ctx):
    with ctx.store.engine.connect() as conn:
        return (conn.execute(select(t.bookings).order_by(t.bookings.c.id)).all(),
                conn.execute(select(func.count()).select_from(t.timeline)).scalar_one(),
                conn.execute(select(func.count()).select_from(t.outbox)).scalar_one(),
                conn.execute(select(t.messages.c.id, t.messages.c.state, t.messages.c.due_at)
                             .order_by(t.messages.c.id)).all())


def press(web, url, action, *, visit=VISIT, **form):
    return web.post(f"{url}/{action}", data={"visit": visit.isoformat(), **form})


def text_of(page):
    """The page's words, without tags (what a reader sees, roughly)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.text)).replace("\xa0", " ")


# --- the link -------------------------------------------------------------------------------------

def test_N4_the_token_is_short_opaque_stable_and_the_same_for_every_action(ctx):
    links = ctx.links
    token = links.token(TENANT, "b1")
    assert len(token) == TOKEN_CHARS == 17 and set(token) <= set(ALPHABET)
    assert token == links.token(TENANT, "b1")  # the same whenever it is made: a retry renders the same text
    ours = "a link secret of sixteen characters or more"
    assert BookingLinks(ours, "http://a").token(TENANT, "b1") == BookingLinks(ours, "https://b/").token(TENANT, "b1")
    assert token != links.token(TENANT, "b2") and token != links.token("studio-roma", "b1")
    assert token != BookingLinks("another secret of ours", "http://x").token(TENANT, "b1")
    for readable in (TENANT, "b1", "clinic", base64.urlsafe_b64encode(TENANT.encode()).decode()[:6]):
        assert readable not in token
    assert links.url(TENANT, "b1") == f"{ctx.settings.public_url}/l/{token}"
    context = template_context(*_parts(ctx), links)
    assert context["links"] == {"page": links.url(TENANT, "b1"), "confirm": links.url(TENANT, "b1"),
                                "cancel": links.url(TENANT, "b1")}  # older bundles' names: the same page


def _parts(ctx):
    book(ctx)
    with ctx.store.transaction() as tx:
        booking = tx.booking(TENANT, "b1")
        return tx.tenant(TENANT), tx.resource(TENANT, "dr-weiss"), tx.customer(TENANT, "c-b1"), booking


def test_N4_dispatch_records_the_link_before_the_message_carrying_it_leaves(ctx, email):
    """The confirmation request's link opens the booking's page at once."""
    book(ctx, starts_at=START + timedelta(days=1, hours=3))
    run_due(ctx)  # the info message
    ctx.clock.set(START + timedelta(days=1))
    run_due(ctx)
    [request] = [m for m in email.sent if m.metadata["kind"] == "confirmation"]
    [url] = set(re.findall(r"http://\S+/l/\w+", request.text))
    assert url == ctx.links.url(TENANT, "b1")
    page = TestClient(create_app(ctx)).get(url.removeprefix(ctx.settings.public_url))
    assert page.status_code == 200 and "Dr. Weiss" in page.text


# --- what the page shows -----------------------------------------------------------------------------

def test_N4_a_get_shows_the_visit_and_changes_nothing(ctx, web):
    before = snapshot(ctx)
    page = web.get(page_url(ctx))
    words = text_of(page)
    assert page.status_code == 200
    assert "Freitag, 4. Dezember 2026" in words and "10:00–11:00 Uhr" in words  # German, Berlin time
    assert "Dr. Weiss" in words and "1 Stunde" in words and "Sonnenallee 5, 12045 Berlin" in words
    assert 'href="tel:+49305550199"' in page.text and "maps/search/?api=1&amp;query=Sonnenallee" in page.text
    assert "Wartet auf Ihre Bestätigung" in words
    assert 'id="confirm"' in page.text and 'id="cancel"' in page.text and 'id="calendar"' in page.text
    assert page.text.count('method="post"') == 2  # the two buttons are POSTs; the page has no script
    assert "<script" not in page.text
    assert snapshot(ctx) == before and outbound(ctx) == []


def test_N4_the_page_keeps_its_token_to_itself_and_loads_nothing_from_elsewhere(ctx, web):
    page = web.get(page_url(ctx))
    csp = page.headers["content-security-policy"]
    [style] = re.findall(r"<style>(.*?)</style>", page.text, re.S)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp and "script-src" not in csp
    assert "frame-ancestors 'none'" in csp and "form-action 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["referrer-policy"] == "no-referrer" and page.headers["cache-control"] == "no-store"
    assert not re.search(r'(src|href)="(https?:)?//(?!www\.google\.com/maps)', page.text)  # only the map link


@pytest.mark.parametrize(("language", "says"), [
    ("de", ["Wartet auf Ihre Bestätigung", "Termin bestätigen", "Termin absagen", "In meinen Kalender"]),
    ("en", ["Waiting for your confirmation", "Confirm the appointment", "Friday, December 4, 2026", "10:00 – 11:00 AM"]),
    ("it", ["In attesa della sua conferma", "Conferma l'appuntamento", "venerdì 4 dicembre 2026", "1 ora"]),
    ("ru", ["Ждёт вашего подтверждения", "Подтвердить запись", "пятница, 4 декабря 2026", "1 час"]),
])
def test_R45_the_page_speaks_the_customers_language(ctx, language, says):
    book(ctx, "b9", language=language)
    words = text_of(TestClient(create_app(ctx)).get(page_url(ctx, "b9")))
    for phrase in says:
        assert phrase.replace("'", "&#39;") in words or phrase in words, phrase


def test_R45_every_word_of_the_page_is_translated():
    from babel.messages.extract import extract_from_dir

    from notifier.web.pages import HERE, translations

    words = {message for _file, _line, message, _comments, _context in extract_from_dir(
        HERE / "templates", method_map=[("**.html", "jinja2")], options_map={"**.html": {
            "extensions": "jinja2.ext.i18n"}})}
    assert len(words) > 40
    for language in ("de", "it", "ru"):
        catalog = translations(language)
        missing = [w for w in words if catalog.gettext(w) == w]
        assert missing == [], (language, missing)


# --- confirm and cancel --------------------------------------------------------------------------------

def test_R11_confirming_withdraws_the_requests_to_confirm_and_tells_the_booking_system(ctx, web):
    url = page_url(ctx)
    done = press(web, url, "confirm")
    assert done.status_code == 303 and done.headers["location"] == f"{url}?done=confirmed"
    page = web.get(done.headers["location"])
    assert "Danke! Ihr Termin ist bestätigt." in text_of(page) and 'id="confirm"' not in page.text
    assert row(ctx).confirmed_at == START
    with ctx.store.engine.connect() as conn:  # withdrawn before any attempt: no row left to send
        left = conn.execute(select(t.messages.c.kind)
                            .where(t.messages.c.kind.in_(["confirmation", "activity_unconfirmed"]))).all()
    assert left == []
    assert [(type_, p["booking_id"]) for type_, p in outbound(ctx)] == [("booking.confirmed_by_customer", "b1")]
    before = snapshot(ctx)
    again = press(web, url, "confirm")  # a second press, a replayed POST: said so, nothing more (N2)
    assert again.headers["location"] == f"{url}?done=already"
    assert "Das ist bereits erledigt." in text_of(web.get(again.headers["location"]))
    assert snapshot(ctx) == before and outbound(ctx) == []


def test_R14_cancelling_inside_the_window_frees_the_slot_and_tells_the_staff_the_reason(ctx, web):
    url = page_url(ctx)
    done = press(web, url, "cancel", reason="  Mein Kind ist\nkrank ")
    assert done.status_code == 303 and done.headers["location"] == f"{url}?done=cancelled"
    page = text_of(web.get(done.headers["location"]))
    assert "Ihr Termin ist abgesagt." in page and "Sie haben diesen Termin abgesagt." in page
    assert "Grund: Mein Kind ist krank" in page
    booking = row(ctx)
    assert (booking.status, booking.cancelled_by, booking.cancel_reason) == ("cancelled", "customer",
                                                                            "Mein Kind ist krank")
    events = dict((type_, p) for type_, p in outbound(ctx))
    assert events["booking.cancelled_by_customer"]["reason"] == "Mein Kind ist krank"
    assert events["slot.released"]["reason"] == "cancelled_by_customer"
    with ctx.store.engine.connect() as conn:
        planned = conn.execute(select(t.messages.c.kind).where(t.messages.c.state == "planned")).scalars().all()
    assert planned == ["staff_cancelled"]  # no card went out: none to take back (R22)
    assert "slot.released" in [e["kind"] for e in timeline_of(ctx.store, TENANT, "b1")]
    before = snapshot(ctx)  # the confirm button cannot bring the booking back, the cancel does nothing more
    assert press(web, url, "confirm").status_code == 409 and snapshot(ctx) == before
    assert press(web, url, "cancel").headers["location"] == f"{url}?done=already" and snapshot(ctx) == before


def test_R11_R14_R27_the_confirmation_requests_link_cancels_under_the_defaults(ctx, web):
    """The request goes a day before the visit; a cancel window of 24 h closed as it arrived (409
    ten minutes later). The default window closes 2 h before the visit."""
    with ctx.store.engine.connect() as conn:
        [asked_at] = conn.execute(select(t.messages.c.due_at).where(t.messages.c.kind == "confirmation")).scalars()
    assert asked_at == VISIT - timedelta(days=1)
    ctx.clock.set(asked_at + timedelta(minutes=10))
    url = page_url(ctx)
    assert 'id="cancel"' in web.get(url).text
    assert press(web, url, "cancel").status_code == 303 and row(ctx).cancelled_by == "customer"


def test_R23_a_closed_window_says_until_when_it_was_open_and_gives_the_phone(ctx, web):
    url = page_url(ctx)
    ctx.clock.set(VISIT - timedelta(hours=1))  # the default window closed an hour ago
    page = web.get(url)
    words = text_of(page)
    assert 'id="cancel"' not in page.text
    until = re.search(r"Online absagen konnten Sie bis (.+?)\. Um jetzt noch abzusagen, rufen Sie uns bitte an: "
                      r"\+49 30 5550199", words)
    assert until and until.group(1) == "Freitag, 4. Dezember 2026, 08:00"  # the default window: 2 hours
    before = snapshot(ctx)
    refused = press(web, url, "cancel")
    assert refused.status_code == 409 and "Für eine Online-Absage ist es zu spät." in text_of(refused)
    assert snapshot(ctx) == before and row(ctx).status == "active" and outbound(ctx) == []


def test_R23_a_tenant_that_does_not_let_customers_cancel_by_link_gets_a_phone_number_instead(ctx, tmp_path):
    tenant_from(ctx, tmp_path, "id: by-phone\nname: Nur telefonisch\nlanguage: de\ncompany: {name: Nur "
                               "telefonisch, phone: '030 1234567'}\nsettings: {cancellation: "
                               "{customer_may_cancel: false}}\nresources: []\n")
    book(ctx, "b7", tenant="by-phone")
    web = TestClient(create_app(ctx), follow_redirects=False)
    url = page_url(ctx, "b7", tenant="by-phone")
    page = web.get(url)
    assert 'id="cancel"' not in page.text and 'href="tel:+49301234567"' in page.text
    assert "Zum Absagen rufen Sie uns bitte an: 030 1234567" in text_of(page)
    refused = press(web, url, "cancel")
    assert refused.status_code == 409 and "kann nicht online abgesagt werden" in text_of(refused)
    assert row(ctx, "b7").status == "active"


def test_N4_the_link_survives_a_move_and_shows_the_new_time_and_the_old(ctx, web):
    """Valid across moves: the link in the first message shows the new time; a button pressed on
    a page showing the old time does not act on the new one."""
    url = page_url(ctx)
    moved = event("booking.rescheduled", {"booking_id": "b1", "starts_at": (VISIT + timedelta(days=1)).isoformat(),
                                          "ends_at": (VISIT + timedelta(days=1, hours=1)).isoformat()},
                  tenant=TENANT, revision=2, at=START + timedelta(minutes=5))
    apply_events(ctx.store, [json.dumps(moved)], now=START + timedelta(minutes=5), source="test")
    words = text_of(web.get(url))
    assert "Verlegt" in words and "Samstag, 5. Dezember 2026" in words
    assert "Vorher: Freitag, 4. Dezember 2026, 10:00." in words
    stale = press(web, url, "confirm")  # the page was opened before the move
    assert stale.status_code == 409 and "hat sich geändert" in text_of(stale) and row(ctx).confirmed_at is None
    assert "Samstag, 5. Dezember 2026" in text_of(stale)  # and shows the new time
    assert press(web, url, "confirm", visit=VISIT + timedelta(days=1)).status_code == 303
    assert row(ctx).confirmed_at is not None


def test_N4_a_scanner_changes_nothing_whatever_it_fetches_or_posts(ctx, web):
    url = page_url(ctx)
    before = snapshot(ctx)
    for path in (url, f"{url}?done=confirmed", f"{url}/calendar.ics", f"{url}/confirm", f"{url}/cancel"):
        assert web.get(path).status_code in (200, 405)
        web.head(path)
    assert "Danke" not in web.get(f"{url}?done=confirmed").text  # a made-up outcome is not shown
    for action in ("confirm", "cancel"):  # a POST without the page's form: nothing is done
        assert web.post(f"{url}/{action}").status_code == 409
        assert web.post(f"{url}/{action}", data={"visit": "yesterday"}).status_code == 409
    assert web.post(url).status_code == 405 and web.post(f"{url}/delete").status_code == 404
    assert snapshot(ctx) == before and outbound(ctx) == []


@pytest.mark.parametrize("token", ["0" * 17, "AAAAAAAAAAAAAAAA", "eyJ0IjoiYiJ9.Zx1aBc.3kLmN0pQrStUvWxYz12",
                                   "abc", "x" * 400, "0Vt8NBv9otkt1QBI\u00e4"])
def test_N4_an_unknown_or_malformed_link_gets_a_clear_page_and_does_nothing(ctx, web, token):
    before = snapshot(ctx)
    shown = web.get(f"/l/{token}", headers={"accept-language": "it-IT,it;q=0.9,en;q=0.5"})
    assert shown.status_code == 404 and "Questo link non è valido" in shown.text  # the browser's language
    assert "Dr. Weiss" not in shown.text
    for action in ("confirm", "cancel"):
        assert web.post(f"/l/{token}/{action}", data={"visit": VISIT.isoformat()}).status_code == 404
    assert web.get(f"/l/{token}/calendar.ics").status_code == 404
    assert snapshot(ctx) == before


def test_N4_the_link_expires_a_while_after_the_visit_not_at_a_fixed_age(ctx, web):
    url = page_url(ctx)
    ctx.clock.set(VISIT + timedelta(days=1))
    over = web.get(url)
    assert over.status_code == 200 and "Termin vorbei" in text_of(over) and 'id="calendar"' not in over.text
    ctx.clock.set(VISIT + timedelta(hours=1, seconds=ctx.settings.link_valid_after_visit_s))
    gone = web.get(url)
    assert gone.status_code == 410 and "Dieser Link ist abgelaufen" in gone.text
    assert "+49 30 5550199" in gone.text and "Dr. Weiss" not in gone.text and "Dezember" not in gone.text
    assert press(web, url, "confirm").status_code == 410 and row(ctx).confirmed_at is None
    far = VISIT + timedelta(days=300)  # a visit booked months ahead: its link lives until then
    book(ctx, "b2", starts_at=far)
    ctx.clock.set(START + timedelta(days=120))
    assert web.get(page_url(ctx, "b2")).status_code == 200


# --- each status -------------------------------------------------------------------------------------------

def _status_of(ctx, web, url):
    page = web.get(url)
    return re.search(r'id="status">([^<]+)<', page.text).group(1), page


def test_R23_R34_R18_every_status_in_words(ctx, web, tmp_path):
    """Request pending, waiting for confirmation, confirmed, moved, under way, over, cancelled
    (with the reason, by whom), declined: each says so, and offers only what applies."""
    url = page_url(ctx)
    assert _status_of(ctx, web, url)[0] == "Wartet auf Ihre Bestätigung"

    request = created("req", tenant=TENANT, starts_at=VISIT, cust=customer("c-req"), resource=WEISS)
    request["data"]["needs_approval"] = True
    apply_events(ctx.store, [json.dumps(request)], now=START, source="test")
    status, page = _status_of(ctx, web, page_url(ctx, "req"))
    assert status == "Anfrage offen" and 'id="confirm"' not in page.text and 'id="calendar"' not in page.text
    declined = event("booking.cancelled", {"booking_id": "req", "by": "staff", "reason": "Ausgebucht"},
                     tenant=TENANT, revision=2)
    apply_events(ctx.store, [json.dumps(declined)], now=START, source="test")
    status, page = _status_of(ctx, web, page_url(ctx, "req"))
    assert status == "Anfrage abgelehnt" and "Grund: Ausgebucht" in text_of(page)

    book(ctx, "staff")
    apply_events(ctx.store, [json.dumps(event("booking.cancelled", {"booking_id": "staff", "by": "staff",
                                                                    "reason": "Praxis geschlossen"},
                                              tenant=TENANT, revision=2))], now=START, source="test")
    status, page = _status_of(ctx, web, page_url(ctx, "staff"))
    assert status == "Abgesagt" and "Praxis Sonnenhof hat diesen Termin abgesagt." in text_of(page)
    assert "Grund: Praxis geschlossen" in text_of(page) and "<form" not in page.text

    press(web, url, "confirm")
    assert _status_of(ctx, web, url)[0] == "Bestätigt"
    ctx.clock.set(VISIT + timedelta(minutes=10))
    status, page = _status_of(ctx, web, url)
    assert status == "Läuft gerade" and "<form" not in page.text and 'href="tel:' in page.text
    ctx.clock.set(VISIT + timedelta(hours=2))
    assert _status_of(ctx, web, url)[0] == "Termin vorbei"


def test_R11_a_tenant_that_asks_no_confirmation_shows_booked_without_a_confirm_button(ctx, tmp_path):
    tenant_from(ctx, tmp_path, "id: no-confirm\nname: Ohne\nlanguage: en\nsettings: {confirmation: "
                               "{enabled: false}}\nresources: []\n")
    book(ctx, "b5", tenant="no-confirm", language="en")
    page = TestClient(create_app(ctx)).get(page_url(ctx, "b5", tenant="no-confirm"))
    assert re.search(r'id="status">Booked<', page.text) and 'id="confirm"' not in page.text
    assert 'id="cancel"' in page.text


# --- the calendar card --------------------------------------------------------------------------------------

def test_R22_the_download_is_the_emails_card_for_the_booking_as_it_is_now(ctx, web):
    url = page_url(ctx)
    got = web.get(f"{url}/calendar.ics")
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/calendar")
    assert got.headers["content-disposition"] == 'attachment; filename="termin.ics"'
    tenant, resource, customer_, booking = _parts(ctx)
    expected, _method = calendar_card(booking, resource, tenant, customer_, zone=zone_of(tenant, resource),
                                      organizer=sender_identity(tenant, Channel.EMAIL, ctx.settings)["sender"],
                                      stamp=ctx.clock.now())
    assert got.content == expected
    [card] = Calendar.from_ical(got.content).walk("VEVENT")
    assert card["UID"] == f"booking-{TENANT}-b1@notifier" and card.decoded("DTSTART") == VISIT
    assert str(card["ATTENDEE"]) == f"mailto:{customer_.email}" and str(card["ORGANIZER"]).startswith("mailto:")


def test_R22_a_customer_cancelling_by_link_gets_the_card_that_removes_the_visit(ctx, email, web):
    """The info email put the visit in the customer's calendar; cancelling on the page sends the
    card that takes it out again: the same UID and organizer, a higher SEQUENCE, METHOD:CANCEL."""
    ctx.clock.set(START + timedelta(hours=2))  # 09:00, after the quiet hours
    run_due(ctx)  # the info email, with the card
    [info] = email.sent
    url = page_url(ctx)
    assert press(web, url, "cancel").status_code == 303
    run_due(ctx)
    [info, cancellation] = email.sent
    cards = []
    for mail in (info, cancellation):
        [attachment] = mail.attachments
        [card] = Calendar.from_ical(attachment.data).walk("VEVENT")
        cards.append((attachment.content_type, card))
    (first_type, first), (then_type, then) = cards
    assert first_type == "text/calendar; method=REQUEST" and then_type == "text/calendar; method=CANCEL"
    assert then["UID"] == first["UID"] and int(then["SEQUENCE"]) > int(first["SEQUENCE"])
    assert str(then["STATUS"]) == "CANCELLED" and then["ORGANIZER"] == first["ORGANIZER"]
    assert str(then["ATTENDEE"]) == str(first["ATTENDEE"]) == f"mailto:{info.to}"
    assert cancellation.to == info.to and "Kalender" in cancellation.text  # it says what the card is for


# --- branding -----------------------------------------------------------------------------------------------

def test_the_tenants_brand_colour_is_made_readable_and_nothing_else_gets_into_the_page():
    from coloraide import Color

    for given in ("#ffcc00", "rebeccapurple", "hsl(120 60% 70%)", "#1d5fb4", "white"):
        accent, ink = accessible_accent(given)
        assert re.fullmatch(r"#[0-9a-f]{6}", accent) and re.fullmatch(r"#[0-9a-f]{6}", ink)
        assert Color(ink).contrast("white", method="wcag21") >= 4.5, given
        assert Color(ink).contrast(PAGE_BACKGROUND, method="wcag21") >= 4.5, given
        assert Color(ink).convert("oklch")["lightness"] <= Color(accent).convert("oklch")["lightness"] + 1e-6
    assert accessible_accent("#1d5fb4") == ("#1d5fb4", "#1d5fb4")  # dark enough already: kept
    assert accessible_accent("red;}body{display:none") == accessible_accent("#1d5fb4")  # not a colour: default

    from notifier.domain.model import Tenant

    brand = brand_of(Tenant(id="x", name="X", company={"logo_url": "https://cdn.example.com/logo.png"}))
    assert brand.logo_url and brand.image_sources == "'self' data: https://cdn.example.com"
    for bad in ("javascript:alert(1)", "http://insecure.example/logo.png", 'https://x/"><script>'):
        assert brand_of(Tenant(id="x", name="X", company={"logo_url": bad})).logo_url == ""


def test_the_booking_systems_page_is_linked_for_rescheduling_when_the_tenant_has_one(ctx, tmp_path):
    tenant_from(ctx, tmp_path, "id: own-page\nname: Own\nlanguage: en\ncompany: {name: Own, booking_url: "
                               "'https://book.example.com/manage/{booking_id}', accent_color: '#ffcc00', "
                               "logo_url: 'https://cdn.example.com/own.png'}\nresources: []\n")
    book(ctx, "b8:x@y", tenant="own-page", language="en")
    page = TestClient(create_app(ctx)).get(page_url(ctx, "b8:x@y", tenant="own-page"))
    assert 'href="https://book.example.com/manage/b8%3Ax%40y"' in page.text and "Choose another time" in page.text
    assert '<img src="https://cdn.example.com/own.png" alt="">' in page.text
    assert "img-src 'self' data: https://cdn.example.com;" in page.headers["content-security-policy"]
    assert "--accent:#ffcc00" in page.text and "--ink:#ffcc00" not in page.text


def test_workers_starting_at_once_agree_on_one_development_secret(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from notifier.links import link_secret

    with ThreadPoolExecutor(16) as pool:
        secrets = set(pool.map(lambda _: link_secret("", tmp_path), range(64)))
    assert len(secrets) == 1 and len(secrets.pop()) >= 32
    assert [p.name for p in tmp_path.iterdir()] == ["link-secret"]  # no spare files left behind
