"""The JavaScript SDK's own suite (``sdk/js/test``, Node's test runner), and its output checked
against the server's catalogue.

The SDK's dev dependencies (fake-indexeddb, ws, three) are pinned in ``sdk/js/package.json``
with its lock file and installed with ``npm ci`` when missing. While the suite runs, its test
servers and beacon double write every batch they receive to a file (``WORLDFLOW_SDK_RECORD``);
each message is then translated exactly as ``POST /v1/batch`` would, so a property the server
would refuse fails here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from tests.npm import ensure_packages
from worldflow.events.catalogue import Catalogue
from worldflow.events.model import Event
from worldflow.events.segment import SegmentTranslator, split_batch

pytestmark = pytest.mark.node

Suite = tuple[subprocess.CompletedProcess[str], Path]
SDK_DIR = Path(__file__).parents[2] / "sdk" / "js"
SUITE_TIMEOUT_S = 300
# The events the SDK itself emits: each must be a known catalogue event, never a custom one.
SDK_EVENTS = {
    "consent.updated", "session.started", "session.ended", "zone.entered", "zone.exited",
    "object.viewed", "object.gaze_dwell", "object.hovered", "content.impression",
    "content.interacted",
}  # fmt: skip


def ensure_node_modules() -> Path:
    """``sdk/js/node_modules`` with exactly the pinned dev dependencies (``npm ci`` if needed).

    Skips locally, fails under CI, when node or npm is missing or too old.
    """
    manifest = json.loads((SDK_DIR / "package.json").read_text())
    assert not manifest.get("dependencies"), "the SDK must have no runtime dependencies"
    return ensure_packages(SDK_DIR, manifest["devDependencies"])


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Suite:
    ensure_node_modules()
    record = tmp_path_factory.mktemp("sdk") / "batches.jsonl"
    done = subprocess.run(
        ["node", "--test", "test/"], check=False, cwd=SDK_DIR, capture_output=True, text=True,
        timeout=SUITE_TIMEOUT_S, env={**os.environ, "WORLDFLOW_SDK_RECORD": str(record)},
    )  # fmt: skip
    return done, record


def test_node_suite_passes(suite: Suite) -> None:
    done, _ = suite
    assert done.returncode == 0, (
        f"node --test sdk/js/test/ exited with {done.returncode}\n"
        f"stdout:\n{done.stdout[-20000:]}\nstderr:\n{done.stderr[-4000:]}"
    )
    summary = dict(re.findall(r"^# (tests|pass|fail) (\d+)$", done.stdout, re.MULTILINE))
    assert int(summary.get("tests", 0)) > 0 and summary.get("fail") == "0", done.stdout[-4000:]


def test_every_message_the_sdk_sent_is_accepted_by_the_server(
    suite: Suite,
) -> None:
    _, record = suite
    assert record.exists(), "the suite recorded no batch"
    translator = SegmentTranslator(Catalogue.default(), 32 * 1024, 3600)
    names: set[str] = set()
    count = 0
    for line in record.read_text().splitlines():
        raws, sent_at, _key, context = split_batch(line.encode())
        items = translator.translate(
            raws, workspace_id="ws", source_id="src", received_at=datetime.now(UTC),
            sent_at=sent_at, batch_context=context,
        )  # fmt: skip
        for raw, item in zip(raws, items, strict=True):
            assert isinstance(item, Event), f"the server would refuse: {item}\n{bytes(raw)!r}"
            message = msgspec.json.decode(bytes(raw))
            assert message["context"]["library"]["name"] == "worldflow-js"
            if item.type == "track" and item.name:
                names.add(item.name)
                if item.name in SDK_EVENTS:
                    assert not item.custom, f"{item.name} is not in the catalogue"
            count += 1
    assert count > 100, count
    assert names >= SDK_EVENTS, f"not covered by the suite: {sorted(SDK_EVENTS - names)}"
