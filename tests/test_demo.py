"""``make demo`` runs end to end: server up, traffic in, results shown."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port


def test_demo_runs_to_completion(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "worldflow.demo", "--no-wait", "--avatars", "30", "--minutes", "30",
         "--port", str(free_port()), "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "profiles" in out.stdout
    assert "merges" in out.stdout
    assert "One person, one profile" in out.stdout  # a profile stitched across worlds
    assert "quarantined" in out.stdout
    assert "applied segment sneaker-fans" in out.stdout
    assert "segments, live" in out.stdout
    # the concert journey's e-mail, sent by the dispatcher to the demo's mail sink
    mails = re.search(r"(\d+) e-mails? received by the demo's mail sink", out.stdout)
    assert mails is not None and int(mails[1]) >= 1, out.stdout
    assert "Thanks for coming to the concert, " in out.stdout
    # The browser showroom: its scene registered, a world's key made, the address printed
    # (three.js comes from sdk/js/node_modules, which make demo installs).
    assert "registered scene paris-flagship" in out.stdout
    if (Path(__file__).parents[1] / "sdk/js/node_modules/three").is_dir():
        assert re.search(r"/showroom/\?key=wk_\S+", out.stdout), out.stdout
