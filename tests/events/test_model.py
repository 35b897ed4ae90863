"""The canonical event is what the log stores: it must survive the trip through its encoding."""

from __future__ import annotations

from datetime import UTC, datetime

from worldflow.events.model import Event, decode_event, encode_event


def test_event_round_trips_through_the_log_encoding() -> None:
    now = datetime(2026, 12, 3, 10, 0, 0, 123000, tzinfo=UTC)
    event = Event(
        message_id="m1", workspace_id="default", source_id="src", channel="segment",
        type="track", name="zone.entered", schema_version=1, tier=1, timestamp=now,
        received_at=now, anonymous_id="a1", properties={"zone_id": "lobby", "n": [1, 2.5]},
        context={"world": {"id": "paris"}},
    )  # fmt: skip
    body = encode_event(event)
    assert decode_event(body) == event
    assert b'"custom"' not in body  # defaults are left out: the log stays small
    assert event.identity_key == "a1"
