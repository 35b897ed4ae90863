"""Entry on a schedule over a segment: at each occurrence the segment's members enter, once,
on the log's clock — with no event needed, after a restart, and in replay alike."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tests.processor.harness import Harness, track
from worldflow.journeys.definition import compile_journey, validate
from worldflow.journeys.engine import next_occurrence
from worldflow.processing import replay
from worldflow.segments.definition import DefinitionError
from worldflow.store.schema import deliveries, journey_stats

CART = {"cart_id": "c1", "obj": {"object_id": "shoe-1", "product": {"sku": "SKU-1"}},
        "money": {"amount": "90.00", "currency": "EUR"}}  # fmt: skip
CARTERS = {"kind": "segment", "key": "carters",
           "condition": {">=": [{"count": {"event": "cart.item_added", "within": "1d"}},
                                1]}}  # fmt: skip
DIGEST: dict[str, Any] = {
    "kind": "journey", "key": "digest", "status": "active", "reentry": "always",
    "entry": {"segment": "carters", "schedule": {"time": "10:00", "timezone": "UTC"}},
    "steps": [{"id": "mail", "action": {"webhook": "crm"}}],
}  # fmt: skip


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def sent(h: Harness) -> list[tuple[str, str]]:
    with h.sql.engine.connect() as conn:
        found = conn.execute(sa.select(deliveries.c.payload).order_by(deliveries.c.created_ms,
                                                                      deliveries.c.id))  # fmt: skip
        payloads = [json.loads(p) for (p,) in found]
    return sorted((p["profile"]["user_id"], p["at"]) for p in payloads)


def test_a_schedule_is_checked_and_goes_with_a_segment() -> None:
    for entry, path in (({"event": "x.y", "schedule": {"time": "10:00"}}, "entry.schedule"),
                        ({"segment": "s", "schedule": {"time": "25:00"}}, "entry.schedule.time"),
                        ({"segment": "s", "schedule": {"days": ["mon"]}}, "entry.schedule"),
                        ({"segment": "s", "schedule": {"at": "tomorrow"}}, "entry.schedule.at"),
                        ({"segment": "s", "schedule": {"time": "10:00", "timezone": "Mars/Base"}},
                         "entry.schedule.timezone")):  # fmt: skip
        with pytest.raises(DefinitionError) as exc:
            validate({**DIGEST, "entry": entry})
        assert exc.value.path == path
    with pytest.raises(DefinitionError) as exc:
        validate({**DIGEST, "goal": {"segment": "s", "schedule": {"time": "10:00"}}})
    assert exc.value.path == "goal.schedule"


def test_occurrences_follow_the_days_and_the_time_zone() -> None:
    twice = {"days": ["mon", "thu"], "time": "09:30", "timezone": "Europe/Paris"}
    weekly = compile_journey(
        validate({**DIGEST, "entry": {"segment": "carters", "schedule": twice}}), 1
    ).schedule
    assert weekly is not None
    monday = ms(datetime(2026, 11, 2, 8, 30, tzinfo=UTC))  # 09:30 in Paris (UTC+1)
    assert next_occurrence(weekly, monday - 1) == monday
    assert next_occurrence(weekly, monday) == ms(datetime(2026, 11, 5, 8, 30, tzinfo=UTC))
    eve = {"at": "2026-12-24T18:00:00+01:00"}
    once = compile_journey(
        validate({**DIGEST, "entry": {"segment": "carters", "schedule": eve}}), 1
    ).schedule
    assert once is not None
    assert next_occurrence(once, monday) == ms(datetime(2026, 12, 24, 17, tzinfo=UTC))
    assert next_occurrence(once, ms(datetime(2026, 12, 24, 17, tzinfo=UTC))) is None


def test_members_enter_at_each_occurrence_only(store_url: str) -> None:
    h = Harness(store_url)  # T0: Monday 2026-11-02 09:00 UTC
    try:
        h.apply(CARTERS)
        h.apply(DIGEST)
        h.send(track("cart.item_added", CART, userId="u1"),
               track("cart.item_added", CART, userId="u2"),
               track("page.viewed", {}, userId="u3"))  # fmt: skip
        ten = datetime(2026, 11, 2, 10, tzinfo=UTC)
        h.tick(ten - timedelta(minutes=15))  # the sessions time out
        h.process()
        assert sent(h) == []  # entering the segment is not the entry
        assert h.processor.next_timer_ms() == ms(ten)  # an idle log gets a tick for it
        h.tick(ten + timedelta(seconds=1))
        h.process()
        assert sent(h) == [("u1", "2026-11-02T10:00:00Z"), ("u2", "2026-11-02T10:00:00Z")]
        assert h.by("user_id", "u1").journeys["digest"].entered == ms(ten)
        # A restart fires nothing again; the next day nobody is a member any more, and on
        # the third u3, who added to a cart in between, is.
        h.processor = h.new_processor()
        h.tick(ten + timedelta(days=1, seconds=1))
        h.send(track("cart.item_added", CART, userId="u3"))
        h.tick(ten + timedelta(days=2, seconds=1))
        h.process()
        assert sent(h)[2:] == [("u3", "2026-11-04T10:00:00Z")]
        c = journey_stats.c
        with h.sql.engine.connect() as conn:
            counted = dict(conn.execute(sa.select(c.metric, c.count)
                                        .where(c.journey == "digest")).all())  # fmt: skip
        assert counted["occurrences"] == 3 and counted["entered"] == 3
        runs = {u: h.by("user_id", u).journeys["digest"] for u in ("u1", "u2", "u3")}
        replay(store_url)
        assert {u: h.by("user_id", u).journeys["digest"] for u in runs} == runs
    finally:
        h.close()


def test_occurrences_missed_while_idle_make_one_and_a_run_in_progress_stays(
    store_url: str,
) -> None:
    h = Harness(store_url)
    try:
        h.apply({**CARTERS, "condition": {">=": [{"count": {"event": "cart.item_added"}}, 1]}})
        h.apply({**DIGEST, "steps": [{"id": "mail", "action": {"webhook": "crm"}},
                                     {"id": "rest", "wait": "36h"}]})  # fmt: skip
        h.send(track("cart.item_added", CART, userId="u1"))
        h.tick(datetime(2026, 11, 5, 12, tzinfo=UTC))  # three occurrences went by
        h.process()
        assert sent(h) == [("u1", "2026-11-05T10:00:00Z")]  # one, at the latest
        h.tick(datetime(2026, 11, 6, 10, 0, 1, tzinfo=UTC))  # still resting: not entered
        h.tick(datetime(2026, 11, 7, 10, 0, 1, tzinfo=UTC))
        h.process()
        assert sent(h)[1:] == [("u1", "2026-11-07T10:00:00Z")]
    finally:
        h.close()
