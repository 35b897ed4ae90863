"""The workspace's messaging policy: caps per channel across all journeys, quiet hours for
journeys without their own, and transactional journeys outside both (docs/JOURNEYS.md)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tests.processor.harness import Harness, track
from worldflow.journeys.definition import validate_messaging
from worldflow.segments.definition import DefinitionError
from worldflow.store.schema import deliveries, journey_stats

POLICY = {"kind": "messaging", "caps": {"webhook": {"per_day": 2, "per_week": 3}},
          "quiet_hours": {"start": "21:00", "end": "08:00"}}  # fmt: skip


def pinger(key: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "journey", "key": key, "status": "active", "reentry": "always",
            "entry": {"event": f"{key}.ping"},
            "steps": [{"id": "hook", "action": {"webhook": "crm", "body": {"from": key}}}],
            **extra}  # fmt: skip


def sent(h: Harness) -> list[str]:
    with h.sql.engine.connect() as conn:
        found = conn.execute(sa.select(deliveries.c.payload).order_by(deliveries.c.created_ms,
                                                                      deliveries.c.id))  # fmt: skip
        return [json.loads(p)["data"]["from"] for (p,) in found]


def counts(h: Harness, journey: str) -> dict[str, int]:
    c = journey_stats.c
    with h.sql.engine.connect() as conn:
        query = sa.select(c.metric, c.count).where(c.journey == journey)
        return {m: n for m, n in conn.execute(query) if n}


def test_the_policy_is_checked_with_paths() -> None:
    assert validate_messaging(POLICY)["key"] == "default"
    for bad, path in (({**POLICY, "key": "other"}, "key"),
                      ({**POLICY, "caps": {"sms": {"per_day": 1}}}, "caps.sms"),
                      ({**POLICY, "caps": {"webhook": {"per_day": -1}}}, "caps.webhook.per_day"),
                      ({**POLICY, "quiet_hours": {"start": "25:00", "end": "08:00"}},
                       "quiet_hours.start"),
                      ({**POLICY, "steps": []}, "steps")):  # fmt: skip
        with pytest.raises(DefinitionError) as exc:
            validate_messaging(bad)
        assert exc.value.path == path


def test_workspace_caps_count_every_journey_but_transactional_ones(store_url: str) -> None:
    h = Harness(store_url)  # T0 is 09:00 UTC: outside the quiet hours
    try:
        h.apply(POLICY)
        for key in ("promo", "news"):
            h.apply(pinger(key))
        h.apply(pinger("receipt", transactional=True))
        h.send(track("promo.ping", userId="u1"), track("news.ping", userId="u1"),
               track("receipt.ping", userId="u1"), track("promo.ping", userId="u1"),
               track("news.ping", userId="u1"), track("receipt.ping", userId="u1"))  # fmt: skip
        h.process()
        # Two a day across promo and news; receipts go out regardless, and do not count.
        assert sent(h) == ["promo", "news", "receipt", "receipt"]
        assert counts(h, "promo")["capped_workspace:webhook"] == 1
        assert counts(h, "news")["capped_workspace:webhook"] == 1
        h.tick(h.now + timedelta(days=1, minutes=1))
        h.send(track("news.ping", userId="u1"), track("promo.ping", userId="u1"))
        h.process()
        assert sent(h)[4:] == ["news"]  # the third of the week; the fourth is capped
        assert counts(h, "promo")["capped_workspace:webhook"] == 2
    finally:
        h.close()


def test_workspace_quiet_hours_hold_journeys_without_their_own(store_url: str) -> None:
    h = Harness(store_url)
    try:
        h.apply(POLICY)
        h.apply(pinger("promo"))
        h.apply(pinger("night", quiet_hours={"start": "23:00", "end": "23:30"}))
        h.apply(pinger("receipt", transactional=True))
        h.tick(h.now + timedelta(hours=13))  # 22:00 UTC: the workspace's quiet hours
        h.send(track("promo.ping", userId="u1"), track("night.ping", userId="u1"),
               track("receipt.ping", userId="u1"))  # fmt: skip
        h.process()
        assert sent(h) == ["night", "receipt"]  # the journey's own hours replace the policy's
        assert h.by("user_id", "u1").journeys["promo"].step_id == "hook"
        h.tick(h.now + timedelta(hours=10, minutes=1))  # 08:01: the quiet hours ended
        h.process()
        assert sent(h) == ["night", "receipt", "promo"]
        assert counts(h, "promo")["quiet:hook"] == 1
    finally:
        h.close()


def test_a_new_policy_applies_from_its_place_in_the_log(store_url: str) -> None:
    h = Harness(store_url)
    try:
        h.apply(pinger("promo"))
        h.send(*(track("promo.ping", userId="u1") for _ in range(3)))
        h.process()
        assert len(sent(h)) == 3  # no policy yet
        h.apply({**POLICY, "caps": {"webhook": {"per_week": 4}}})
        h.send(*(track("promo.ping", userId="u1") for _ in range(3)))
        h.process()
        assert len(sent(h)) == 4  # the sends before it count towards it
    finally:
        h.close()
