"""Node packages the tests need, pinned in a folder's package.json and lock file, installed
with ``npm ci`` when what is installed differs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import need, node_available

INSTALL_TIMEOUT_S = 600


def installed_version(folder: Path, package: str) -> str | None:
    manifest = folder / "node_modules" / package / "package.json"
    if not manifest.exists():
        return None
    version: str = json.loads(manifest.read_text())["version"]
    return version


def node_major() -> int:
    out = subprocess.run(
        ["node", "--version"], check=False, capture_output=True, text=True, timeout=30
    )
    match = re.match(r"v(\d+)\.", out.stdout.strip())
    return int(match.group(1)) if match else 0


def ensure_packages(folder: Path, wanted: dict[str, str]) -> Path:
    """``folder/node_modules`` holding exactly ``wanted`` (package → version); ``npm ci`` (or
    ``npm install`` without a lock file) when not. Skips locally, fails under CI, when node
    or npm is missing or older than 20."""
    need("node and npm", node_available(), "install Node.js 20+ with npm")
    major = node_major()
    need("Node.js 20 or newer", major >= 20, f"found major version {major}")
    if any(installed_version(folder, p) != v for p, v in wanted.items()):
        verb = "ci" if (folder / "package-lock.json").exists() else "install"
        cmd = [shutil.which("npm") or "npm", verb, "--no-audit", "--no-fund"]
        done = subprocess.run(
            cmd, check=False, cwd=folder, capture_output=True, text=True,
            timeout=INSTALL_TIMEOUT_S, env={**os.environ, "npm_config_update_notifier": "false"},
        )  # fmt: skip
        if done.returncode != 0:
            pytest.fail(f"npm {verb} failed in {folder}:\n{done.stdout}\n{done.stderr}")
        missing = [p for p, v in wanted.items() if installed_version(folder, p) != v]
        assert not missing, f"npm {verb} did not install {missing}"
    return folder / "node_modules"
