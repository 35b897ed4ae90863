"""Shared fixtures: a real server process, an in-process app, and service availability.

Tests that need PostgreSQL, Node or Chromium skip when it is missing locally and FAIL when
``CI=true`` (CI must provide every service).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_URL = os.environ.get("WORLDFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
WRITE_KEY = "wk_test_key"
ADMIN_TOKEN = "wat_test_token"


def need(what: str, available: bool, how: str = "") -> None:
    """Skip locally, fail in CI, when a service or tool the test needs is missing."""
    if available:
        return
    message = f"{what} is not available{': ' + how if how else ''}"
    if IN_CI:
        pytest.fail(f"{message} (required when CI=true)")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(
            PG_URL.replace("postgresql://", "postgresql://", 1), connect_timeout=3
        ):
            return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_url() -> str:
    need("PostgreSQL", postgres_available(), PG_URL)
    return PG_URL


@dataclass
class ServerProcess:
    """``worldflow serve`` in a child process, as users run it."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    store: str = ""
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    write_key: str = WRITE_KEY
    admin_token: str = ADMIN_TOKEN

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> ServerProcess:
        env = {
            **os.environ,
            "WORLDFLOW_WRITE_KEY": self.write_key,
            "WORLDFLOW_ADMIN_TOKEN": self.admin_token,
            **self.env,
        }
        cmd = [sys.executable, "-m", "worldflow", "serve", "--data-dir", str(self.data_dir),
               "--port", str(self.port)]  # fmt: skip
        if self.store:
            cmd += ["--store", self.store]
        with (self.data_dir.parent / f"server-{self.port}.log").open("ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not become ready: {self.output()}")

    def output(self) -> str:
        path = self.data_dir.parent / f"server-{self.port}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=10
        )

    def log_events(self) -> list[dict[str, Any]]:
        """Every event of the default workspace in the log, in order."""
        out: list[dict[str, Any]] = []
        after = 0
        with self.admin() as client:
            while True:
                page = client.get("/v1/log", params={"after": after, "limit": 1000}).json()
                out.extend(page["events"])
                if page["next_after"] == after:
                    return out
                after = page["next_after"]

    def wait_processed(self, timeout: float = 30) -> dict[str, Any]:
        """Wait until the processor has applied the whole log; its status."""
        deadline = time.monotonic() + timeout
        with self.admin() as admin:
            while True:
                status: dict[str, Any] = admin.get("/v1/processor").json()
                partition = status["partitions"].get("0")
                if partition and partition["lag"] == 0 and status["log_end_offset"] > 0:
                    return status
                assert time.monotonic() < deadline, status
                time.sleep(0.05)

    def quarantine(self) -> list[dict[str, Any]]:
        with self.admin() as client:
            return list(client.get("/v1/quarantine", params={"limit": 1000}).json()["items"])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "data").start()
    yield srv
    if srv.proc is not None:
        srv.stop()


def node_available() -> bool:
    return shutil.which("node") is not None and shutil.which("npm") is not None


@pytest.fixture(scope="session")
def pg_database(pg_url: str) -> Iterator[str]:
    """A PostgreSQL database of its own for this test session, dropped at the end."""
    import uuid

    import psycopg

    name = f"wf_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    base = pg_url.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _reset_postgres(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL on each engine: an empty SQLite file, or an emptied PostgreSQL database."""
    from worldflow.config import normalise_store_url

    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("pg_database")
    _reset_postgres(url)
    return normalise_store_url(url)
