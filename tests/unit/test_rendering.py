"""Rendering: babel dates in the customer's language and the tenant's zone; a sandbox (N6)."""

from datetime import UTC, datetime

import pytest
from jinja2 import UndefinedError
from jinja2.exceptions import SecurityError

from notifier.rendering.environment import Renderer, TemplateMissing
from notifier.settings import shipped_path

CONTEXT = {
    "customer": {"name": "Erika Mustermann", "first_name": "Erika", "language": "de"},
    "company": {"name": "Salon", "address": "Hauptstr. 1", "phone": "+49 30 1"},
    "booking": {"id": "b1", "starts_at": datetime(2026, 3, 29, 7, 30, tzinfo=UTC),
                "ends_at": datetime(2026, 3, 29, 8, 30, tzinfo=UTC), "service": "", "duration_min": 60},
    "resource": {"name": "Anna Weber", "type": "specialist"},
    "links": {"page": "https://book.example/l/0Vt8NBv9otkt1QBI1"},
    "reply": {"text": "", "channel": ""},  # a staff_reply's (issue 23); empty in every other kind, as in dispatch
}


@pytest.fixture
def shipped():
    return Renderer(shipped_path("templates"))


@pytest.mark.parametrize("language, date_text, time_text", [
    ("de", "Sonntag, 29. März 2026", "09:30"),  # 07:30 UTC is 09:30 in Berlin after the spring change
    ("it", "domenica 29 marzo 2026", "09:30"),
    ("en", "Sunday, March 29, 2026", "9:30"),
    ("ru", "воскресенье, 29 марта 2026", "09:30"),
])
def test_dates_in_the_customers_language_and_the_tenants_zone(shipped, language, date_text, time_text):
    out = shipped.render("info", "email", "specialist", (language,), CONTEXT, timezone="Europe/Berlin",
                         locale=language)
    assert date_text in out.text and time_text in out.text
    assert out.subject and out.html and out.template == f"specialist/{language}/info.email.j2"


def test_language_falls_back_in_order(shipped):
    out = shipped.render("info", "email", "equipment", ("xx", "it"), CONTEXT, timezone="Europe/Rome", locale="it")
    assert out.template == "equipment/it/info.email.j2"
    with pytest.raises(TemplateMissing):
        shipped.render("nonexistent", "email", "specialist", ("de",), CONTEXT, timezone="Europe/Berlin",
                       locale="de")


def test_html_escapes_customer_data(shipped):
    evil = dict(CONTEXT, customer={"name": "<script>x</script>", "first_name": "<script>x</script>",
                                   "language": "de"})
    out = shipped.render("info", "email", "specialist", ("de",), evil, timezone="Europe/Berlin", locale="de")
    assert "<script>" not in out.html and "&lt;script&gt;" in out.html


def write(tmp_path, body):
    folder = tmp_path / "specialist" / "de"
    folder.mkdir(parents=True)
    (folder / "info.email.j2").write_text(body)
    return Renderer(tmp_path)


def test_an_unknown_variable_is_an_error_not_an_empty_string(tmp_path):
    renderer = write(tmp_path, "{% block text %}Hallo {{ customer.nickname }}{% endblock %}")
    with pytest.raises(UndefinedError):
        renderer.render("info", "email", "specialist", ("de",), CONTEXT, timezone="Europe/Berlin", locale="de")


# template injections; tests/unit/test_template_checks.py refuses each before use too
INJECTIONS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ customer.__class__.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ ''|attr('__class__') }}",
    "{{ '{0.__class__.__mro__}'.format(customer) }}",
    "{{ '{0.__init__.__globals__}'.format(cycler) }}",
    "{{ ('%s' % customer.__class__) }}",
    "{{ customer.items.__self__.__class__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{% set x = customer.update({'name': 'pwned'}) %}{{ x }}",
]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_N6_template_injection_cannot_reach_python_internals(tmp_path, payload):
    renderer = write(tmp_path, "{% block text %}" + payload + "{% endblock %}")
    with pytest.raises((SecurityError, UndefinedError)):
        renderer.render("info", "email", "specialist", ("de",), CONTEXT, timezone="Europe/Berlin", locale="de")
    assert CONTEXT["customer"]["name"] == "Erika Mustermann"  # and the context was not changed


from notifier.domain.model import Kind  # noqa: E402

LINKS = {"page": "https://book.example/l/0Vt8NBv9otkt1QBI1"}


@pytest.mark.parametrize("language", ["de", "it", "en", "ru"])
@pytest.mark.parametrize("resource_type", ["specialist", "equipment"])
@pytest.mark.parametrize("kind", list(Kind))
def test_R41_R45_every_kind_renders_in_every_shipped_language(shipped, kind, resource_type, language):
    channels = (["activity"] if kind.value.startswith("activity_") else ["staff"]) if kind.to_staff \
        else ["email", "sms"]
    context = dict(CONTEXT, links=LINKS, booking=dict(CONTEXT["booking"], cancel_reason="Krank", cancelled_by="",
                                                      status=""),
                   reply={"text": "Geht auch 10 Uhr?", "channel": "sms"})
    for channel in channels:
        out = shipped.render(kind.value, channel, resource_type, (language,), context, timezone="Europe/Berlin",
                             locale=language)
        assert out.template.split("/")[1] == language
        if kind is not Kind.FEEDBACK:  # the only kind that need not repeat the time
            assert "09:30" in out.text or "9:30" in out.text, out.text
        assert out.subject or channel == "sms"
        if kind in (Kind.CONFIRMATION,):
            assert LINKS["page"] in out.text
        if kind is Kind.STAFF_REPLY:  # R1: the staff read what the customer wrote
            assert "Geht auch 10 Uhr?" in out.text
        if channel == "sms":
            assert len(out.text) <= 320, f"{out.template}: {len(out.text)} characters is more than two segments"


CUSTOMER_KINDS = [kind for kind in Kind if not kind.to_staff]


@pytest.mark.parametrize("language", ["de", "it", "en", "ru"])
@pytest.mark.parametrize("channel", ["email", "sms", "whatsapp"])
def test_R11_R14_R27_every_customer_message_on_every_channel_carries_the_page_that_confirms_and_cancels(
        shipped, channel, language):
    """The confirmation request's link also cancels (R11): an email had a cancel link of its own,
    SMS and WhatsApp only the confirm link. Every message now carries the booking's one page."""
    context = dict(CONTEXT, links=LINKS, booking=dict(CONTEXT["booking"], cancel_reason="Krank", cancelled_by="",
                                                      status=""))
    for kind in CUSTOMER_KINDS:
        out = shipped.render(kind.value, channel, "specialist", (language,), context, timezone="Europe/Berlin",
                             locale=language)
        assert LINKS["page"] in (out.params if channel == "whatsapp" else out.text), out.template
