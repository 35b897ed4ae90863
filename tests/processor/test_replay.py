"""Replay rebuilds exactly the profiles that live processing built, whatever the batch sizes,
cache evictions, restarts and crashes along the way."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tests.processor.harness import T0, Harness
from worldflow.processing import replay
from worldflow.segments.apply import documents
from worldflow.simulate import DEFAULT_MODEL, Simulation, load_world_model
from worldflow.store.schema import (
    active_definitions,
    identities,
    processor_state,
    profile_merges,
    profiles,
    segment_members,
    segment_sizes,
)


def derived(h: Harness) -> dict[str, Any]:
    with h.sql.engine.connect() as conn:
        return {
            "profiles": sorted(map(tuple, conn.execute(sa.select(profiles)))),
            "identities": sorted(map(tuple, conn.execute(sa.select(identities)))),
            "merges": sorted(
                tuple(r)[1:] for r in conn.execute(sa.select(profile_merges))
            ),  # without the row id
            "state": sorted(map(tuple, conn.execute(sa.select(processor_state)))),
            **{table.name: sorted(map(tuple, conn.execute(sa.select(table))))
               for table in (active_definitions, segment_members, segment_sizes)},
        }  # fmt: skip


def simulated_day(h: Harness, visitors: int) -> None:
    """A day of the simulator's visitors across the example worlds (its deliberately malformed
    messages are left out: the edge quarantines them before the log)."""
    simulation = Simulation(load_world_model(), visitors, 24 * 60, seed=5, start=T0)
    for message in simulation.messages():
        if message["messageId"] in simulation.malformed_ids:
            continue
        h.now = datetime.fromisoformat(message["timestamp"].replace("Z", "+00:00"))
        h.send(message)
    h.tick(h.now + timedelta(hours=1))  # an hour later every idle session has ended


class Crash(Exception):
    pass


def test_replay_equals_live_processing_through_evictions_restarts_and_crashes(
    store_url: str,
) -> None:
    h = Harness(store_url, batch_size=97, max_profiles=40, max_identities=90)
    try:
        # The example workspace's segments and scores from the start; after the day, a new
        # segment that needs the day's history, and a changed one (both backfilled).
        examples = sorted((d for _, d in documents(DEFAULT_MODEL.parent / "segments")),
                          key=lambda d: d["kind"] != "score")  # fmt: skip
        for document in examples:
            h.apply(document)
        simulated_day(h, 80)
        h.apply({"key": "grabbers", "condition": {">=": [{"count": {
            "event": "object.grabbed", "within": "12h"}}, 2]}})  # fmt: skip
        h.apply({"key": "engaged", "condition": {">=": [{"score": "engagement"}, 30]}})
        h.tick(h.now + timedelta(days=1))  # windows slide past the day
        # Live: small micro-batches, tiny caches (profiles come and go from the store), a
        # restart, and a crash inside a commit (the transaction rolls back).
        for _ in range(5):
            h.processor.step()
        h.processor = h.new_processor()
        real_commit = h.store.commit
        calls = {"n": 0}

        def failing_commit(commit: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 3:
                with h.sql.engine.begin() as conn:  # half-written, then the crash
                    conn.execute(sa.delete(profiles))
                    raise Crash
            real_commit(commit)

        h.store.commit = failing_commit  # type: ignore[method-assign]
        with pytest.raises(Crash):
            h.process()
        h.store.commit = real_commit  # type: ignore[method-assign]
        h.processor = h.new_processor()  # resumes from the last committed offset
        h.process()
        live = derived(h)
        counters = h.processor.counters()
        assert counters["merges"] > 0
        assert counters["sessions_synthesised"] > 0
        assert counters["segment_transitions"] > 100
        assert len(live["segment_members"]) > 20
        replay(h.sql.url)
        assert derived(h) == live
        assert sum(p["events"] for p in _bodies(h)) == counters["events"]
    finally:
        h.close()


def _bodies(h: Harness) -> list[dict[str, Any]]:
    import json

    with h.sql.engine.connect() as conn:
        rows = conn.execute(sa.select(profiles.c.body).where(profiles.c.merged_into.is_(None)))
        return [json.loads(body)["counters"] for (body,) in rows]


def test_the_processing_loop_recovers_from_a_failed_commit(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from worldflow.processing import run
    from worldflow.store.profiles import SqlProfileStore

    h = Harness(store_url)
    try:
        simulated_day(h, 20)
        end = h.store.log_end()
        real_commit = SqlProfileStore.commit
        calls = {"n": 0}

        def failing_once(self: SqlProfileStore, commit: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 2:
                raise sa.exc.OperationalError("COMMIT", {}, Exception("the store went away"))
            real_commit(self, commit)

        monkeypatch.setattr(SqlProfileStore, "commit", failing_once)
        stop = threading.Event()

        def caught_up(processor: Any, _n: int) -> None:
            if processor.offset >= end:
                stop.set()

        thread = threading.Thread(
            target=run, args=(h.sql.url, (0,), None, stop),
            kwargs={"on_step": caught_up, "options": {"batch_size": 200}},
        )  # fmt: skip
        thread.start()
        thread.join(60)
        assert not thread.is_alive()
        assert calls["n"] > 2  # it failed once, then went on
        live = derived(h)
        monkeypatch.setattr(SqlProfileStore, "commit", real_commit)
        replay(h.sql.url)
        assert derived(h) == live
    finally:
        h.close()
