"""Who a push connection speaks for: identities resolved to profiles in batches, merges
followed (store/presence.py), on SQLite and PostgreSQL."""

from __future__ import annotations

from tests.processor.harness import Harness, track
from worldflow.store.presence import PresenceStore


def test_connections_resolve_in_batches_and_follow_merges(store_url: str) -> None:
    h = Harness(store_url)
    try:
        # Two devices, each its own profile at first; a log-in on both merges them.
        h.send(track("zone.entered", {"zone_id": "lobby"}, anonymousId="dev-a"),
               track("zone.entered", {"zone_id": "lobby"}, anonymousId="dev-b"))  # fmt: skip
        h.process()
        before = h.by("anonymous_id", "dev-b").id
        h.send({"type": "identify", "anonymousId": "dev-a", "userId": "ada"},
               {"type": "identify", "anonymousId": "dev-b", "userId": "ada"})  # fmt: skip
        h.process()
        ada = h.by("user_id", "ada").id
        assert before != ada  # dev-b's profile was merged into ada's
        store = PresenceStore(h.sql.engine, "worker-1")
        people = [(h.workspace, "dev-b", None), (h.workspace, None, "ada"),
                  (h.workspace, "dev-a", "ada"), (h.workspace, "nobody", None),
                  ("elsewhere", "dev-a", None), (h.workspace, "dev-b", "someone-new")]  # fmt: skip
        expected = [ada, ada, ada, None, None, ada]
        assert store.resolve_many(people) == expected
        assert store.resolve_many(people, chunk=1) == expected
        assert store.resolve(h.workspace, "dev-b", None) == ada
        assert store.resolve_many([]) == []
    finally:
        h.close()
