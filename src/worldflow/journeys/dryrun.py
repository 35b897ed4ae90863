"""``worldflow journeys simulate``: a journey (a draft, say) run over recorded history, with no
effect: what would have happened.

The workspace's log since a point in time is copied into a scratch store, with the
workspace's active segments and score models and the journey (as active) activated at its
start; the processor replays it there as ``worldflow replay`` does — which writes no
deliveries and appends nothing — and the journey's stats in the scratch store are the report:
entries, arrivals per step, branches, ends, conversions and actions per channel. Segments are
computed from the copied history only (what happened before ``since`` is not there), so a
condition over a window longer than the simulated span sees less than live would.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from worldflow.engine import TICK_WORKSPACE
from worldflow.journeys.definition import validate
from worldflow.log.sql import read_entries
from worldflow.processing import replay
from worldflow.store.definitions import SqlDefinitionStore, definition_record
from worldflow.store.profiles import SqlProfileStore
from worldflow.store.schema import event_log, workspaces
from worldflow.store.sql import SqlStore, create_store_engine

BATCH = 20_000


def simulate(store_url: str, workspace_id: str, document: dict[str, Any],
             since_ms: int) -> dict[str, Any]:  # fmt: skip
    """The journey's report over the log of ``workspace_id`` from ``since_ms`` ago (log time)
    to its end."""
    journey = validate({**document, "status": "active"})
    source = create_store_engine(store_url)
    try:
        with source.connect() as conn:
            end = conn.execute(sa.select(sa.func.max(event_log.c.received_at_ms))).scalar() or 0
            settings = conn.execute(sa.select(workspaces.c.settings)
                                    .where(workspaces.c.id == workspace_id)).scalar()  # fmt: skip
        start = end - since_ms
        active = SqlProfileStore(source).active_definitions(workspace_id)
        with tempfile.TemporaryDirectory(prefix="wf-simulate-") as tmp:
            url = f"sqlite:///{Path(tmp) / 'scratch.db'}"
            copied = _scratch(url, source, workspace_id, settings, active, journey, start)
            counters = replay(url)
            scratch = SqlStore(url)
            stats = SqlDefinitionStore(scratch.engine).journey_stats(workspace_id,
                                                                     journey["key"])  # fmt: skip
            scratch.close()
    finally:
        source.dispose()
    report = stats[-1] if stats else {"entered": 0}
    report.pop("deliveries", None)  # nothing was delivered: it is a simulation
    return {"journey": journey["key"], "since_ms": start, "until_ms": end, "events": copied,
            "profiles": counters.get("profiles_created", 0), **report}  # fmt: skip


def _scratch(url: str, source: sa.Engine, workspace_id: str, settings: str | None,
             active: list[tuple[int, dict[str, Any]]], journey: dict[str, Any],
             start: int) -> int:  # fmt: skip
    """A scratch store holding the definitions' activations, then the log since ``start``."""
    scratch = SqlStore(url)
    scratch.migrate()
    with scratch.engine.begin() as conn:
        conn.execute(sa.insert(workspaces).values(id=workspace_id, name="simulation",
                                                  created_at_ms=start,
                                                  settings=settings or "{}"))  # fmt: skip
    store = SqlDefinitionStore(scratch.engine)
    records = []
    documents = [d for _, d in active if d.get("kind") in ("segment", "score")]
    for document in [*sorted(documents, key=lambda d: d.get("kind") != "score"), journey]:
        version, _ = store.put(workspace_id, document)
        records.append(definition_record(workspace_id, document["kind"], document["key"],
                                         version, 0, start - 1)._asdict())  # fmt: skip
    copied, after = 0, 0
    with scratch.engine.begin() as conn:
        conn.execute(sa.insert(event_log), records)
        while entries := read_entries(source, after, BATCH):
            after = entries[-1].offset
            rows = [{"workspace_id": e.workspace_id, "message_id": e.message_id,
                     "partition": 0, "received_at_ms": e.received_at_ms, "body": e.body}
                    for e in entries if e.received_at_ms >= start
                    and e.workspace_id in (workspace_id, TICK_WORKSPACE)
                    and b'"definition"' not in e.body[:20]]  # fmt: skip
            if rows:
                conn.execute(sa.insert(event_log), rows)
                copied += sum(r["workspace_id"] == workspace_id for r in rows)
    scratch.close()
    return copied
