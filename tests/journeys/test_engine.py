"""Journeys in the processor: entries, waits, branches, splits, goals, re-entry, new versions,
restarts and replay (docs/JOURNEYS.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tests.processor.harness import Harness, track
from worldflow.processing import replay
from worldflow.store.schema import deliveries, journey_stats, profiles

CTX = {"world": {"id": "paris"}, "session_id": "s1"}
CART = {
    "cart_id": "c1",
    "obj": {"object_id": "shoe-1", "product": {"sku": "SKU-1"}},
    "money": {"amount": "90.00", "currency": "EUR"},
}
ORDER = {"order_id": "o1", "total": {"amount": "90.00", "currency": "EUR"}}
CARTERS = {
    "kind": "segment",
    "key": "carters",
    "condition": {">=": [{"count": {"event": "cart.item_added", "within": "1d"}}, 1]},
}
NUDGE: dict[str, Any] = {
    "kind": "journey",
    "key": "cart-nudge",
    "status": "active",
    "entry": {"segment": "carters"},
    "goal": {"event": "order.completed"},
    "steps": [
        {"id": "pause", "wait": "10m"},
        {"id": "is-vip", "branch": [{"if": {"==": [{"var": "traits.plan"}, "vip"]},
                                   "goto": "call"}]},
        {"id": "offer", "action": {"webhook": "crm", "body": {"offer": "10%"}}},
        {"id": "more", "wait_for": {"event": "cart.item_added", "timeout": "1h"},
         "on_timeout": "tag"},
        {"id": "thanks", "action": {"emit": "nudge.worked"}, "next": "exit"},
        {"id": "tag", "action": {"set_traits": {"nudged": True}}, "next": "exit"},
        {"id": "call", "action": {"inworld": {"placement": "lobby-npc", "line": "welcome back"}},
         "next": "exit"},
    ],
}  # fmt: skip


@pytest.fixture
def h(store_url: str) -> Iterator[Harness]:
    harness = Harness(store_url)
    harness.apply(CARTERS)
    harness.apply(NUDGE)
    yield harness
    harness.close()


def cart(user: str) -> dict[str, Any]:
    return track("cart.item_added", CART, userId=user, context=CTX)


def rows(h: Harness) -> list[dict[str, Any]]:
    with h.sql.engine.connect() as conn:
        found = conn.execute(sa.select(deliveries).order_by(deliveries.c.created_ms,
                                                            deliveries.c.id))  # fmt: skip
        return [dict(r._mapping) for r in found]


def stats(h: Harness) -> dict[str, int]:
    c = journey_stats.c
    with h.sql.engine.connect() as conn:
        return {m: n for m, n in conn.execute(sa.select(c.metric, c.count)
                                              .where(c.journey == "cart-nudge")) if n}  # fmt: skip


def run(h: Harness, user: str) -> Any:
    return h.by("user_id", user).journeys["cart-nudge"]


def test_a_segment_entry_waits_then_sends_a_signed_webhook_decision(h: Harness) -> None:
    h.send(cart("u1"))
    h.process()
    assert run(h, "u1").step_id == "pause"
    assert rows(h) == []
    h.tick(h.now + timedelta(minutes=9))
    h.process()
    assert rows(h) == []  # not yet
    h.tick(h.now + timedelta(minutes=2))
    h.process()
    (row,) = rows(h)
    assert (row["channel"], row["destination_id"], row["state"]) == ("webhook", "crm", "pending")
    payload = json.loads(row["payload"])
    assert payload["data"] == {"offer": "10%"}
    assert payload["profile"]["user_id"] == "u1" and payload["step"] == "offer"
    assert run(h, "u1").step_id == "more"
    # It waits for another cart addition: it comes, so the emit step follows, then exit.
    h.send(cart("u1"))
    h.process()
    person = h.by("user_id", "u1")
    assert person.journeys["cart-nudge"].outcome == "completed"
    s = stats(h)
    assert s["entered"] == 1 and s["actions:webhook"] == 1 and s["actions:emit"] == 1
    assert s["branch:is-vip:else"] == 1 and s["event:more"] == 1 and s["completed"] == 1
    assert not any(n for m, n in s.items() if m.startswith("at:"))  # nobody inside any more


def test_a_timeout_takes_the_other_way_and_traits_set_by_a_journey_stay(h: Harness) -> None:
    h.send(cart("u1"))
    h.tick(h.now + timedelta(minutes=10, seconds=1))
    h.tick(h.now + timedelta(hours=1, minutes=1))
    h.process()
    person = h.by("user_id", "u1")
    assert person.traits["nudged"] is True
    assert person.journeys["cart-nudge"].outcome == "completed"
    assert stats(h)["timeout:more"] == 1


def test_the_goal_converts_and_a_branch_reads_the_profile(h: Harness) -> None:
    h.send({"type": "identify", "userId": "vip1", "traits": {"plan": "vip"}}, cart("vip1"),
           cart("u2"))  # fmt: skip
    h.send(track("order.completed", ORDER, userId="u2", context=CTX))
    h.tick(h.now + timedelta(minutes=11))
    h.process()
    assert run(h, "u2").outcome == "converted"
    assert run(h, "vip1").outcome == "completed"
    (row,) = rows(h)
    assert (row["channel"], row["destination_id"]) == ("inworld", "*")
    assert json.loads(row["payload"])["action"] == {"placement": "lobby-npc",
                                                    "line": "welcome back"}  # fmt: skip
    s = stats(h)
    assert s["converted"] == 1 and s["branch:is-vip:call"] == 1


def test_never_reentry_and_a_run_that_survives_a_restart(h: Harness) -> None:
    h.send(cart("u1"))
    h.process()
    h.processor = h.new_processor()  # a restart: the wait's timer is read back from the store
    h.tick(h.now + timedelta(minutes=11))
    h.process()
    assert run(h, "u1").step_id == "more"
    h.tick(h.now + timedelta(days=2))  # leaves carters; the wait for more carts times out
    h.process()
    h.send(cart("u1"))  # enters carters again: the journey's re-entry is "never"
    h.process()
    assert run(h, "u1").count == 1
    assert stats(h)["entered"] == 1


def test_reentry_after_a_while_and_a_new_version_keeps_runs_at_their_step(h: Harness) -> None:
    h.apply({**NUDGE, "reentry": {"after": "1d"}})
    h.send(cart("u1"))
    h.process()
    # A new version while u1 waits in "pause": the run continues there, in version 3.
    steps = [s for s in NUDGE["steps"] if s["id"] != "is-vip"]
    version = h.apply({**NUDGE, "reentry": {"after": "1d"}, "steps": steps})
    h.tick(h.now + timedelta(minutes=11))
    h.process()
    assert (run(h, "u1").version, run(h, "u1").step_id) == (version, "more")
    h.tick(h.now + timedelta(hours=2))
    h.process()
    assert run(h, "u1").outcome == "completed"
    h.tick(h.now + timedelta(days=1, hours=1))  # leaves carters
    h.send(cart("u1"))
    h.process()
    assert run(h, "u1").count == 2


def test_a_split_with_a_holdout_is_deterministic_and_near_its_weights(store_url: str) -> None:
    h = Harness(store_url)
    try:
        h.apply(CARTERS)
        h.apply({"kind": "journey", "key": "ab", "status": "active",
                 "entry": {"segment": "carters"},
                 "steps": [{"id": "pick", "split": [{"weight": 3, "goto": "a"},
                                                    {"weight": 1, "goto": "b"}],
                            "holdout": 20},
                           {"id": "a", "action": {"webhook": "crm"}, "next": "exit"},
                           {"id": "b", "action": {"webhook": "crm"}}]})  # fmt: skip
        h.send(*(cart(f"u{i}") for i in range(400)))
        h.process()
        c = journey_stats.c
        with h.sql.engine.connect() as conn:
            query = sa.select(c.metric, c.count).where(c.journey == "ab")
            counts = dict(conn.execute(query).all())
        held, a, b = counts["split:pick:holdout"], counts["split:pick:1"], counts["split:pick:2"]
        assert held + a + b == 400
        assert 50 <= held <= 110 and 190 <= a <= 290 and 50 <= b <= 110
        assert len(rows(h)) == a + b  # the control group gets nothing
    finally:
        h.close()


def test_replay_rebuilds_runs_and_stats_and_writes_no_delivery_twice(h: Harness) -> None:
    h.send({"type": "identify", "userId": "vip1", "traits": {"plan": "vip"}},
           *(cart(f"u{i}") for i in range(5)), cart("vip1"))  # fmt: skip
    h.tick(h.now + timedelta(minutes=11))
    h.send(cart("u1"), track("order.completed", ORDER, userId="u2", context=CTX))
    h.tick(h.now + timedelta(hours=2))
    h.process()
    with h.sql.engine.connect() as conn:
        before = dict(conn.execute(sa.select(profiles.c.id, profiles.c.body)).all())
    before_stats, before_rows = stats(h), rows(h)
    assert len(before_rows) == 6  # five offers (u2 converts after its own), one in-world line
    replay(str(h.sql.engine.url.render_as_string(hide_password=False)))
    with h.sql.engine.connect() as conn:
        after = dict(conn.execute(sa.select(profiles.c.id, profiles.c.body)).all())
    assert after == before
    assert stats(h) == before_stats
    assert rows(h) == before_rows


def test_two_devices_in_a_journey_merged_into_one_person_keep_one_run(h: Harness) -> None:
    h.send(track("cart.item_added", CART, anonymousId="a1", context=CTX),
           track("cart.item_added", CART, anonymousId="a2", context=CTX))  # fmt: skip
    h.send({"type": "identify", "anonymousId": "a1", "userId": "u1"},
           {"type": "identify", "anonymousId": "a2", "userId": "u1"})  # fmt: skip
    h.tick(h.now + timedelta(hours=2))
    h.process()
    person = h.by("user_id", "u1")
    assert person.journeys["cart-nudge"].outcome == "completed"
    s = stats(h)
    assert s["entered"] == 2 and s["merged"] == 1 and s["completed"] == 1
    assert s["actions:webhook"] == 1  # the merged run never reached its action
    assert not any(n for m, n in s.items() if m.startswith("at:"))


def test_a_cap_skips_actions_and_quiet_hours_hold_a_webhook_until_they_end(
    store_url: str,
) -> None:
    h = Harness(store_url)  # T0 is 09:00 UTC, 10:00 in Paris
    try:
        h.apply({"kind": "journey", "key": "ping", "status": "active", "reentry": "always",
                 "entry": {"event": "ping.me"},
                 "caps": {"webhook": {"per_day": 2}},
                 "quiet_hours": {"start": "10:30", "end": "12:00"},  # the person's zone
                 "steps": [{"id": "hook", "action": {"webhook": "crm"}}]})  # fmt: skip
        h.send({"type": "identify", "userId": "u1", "traits": {"timezone": "Europe/Paris"}})
        h.send(*(track("ping.me", userId="u1") for _ in range(3)))  # 10:00 in Paris
        h.process()
        assert len(rows(h)) == 2  # the third within the day is capped
        h.tick(h.now + timedelta(minutes=40))  # 10:40 in Paris: quiet
        h.send({"type": "identify", "userId": "u2", "traits": {"timezone": "Europe/Paris"}},
               track("ping.me", userId="u2"))  # fmt: skip
        h.process()
        run = h.by("user_id", "u2").journeys["ping"]
        assert run.step_id == "hook" and run.wake  # held at the action
        h.tick(h.now + timedelta(hours=2))
        h.process()
        ends = [json.loads(r["payload"])["at"] for r in rows(h)]
        assert len(ends) == 3 and ends[-1] == "2026-11-02T11:00:00Z"  # 12:00 in Paris: UTC
        c = journey_stats.c
        with h.sql.engine.connect() as conn:
            query = sa.select(c.metric, c.count).where(c.journey == "ping")
            counts = dict(conn.execute(query).all())
        assert counts["capped:webhook"] == 1 and counts["quiet:hook"] == 1
    finally:
        h.close()


def test_points_a_jump_to_another_journey_an_exit_reason_and_an_api_entry(
    store_url: str,
) -> None:
    h = Harness(store_url)
    try:
        h.apply({"kind": "score", "key": "loyalty", "rules": [{"event": "order.completed",
                 "points": 10}]})  # fmt: skip
        h.apply({"kind": "segment", "key": "loyal",
                 "condition": {">=": [{"score": "loyalty"}, 25]}})  # fmt: skip
        h.apply({"kind": "journey", "key": "second", "status": "active", "entry": {"api": True},
                 "steps": [{"action": {"unset_traits": ["tier"]}},
                           {"exit": "downgraded"}]})  # fmt: skip
        gold = {"id": "loyal", "action": {"set_traits": {"tier": "gold"}}}
        h.apply({"kind": "journey", "key": "first", "status": "active", "entry": {"api": True},
                 "steps": [{"action": {"award": "loyalty", "points": 30}},
                           {"id": "check", "branch": [{"if": {"in_segment": "loyal"},
                                                       "goto": "loyal"}]},
                           {"goto": {"journey": "second"}}, gold]})  # fmt: skip
        # Entries by API call go through the log, as POST /v1/journeys/{key}/entries writes them
        h.send({"type": "identify", "userId": "u1", "traits": {"tier": "silver"}},
               track("journey.entry_requested", {"journey": "first"}, userId="u1"))  # fmt: skip
        h.process()
        person = h.by("user_id", "u1")
        # 30 points put u1 in "loyal" at once (the segment re-evaluated), so the branch sees it
        shown = {k for k in person.segments if not k.startswith("~")}
        assert shown == {"loyal"} and person.traits["tier"] == "gold"
        assert person.journeys["first"].outcome == "completed"
        assert "second" not in person.journeys
        h.send({"type": "identify", "userId": "u2", "traits": {"tier": "silver"}},
               track("journey.entry_requested", {"journey": "first"}, userId="u2"),
               track("journey.entry_requested", {"journey": "second"}, userId="u3"))  # fmt: skip
        h.apply({"kind": "segment", "key": "loyal",
                 "condition": {">=": [{"score": "loyalty"}, 99]}})  # fmt: skip
        h.send(track("journey.entry_requested", {"journey": "first"}, userId="u4"))
        h.process()
        u4 = h.by("user_id", "u4")
        assert u4.journeys["first"].outcome == "moved"  # not loyal at 30 of 99: jumps
        assert u4.journeys["second"].outcome == "downgraded"
        assert h.by("user_id", "u3").journeys["second"].outcome == "downgraded"
    finally:
        h.close()


def test_an_email_is_rendered_in_the_sandbox_for_those_who_agreed(store_url: str) -> None:
    h = Harness(store_url)
    try:
        h.apply({"kind": "journey", "key": "mail", "status": "active", "reentry": "always",
                 "entry": {"event": "mail.me"}, "caps": {"email": {"per_week": 1}},
                 "steps": [{"id": "hello", "action": {"email": {
                     "subject": "Hello {{ traits.name | default('there') }}",
                     "text": "Your {{ traits.plan }} plan.{{ traits.missing }}",
                     "html": "<p>{{ traits.name }}</p>"}}}]})  # fmt: skip
        yes = {"scopes": {"marketing_contact": True}}
        h.send(
            {
                "type": "identify",
                "userId": "ada",
                "traits": {"name": "<Ada>", "plan": "gold", "email": "ada@example.com"},
            },
            track("consent.updated", yes, userId="ada"),
            track("mail.me", userId="ada"),
            track("mail.me", userId="ada"),  # capped: one a week
            {"type": "identify", "userId": "bob", "traits": {"email": "bob@example.com"}},
            track("mail.me", userId="bob"),  # no consent
            track("consent.updated", yes, userId="cyd"),
            track("mail.me", userId="cyd"),
        )
        h.process()
        (row,) = rows(h)
        assert (row["channel"], row["destination_id"], row["event_type"]) == (
            "email", "smtp", "journey.email")  # fmt: skip
        mail = json.loads(row["payload"])
        assert mail["to"] == "ada@example.com" and mail["subject"] == "Hello <Ada>"
        assert mail["text"] == "Your gold plan." and mail["html"] == "<p>&lt;Ada&gt;</p>"
        c = journey_stats.c
        with h.sql.engine.connect() as conn:
            counts = dict(conn.execute(sa.select(c.metric, c.count)
                                       .where(c.journey == "mail")).all())  # fmt: skip
        assert counts["capped:email"] == 1 and counts["no_consent:email"] == 1
        assert counts["no_address:email"] == 1 and counts["actions:email"] == 1
    finally:
        h.close()


def test_an_email_template_is_checked_when_applied() -> None:
    from worldflow.journeys.definition import validate
    from worldflow.segments.definition import DefinitionError

    bad = {"key": "j", "entry": {"api": True},
           "steps": [{"action": {"email": {"subject": "{{ oops", "text": "t"}}}]}  # fmt: skip
    with pytest.raises(DefinitionError, match=r"steps\[0\]\.action\.email\.subject: not a"):
        validate(bad)


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def test_waits_until_a_date_or_the_next_opening_of_a_weekday_window(store_url: str) -> None:
    h = Harness(store_url)  # T0: Monday 2026-11-02, 09:00 UTC (10:00 in Paris)
    try:
        h.apply({"kind": "journey", "key": "later", "status": "active", "reentry": "always",
                 "entry": {"event": "go"},
                 "steps": [{"wait_until": {"at": "2026-11-02T12:00:00+01:00"}},
                           {"id": "window", "wait_until": {"days": ["sat", "sun"],
                                                           "from": "10:00", "to": "12:00"}},
                           {"id": "done", "action": {"set_traits": {"done": True}}}]})  # fmt: skip
        h.send({"type": "identify", "userId": "u1", "traits": {"timezone": "Europe/Paris"}},
               track("go", userId="u1"))  # fmt: skip
        h.process()
        run = h.by("user_id", "u1").journeys["later"]
        assert run.wake == ms(datetime(2026, 11, 2, 11, 0, tzinfo=UTC))  # noon in Paris
        h.tick(h.now + timedelta(hours=3))
        h.process()
        run = h.by("user_id", "u1").journeys["later"]
        # Saturday 2026-11-07, 10:00 in Paris (09:00 UTC): the window's next opening
        assert run.step_id == "window" and run.wake == ms(datetime(2026, 11, 7, 9, tzinfo=UTC))
        h.tick(datetime(2026, 11, 7, 9, 30, tzinfo=UTC))
        h.process()
        assert h.by("user_id", "u1").traits["done"] is True
    finally:
        h.close()


def test_a_wait_until_without_an_offset_is_refused() -> None:
    from worldflow.journeys.definition import validate
    from worldflow.segments.definition import DefinitionError

    bad = {"key": "j", "entry": {"api": True},
           "steps": [{"wait_until": {"at": "2026-12-24T18:00:00"}}]}  # fmt: skip
    with pytest.raises(DefinitionError, match=r"steps\[0\]\.wait_until\.at: .* with its offset"):
        validate(bad)


def test_an_inworld_action_naming_an_offer_carries_its_content_as_it_was_then(h: Harness) -> None:
    billboard = {"kind": "journey", "key": "billboard", "status": "active",
                 "entry": {"event": "zone.entered"}, "reentry": "always",
                 "steps": [{"action": {"inworld": {"placement": "lobby-billboard",
                                                   "offer": "sneakers-10"}}}]}  # fmt: skip
    sneakers = {"kind": "offer", "key": "sneakers-10", "placements": ["lobby-billboard"],
                "content": {"type": "text", "title": "-10 %",
                            "text": "on every sneaker"}}  # fmt: skip
    h.apply(billboard)
    zone = track("zone.entered", {"zone_id": "lobby"}, userId="u1", context=CTX)
    h.send(zone)  # no such offer yet: declined and counted, nothing decided
    h.apply(sneakers)
    h.send(zone | {"messageId": "z2"})
    h.apply(sneakers | {"content": {"type": "text", "text": "-20 % today"}})
    h.send(zone | {"messageId": "z3"})
    h.apply(sneakers | {"status": "paused"})
    h.send(zone | {"messageId": "z4"})
    h.process()
    actions = [json.loads(r["payload"])["action"] for r in rows(h)]
    assert actions == [
        {"placement": "lobby-billboard", "offer": "sneakers-10",
         "content": {"creative_id": "sneakers-10", "type": "text", "title": "-10 %",
                     "text": "on every sneaker"}},
        {"placement": "lobby-billboard", "offer": "sneakers-10",
         "content": {"creative_id": "sneakers-10", "type": "text", "text": "-20 % today"}},
    ]  # fmt: skip
    c = journey_stats.c
    with h.sql.engine.connect() as conn:
        found = conn.execute(sa.select(c.metric, c.count).where(c.journey == "billboard"))
        counted = {row[0]: row[1] for row in found}
    assert counted["offer_unavailable:inworld"] == 2 and counted["actions:inworld"] == 2


def test_an_inworld_action_that_decides_or_names_an_offer_is_checked() -> None:
    from worldflow.journeys.definition import validate
    from worldflow.segments.definition import DefinitionError

    def inworld(action: dict[str, Any]) -> dict[str, Any]:
        return {"key": "j", "entry": {"api": True}, "steps": [{"action": {"inworld": action}}]}

    for action, where in (({"placement": "p", "decide": "yes"}, "decide"),
                          ({"decide": True}, "placement"),
                          ({"placement": "p", "decide": True, "content": {"text": "x"}},
                           "content"),
                          ({"placement": "p", "decide": True, "offer": "o"}, "offer"),
                          ({"placement": "p", "offer": "Not A Key"}, "offer")):  # fmt: skip
        with pytest.raises(DefinitionError) as exc:
            validate(inworld(action))
        assert exc.value.path == f"steps[0].action.inworld.{where}", action
    validate(inworld({"placement": "p", "decide": True}))
