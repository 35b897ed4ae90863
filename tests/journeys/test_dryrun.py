"""`worldflow journeys simulate`: a draft journey over recorded history, without effects."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from tests.journeys.test_engine import CARTERS, NUDGE, cart
from tests.processor.harness import Harness, track
from worldflow.journeys.dryrun import simulate
from worldflow.store.schema import deliveries, journey_stats

ORDER = {"order_id": "o1", "total": {"amount": "90.00", "currency": "EUR"}}


def test_a_draft_replays_the_history_through_its_steps_and_changes_nothing(
    tmp_path: Path,
) -> None:
    h = Harness(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        h.apply(CARTERS)
        h.send(*(cart(f"u{i}") for i in range(6)))
        h.send(track("order.completed", ORDER, userId="u0", context={"session_id": "s1"}))
        h.tick(h.now + timedelta(hours=2))
        h.process()
        url = h.sql.engine.url.render_as_string(hide_password=False)
        draft = {**NUDGE, "status": "draft"}
        report = simulate(url, h.workspace, draft, 3 * 3_600_000)
        assert report["entered"] == 6 and report["converted"] == 1
        assert report["actions"] == {"webhook": 5, "traits": 5}  # offers, then timeouts: tags
        assert report["branches"]["is-vip"] == {"else": 5}
        assert report["ends"] == {"converted": 1, "completed": 5}
        with h.sql.engine.connect() as conn:  # the real store: untouched
            assert conn.execute(sa.select(sa.func.count()).select_from(deliveries)).scalar() == 0
            assert conn.execute(sa.select(sa.func.count()).select_from(journey_stats)).scalar() == 0
        # The same from the command line, with the draft in a file.
        path = tmp_path / "draft.json"
        path.write_text(json.dumps(draft))
        out = subprocess.run([sys.executable, "-m", "worldflow", "journeys", "simulate",
                              str(path), "--since", "3h", "--store", url,
                              "--workspace", h.workspace],
                             check=True, capture_output=True, text=True)  # fmt: skip
        assert json.loads(out.stdout)["actions"] == {"webhook": 5, "traits": 5}
    finally:
        h.close()
