"""The event contract: schema export in step with the code, documented examples valid, bad input named."""

import json
import re
from pathlib import Path

import jsonschema
import pytest

from notifier.domain import events as ev

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_exported_schema_matches_the_contract():
    assert json.loads((DOCS / "events.schema.json").read_text()) == ev.json_schema(), "run `make schema`"


def documented_examples():
    text = (DOCS / "events.md").read_text()
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.S)]


def test_every_event_type_is_documented_with_a_valid_example():
    examples = documented_examples()
    assert {e["type"] for e in examples} == set(ev.EVENT_TYPES)
    schema = ev.json_schema()
    for example in examples:
        jsonschema.validate(example, schema)
        parsed = ev.parse_event(json.dumps(example))
        assert parsed.type == example["type"]


@pytest.mark.parametrize("body, fragment", [
    (b"{not json", "Invalid JSON"),
    (b'{"type": "booking.exploded"}', "does not match any of the expected tags"),
    (b'{"schema_version": 1, "event_id": "e1", "type": "booking.cancelled", "occurred_at": "2026-12-01T10:00:00",'
     b' "tenant_id": "t", "revision": 1, "data": {"booking_id": "b", "by": "staff"}}', "timezone"),
    (b'{"schema_version": 1, "event_id": "e1", "type": "booking.status_changed", '
     b'"occurred_at": "2026-12-01T10:00:00Z", "tenant_id": "t", "revision": 1, '
     b'"data": {"booking_id": "b", "status": {"id": "x", "name": "No", "kind": "cancellation"}}}', "R34"),
    (b'{"schema_version": 2, "event_id": "e1", "type": "booking.cancelled", "occurred_at": "2026-12-01T10:00:00Z",'
     b' "tenant_id": "t", "revision": 1, "data": {"booking_id": "b", "by": "staff"}}', "schema_version"),
])
def test_invalid_events_are_refused_with_a_reason(body, fragment):
    with pytest.raises(ev.InvalidEvent) as caught:
        ev.parse_event(body)
    assert fragment in caught.value.reason


def test_the_openapi_document_is_in_step_with_the_web_app():
    from notifier.web.app import openapi_document

    assert json.loads((DOCS / "openapi.json").read_text()) == openapi_document(), "run `make schema`"
