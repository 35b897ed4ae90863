"""Segments and scores in the processor: live evaluation, timers without events, membership
events, backfill from the log, merges, and replay."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tests.processor.harness import Harness, track
from worldflow.store.schema import outbox, segment_members

CTX = {"world": {"id": "paris"}, "session_id": "s1"}
SNEAKER = {"obj": {"object_id": "shoe-1", "product": {"sku": "SKU-1", "category": "sneakers"}},
           "dwell_ms": 1500, "source": "head"}  # fmt: skip
GAZERS = {
    "kind": "segment",
    "key": "sneaker-gazers",
    "condition": {">=": [{"attention": {"category": "sneakers", "signal": "gaze_ms",
                                        "within": "1h"}}, 4000]},
}  # fmt: skip


@pytest.fixture
def h(store_url: str) -> Iterator[Harness]:
    harness = Harness(store_url)
    yield harness
    harness.close()


def gaze(user: str) -> dict[str, Any]:
    return track("object.gaze_dwell", SNEAKER, userId=user, context=CTX)


def membership_events(h: Harness) -> list[dict[str, Any]]:
    with h.sql.engine.connect() as conn:
        rows = conn.execute(sa.select(outbox.c.body).order_by(outbox.c.id)).scalars()
        return [json.loads(body) for body in rows]


def members(h: Harness, key: str) -> set[str]:
    with h.sql.engine.connect() as conn:
        query = sa.select(segment_members.c.profile_id).where(segment_members.c.key == key)
        return set(conn.execute(query).scalars())


def test_a_person_enters_on_the_event_that_fills_the_window_and_leaves_when_it_slides(
    h: Harness,
) -> None:
    h.apply(GAZERS)
    h.send(gaze("u1"), gaze("u1"), advance=timedelta(minutes=10))
    h.process()
    assert "sneaker-gazers" not in h.by("user_id", "u1").segments
    entered_at = h.now
    h.send(gaze("u1"))
    h.process()
    person = h.by("user_id", "u1")
    assert person.segments == {"sneaker-gazers": int(entered_at.timestamp() * 1000)}
    assert members(h, "sneaker-gazers") == {person.id}
    # An hour after the first gaze, only two remain in the window: without any new event
    # from this person, a tick of the log clock makes them leave, at that exact instant.
    h.tick(entered_at + timedelta(minutes=45))
    h.process()
    assert h.by("user_id", "u1").segments == {}
    assert members(h, "sneaker-gazers") == set()
    events = membership_events(h)
    assert [(e["name"], e["properties"]["segment"]) for e in events] == [
        ("segment.entered", "sneaker-gazers"), ("segment.exited", "sneaker-gazers")]  # fmt: skip
    assert events[1]["timestamp"].startswith((entered_at + timedelta(minutes=40)).isoformat()[:19])
    assert events[0]["user_id"] == "u1"
    assert events[0]["context"]["profile_id"] == person.id


def test_membership_events_read_back_from_the_log_do_not_touch_profiles(h: Harness) -> None:
    h.apply(GAZERS)
    h.send(gaze("u1"), gaze("u1"), gaze("u1"))
    h.process()
    before = h.by("user_id", "u1")
    with h.sql.engine.begin() as conn:  # what the processing loop does with the outbox
        rows = conn.execute(sa.select(outbox)).all()
        conn.execute(sa.insert(sa.table("event_log", sa.column("workspace_id"),
                     sa.column("message_id"), sa.column("partition"),
                     sa.column("received_at_ms"), sa.column("body"))), [
            {"workspace_id": r.workspace_id, "message_id": r.message_id,
             "partition": r.partition, "received_at_ms": r.received_at_ms, "body": r.body}
            for r in rows])  # fmt: skip
    h.process()
    after = h.by("user_id", "u1")
    assert after.counters == before.counters
    assert h.processor.counters()["membership_events"] == 1


def test_a_new_segment_is_backfilled_from_the_log_and_marked_so(h: Harness) -> None:
    h.send(gaze("u1"), gaze("u1"), gaze("u2"))
    h.send(track("order.completed", {"order_id": "o1", "total": {"amount": "120.00",
           "currency": "EUR"}}, userId="u2", context=CTX))  # fmt: skip
    h.process()
    h.apply(
        {"key": "two-gazes", "condition": {">=": [{"count": {"event": "object.gaze_dwell"}}, 2]}}
    )
    h.apply({"key": "buyers", "condition": {">": [{"sum": {"event": "order.completed",
             "of": "total.amount"}}, 100]}})  # fmt: skip
    h.process()
    assert set(h.by("user_id", "u1").segments) == {"two-gazes"}
    assert set(h.by("user_id", "u2").segments) == {"buyers"}
    events = membership_events(h)
    assert {(e["user_id"], e["properties"]["segment"]) for e in events} == {
        ("u1", "two-gazes"), ("u2", "buyers")}  # fmt: skip
    assert all(e["properties"]["backfill"] for e in events)
    status = h.definitions.get(h.workspace, "segment", "buyers")
    assert status is not None
    assert (status["state"], status["active_version"], status["done"]) == ("active", 1, 2)
    # Live from here on: no backfill mark.
    h.send(gaze("u2"))
    h.process()
    assert set(h.by("user_id", "u2").segments) == {"buyers", "two-gazes"}
    assert "backfill" not in membership_events(h)[-1]["properties"]


def test_a_changed_definition_applies_to_everyone_from_its_place_in_the_log(h: Harness) -> None:
    h.apply({"key": "active", "condition": {">=": [{"count": {"event": "object.gaze_dwell"}}, 3]}})
    h.send(gaze("u1"), gaze("u1"))
    h.process()
    assert h.by("user_id", "u1").segments == {}
    assert h.apply({"key": "active", "condition": {">=": [{"count": {"event":
                   "object.gaze_dwell"}}, 2]}}) == 2  # fmt: skip
    h.process()
    assert set(h.by("user_id", "u1").segments) == {"active"}
    assert membership_events(h)[-1]["properties"]["version"] == 2


def test_traits_consent_and_other_segments(h: Harness) -> None:
    h.apply(GAZERS)
    h.apply({"key": "gold-gazers", "condition": {"and": [
        {"in_segment": "sneaker-gazers"}, {"==": [{"var": "traits.plan"}, "gold"]},
        {"consent": "personalisation"}]}})  # fmt: skip
    h.send(gaze("u1"), gaze("u1"), gaze("u1"))
    h.send({"type": "identify", "userId": "u1", "traits": {"plan": "gold"}})
    h.process()
    assert set(h.by("user_id", "u1").segments) == {"sneaker-gazers"}
    h.send(track("consent.updated", {"scopes": {"personalisation": True}}, userId="u1"))
    h.process()
    assert set(h.by("user_id", "u1").segments) == {"sneaker-gazers", "gold-gazers"}
    h.send({"type": "identify", "userId": "u1", "traits": {"$unset": ["plan"]}})
    h.send({"type": "identify", "userId": "u1", "traits": {"plan": "silver"}})
    h.process()
    assert set(h.by("user_id", "u1").segments) == {"sneaker-gazers"}


def test_segments_on_statistics_alone(h: Harness) -> None:
    """Each on its own in the workspace: orders, an event's counter, a world's sessions."""
    h.apply({"key": "buyers", "condition": {">=": [{"var": "orders"}, 1]}})
    h.apply({"key": "gazers", "condition": {">=": [{"var": "counters.events.object.gaze_dwell"},
                                                   2]}})  # fmt: skip
    order = {"order_id": "o1", "total": {"amount": 10, "currency": "EUR"}}
    h.send(track("order.completed", order, userId="u1", context=CTX), gaze("u2"))
    h.process()
    assert set(h.by("user_id", "u1").segments) == {"buyers"}
    assert set(h.by("user_id", "u2").segments) == set()
    h.send(gaze("u2"))
    h.process()
    assert set(h.by("user_id", "u2").segments) == {"gazers"}


def test_scores_with_caps_decay_and_a_segment_on_them(h: Harness) -> None:
    h.apply({"kind": "score", "key": "engagement", "half_life": "1d", "decay_step": "1h",
             "rules": [{"event": "object.gaze_dwell", "points": 4,
                        "cap": {"points": 10, "per": "day"}}]})  # fmt: skip
    h.apply({"key": "engaged", "condition": {">=": [{"score": "engagement"}, 8]}})
    h.send(gaze("u1"), gaze("u1"), gaze("u1"), gaze("u1"))  # 4 + 4 + 2 (capped) + 0
    h.process()
    person = h.by("user_id", "u1")
    assert person.scores["engagement"].value == 10
    assert set(person.segments) == {"engaged"}
    # 10 × 2^(-h/24) < 8 once h ≥ 8: the person leaves at an hour boundary, on a tick.
    h.tick(h.now + timedelta(hours=12))
    h.process()
    assert h.by("user_id", "u1").segments == {}
    exited = membership_events(h)[-1]
    assert exited["name"] == "segment.exited"
    assert exited["timestamp"].startswith("2026-11-02T17:00:00")


def test_merging_two_people_merges_what_segments_count(h: Harness) -> None:
    h.apply({"key": "three-gazes", "condition": {">=": [{"count": {"event": "object.gaze_dwell",
             "within": "1d"}}, 3]}})  # fmt: skip
    h.send(track("object.gaze_dwell", SNEAKER, anonymousId="a1", context=CTX))
    h.send(gaze("u1"), gaze("u1"))
    h.process()
    assert h.by("user_id", "u1").segments == {}
    h.send({"type": "identify", "userId": "u1", "anonymousId": "a1"})
    h.process()
    person = h.by("user_id", "u1")
    assert set(person.segments) == {"three-gazes"}
    assert h.by("anonymous_id", "a1").id == person.id
