from __future__ import annotations

from collections.abc import Iterator

import pytest

from worldflow.store.deliveries import SqlDeliveryStore
from worldflow.store.sql import SqlStore


@pytest.fixture
def store(store_url: str) -> Iterator[SqlDeliveryStore]:
    """A migrated, empty store on each engine."""
    sql = SqlStore(store_url)
    sql.migrate()
    yield SqlDeliveryStore(sql.engine)
    sql.close()


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    """For the dispatcher's behaviours that do not depend on the engine."""
    return f"sqlite:///{tmp_path}/store.db"


@pytest.fixture
def lite(sqlite_url: str) -> Iterator[SqlDeliveryStore]:
    sql = SqlStore(sqlite_url)
    sql.migrate()
    yield SqlDeliveryStore(sql.engine)
    sql.close()


@pytest.fixture
def sql(sqlite_url: str) -> Iterator[SqlStore]:
    """A migrated SQLite store with the default workspace (settings, SMTP)."""
    store = SqlStore(sqlite_url)
    store.migrate()
    store.bootstrap()
    yield store
    store.close()
