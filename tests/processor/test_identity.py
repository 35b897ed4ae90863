"""Identity resolution: stitching, merges across worlds, over-merge guards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.processor.harness import Harness, track


@pytest.fixture
def h(store_url: str) -> Iterator[Harness]:
    harness = Harness(store_url)
    yield harness
    harness.close()


def world(name: str, session: str = "s1") -> dict[str, object]:
    return {"world": {"id": name}, "session_id": session}


def test_anonymous_visitor_gets_one_profile(h: Harness) -> None:
    h.send(
        track("zone.entered", {"zone_id": "lobby"}, anonymousId="a1", context=world("paris")),
        track("zone.exited", {"zone_id": "lobby", "dwell_ms": 4000}, anonymousId="a1",
              context=world("paris")),
    )  # fmt: skip
    assert h.process() == 2
    profile = h.by("anonymous_id", "a1")
    assert profile.identities == {"anonymous_id": ["a1"]}
    paris = profile.worlds["paris"]
    assert paris.zones["lobby"].visits == 1
    assert paris.zones["lobby"].dwell_ms == 4000
    assert profile.counters["events"] == 2
    assert [r.name for r in profile.recent] == ["zone.entered", "zone.exited"]


def test_identify_links_anonymous_history_and_merges_across_worlds(h: Harness) -> None:
    # Paris on a Quest, anonymous; a Roblox experience, anonymous under another id.
    shoe = {"object_id": "paris/shoe", "product": {"sku": "SNK"}}
    h.send(track("object.viewed", {"obj": shoe, "view_ms": 1200}, anonymousId="quest-1",
                 context=world("paris")))  # fmt: skip
    h.send(track("zone.entered", {"zone_id": "arena"}, anonymousId="roblox-9",
                 context=world("tokyo")))  # fmt: skip
    h.process()
    assert h.by("anonymous_id", "quest-1").id != h.by("anonymous_id", "roblox-9").id
    # Logging in on both: the two profiles become one.
    h.send({"type": "identify", "anonymousId": "quest-1", "userId": "u-ada",
            "traits": {"email": "Ada@Example.com", "plan": "vip"}})  # fmt: skip
    h.process()
    older = h.by("anonymous_id", "quest-1").id
    h.send({"type": "identify", "anonymousId": "roblox-9", "userId": "u-ada"})
    h.process()
    one = h.by("user_id", "u-ada")
    assert one.id == older  # the older profile survives
    for type_name, value in [("anonymous_id", "quest-1"), ("anonymous_id", "roblox-9"),
                             ("email", "ada@example.com"), ("user_id", "u-ada")]:  # fmt: skip
        assert h.by(type_name, value).id == one.id
    assert set(one.worlds) == {"paris", "tokyo", "web"}
    assert one.worlds["paris"].products["SNK"].views == 1
    assert one.traits == {"email": "Ada@Example.com", "plan": "vip"}
    # The e-mail identity is a hash, never the address.
    assert one.identities["email"] != ["ada@example.com"]
    assert len(one.merged_from) == 1
    assert h.store.profile(h.workspace, one.merged_from[0]).id == one.id  # type: ignore[union-attr]
    merges = h.store.merges(h.workspace, one.id)
    assert [m["merged_id"] for m in merges] == one.merged_from
    assert h.processor.counters()["merges"] == 1


def test_two_known_users_on_a_shared_headset_are_not_merged(h: Harness) -> None:
    h.send({"type": "identify", "anonymousId": "kiosk", "userId": "u1",
            "context": {"device": {"id": "hmd-7"}}})  # fmt: skip
    h.send({"type": "identify", "anonymousId": "kiosk", "userId": "u2",
            "context": {"device": {"id": "hmd-7"}}})  # fmt: skip
    h.process()
    u1, u2 = h.by("user_id", "u1"), h.by("user_id", "u2")
    assert u1.id != u2.id
    assert u1.identities["user_id"] == ["u1"]
    assert u2.identities["user_id"] == ["u2"]
    # The device follows its latest user and never merges.
    assert h.by("device_id", "hmd-7").id == u2.id
    assert h.by("anonymous_id", "kiosk").id == u1.id


def test_unique_identity_blocks_a_merge(h: Harness) -> None:
    h.send({"type": "identify", "anonymousId": "a", "userId": "u1"})
    h.send({"type": "identify", "anonymousId": "b", "userId": "u2"})
    # A wallet claimed by both known users must not fold one into the other.
    h.send(track("wallet.connected", {"chain_id": "1", "address_hash": "w0"}, userId="u1"))
    h.send(track("wallet.connected", {"chain_id": "1", "address_hash": "w0"}, userId="u2"))
    h.process()
    assert h.by("user_id", "u1").id != h.by("user_id", "u2").id
    assert h.processor.counters()["merges_refused_unique"] >= 1


def test_identity_linked_and_alias_merge(h: Harness) -> None:
    h.send(track("identity.linked", {"id_type": "platform_user", "id_hash": "rbx-1"},
                 anonymousId="dev-a"))  # fmt: skip
    h.send(track("identity.linked", {"id_type": "platform_user", "id_hash": "rbx-1"},
                 anonymousId="dev-b"))  # fmt: skip
    h.send({"type": "alias", "previousId": "dev-c", "userId": "u9"})
    h.send({"type": "identify", "anonymousId": "dev-c", "traits": {"tier": "gold"}})
    h.process()
    assert h.by("anonymous_id", "dev-a").id == h.by("anonymous_id", "dev-b").id
    assert h.by("platform_user", "rbx-1").id == h.by("anonymous_id", "dev-a").id
    assert h.by("user_id", "u9").traits == {"tier": "gold"}


def test_merge_survives_restart_and_cold_cache(h: Harness) -> None:
    h.send(track("zone.entered", {"zone_id": "z"}, anonymousId="x1"))
    h.process()
    h.processor = h.new_processor()  # a restart: nothing in memory
    h.send({"type": "identify", "anonymousId": "x1", "userId": "ux"})
    h.send(track("zone.entered", {"zone_id": "z"}, anonymousId="x2"))
    h.send({"type": "alias", "previousId": "x2", "userId": "ux"})
    h.process()
    profile = h.by("user_id", "ux")
    assert h.by("anonymous_id", "x2").id == profile.id
    assert profile.worlds["web"].zones["z"].visits == 2
