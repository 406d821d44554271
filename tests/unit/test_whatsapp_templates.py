"""R41, R44: WhatsApp messages use the approved template of the booked resource's type (or of
the resource), like the other channels' files, and Twilio is sent that template's Content SID
for the tenant and language, never its name."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta

import pytest

from notifier.channels.fake import FakeChannel
from notifier.domain.model import Channel
from notifier.services import apply_events
from notifier.settings import SettingsError, load_settings
from tests.conftest import START, TENANTS, created, customer, make_context, make_settings
from tests.unit.test_services import run_due

TENANT_SID = "HX" + "a" * 32  # the tenant's own booking_info_room_v1 in German
PLATFORM_SID = "HX" + "b" * 32  # the platform account's booking_info_v2 in German


@pytest.fixture
def whatsapp():
    return FakeChannel("whatsapp")


@pytest.fixture
def ctx(tmp_path, clock, email, whatsapp):
    tenants = tmp_path / "tenants"
    shutil.copytree(TENANTS, tenants)
    salon = tenants / "salon-berlin.yaml"
    salon.write_text(salon.read_text().replace("channels: [email]", "channels: [email, whatsapp]") + (
        f"sender:\n  whatsapp_content:\n    booking_info_room_v1: {{de: {TENANT_SID}}}\n"))
    config = tmp_path / "notifier.toml"
    config.write_text(f'[notifier.twilio_content]\nbooking_info_v2 = {{de = "{PLATFORM_SID}"}}\n')
    settings = make_settings(tmp_path, tenants_path=tenants, config=config)
    context = make_context(settings, channels={Channel.EMAIL: email, Channel.WHATSAPP: whatsapp})
    yield context
    context.close()


def book(ctx, booking_id, resource):
    cust = customer(f"c-{booking_id}", phone="+4915123456789", consents={"whatsapp": True, "email": True})
    body = created(booking_id, starts_at=START + timedelta(days=2), cust=cust, resource=resource)
    apply_events(ctx.store, [json.dumps(body)], now=ctx.clock.now(), source="test")


def test_R41_R44_whatsapp_uses_the_resource_types_template_and_the_tenants_content_sid(ctx, whatsapp):
    book(ctx, "b-sauna", {"id": "sauna", "name": "Sauna 2", "type": "equipment"})
    book(ctx, "b-anna", {"id": "anna", "name": "Anna Weber", "type": "specialist"})
    run_due(ctx)
    sent = {m.metadata["booking_id"]: m for m in whatsapp.sent}
    room, person = sent["b-sauna"], sent["b-anna"]
    # equipment is reserved from one time to another: its own approved template (R41)
    assert (room.template, room.template_language, room.content_sid) == ("booking_info_room_v1", "de", TENANT_SID)
    assert "Sauna 2" in room.params and len(room.params) == 7
    # a specialist has none of its own: the bundle's, with the platform account's SID
    assert (person.template, person.content_sid) == ("booking_info_v2", PLATFORM_SID)


def test_R44_a_content_sid_table_that_cannot_be_right_is_refused_at_load(tmp_path):
    config = tmp_path / "notifier.toml"
    config.write_text('[notifier.twilio_content]\nbooking_info_v2 = {de = "booking_info_v2"}\n')
    with pytest.raises(SettingsError, match=r"twilio_content.booking_info_v2.de = 'booking_info_v2': expected a "
                                            r"Content SID"):
        load_settings({"NOTIFIER_CONFIG": str(config)})
