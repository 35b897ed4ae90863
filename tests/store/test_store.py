"""The store on both engines: migrations, the default workspace, keys, tokens, quarantine."""

from __future__ import annotations

import sqlalchemy as sa

from worldflow.store.sql import DEFAULT_WORKSPACE, SqlStore, hash_secret


def test_migrations_are_idempotent_and_create_the_schema(store_url: str) -> None:
    store = SqlStore(store_url)
    store.migrate()
    store.migrate()
    tables = set(sa.inspect(store.engine).get_table_names())
    assert {"workspaces", "sources", "api_tokens", "event_log", "quarantine"} <= tables
    store.close()


def test_bootstrap_creates_default_workspace_once_and_stores_secrets_hashed(store_url: str) -> None:
    store = SqlStore(store_url)
    store.migrate()
    first = store.bootstrap()
    assert first.write_key and first.admin_token  # generated: shown once
    again = store.bootstrap()
    assert (again.write_key, again.admin_token) == (None, None)
    ref = store.source_for_write_key(first.write_key)
    assert ref is not None and ref.workspace_id == DEFAULT_WORKSPACE
    token = store.token(first.admin_token)
    assert token is not None and token.scopes == {"ingest", "read", "admin"}
    with store.engine.connect() as conn:
        dump = " ".join(str(row) for t in ("sources", "api_tokens")
                        for row in conn.execute(sa.text(f"SELECT * FROM {t}")))  # fmt: skip
    assert first.write_key not in dump and first.admin_token not in dump
    assert hash_secret(first.write_key) in dump
    store.close()


def test_given_secrets_are_registered_on_every_start(store_url: str) -> None:
    store = SqlStore(store_url)
    store.migrate()
    boot = store.bootstrap("wk_given", "wat_given")
    assert (boot.write_key, boot.admin_token) == (None, None)  # given ones are not printed
    store.bootstrap("wk_other", "wat_other")
    assert store.source_for_write_key("wk_given") is not None
    assert store.source_for_write_key("wk_other") is not None
    assert store.token("wat_other") is not None
    assert store.source_for_write_key("wk_unknown") is None
    store.close()


def test_sources_and_tokens_with_scopes_and_revocation(store_url: str) -> None:
    store = SqlStore(store_url)
    store.migrate()
    store.bootstrap("wk_a", "wat_a")
    source = store.create_source(DEFAULT_WORKSPACE, "unity-build", "world")
    assert store.source_for_write_key(source["write_key"]).source_id == source["id"]  # type: ignore[union-attr]
    names = [s["name"] for s in store.list_sources(DEFAULT_WORKSPACE)]
    assert "unity-build" in names
    token = store.create_token(DEFAULT_WORKSPACE, "reader", frozenset({"read"}))
    ref = store.token(token["token"])
    assert ref is not None and ref.scopes == {"read"}
    store.revoke_token(DEFAULT_WORKSPACE, token["id"])
    assert store.token(token["token"]) is None
    store.close()
