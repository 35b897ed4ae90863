"""Deliveries and destinations in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tests.actions.receiver import action, add, put, row, rows
from worldflow.actions.deliver import LOCK_KEY, DelivererBusyError, exclusive
from worldflow.store.deliveries import (
    CircuitRow,
    Deferral,
    Result,
    SqlDeliveryStore,
    Want,
    delivery_id,
    insert_deliveries,
)
from worldflow.store.schema import metadata

URL = "https://hooks.example/in"


def test_the_migration_builds_what_the_schema_declares(store: SqlDeliveryStore) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    ours = {"deliveries", "webhook_destinations"}
    mine = [d for d in diff if any(t in str(d) for t in ours)]
    assert mine == []
    indexes = {i["name"] for i in sa.inspect(store.engine).get_indexes("deliveries")}
    assert {"ix_deliveries_channel_state_next_attempt_ms", "ix_deliveries_pending_by_destination",
            "ix_deliveries_workspace_id_state_created_ms"} <= indexes  # fmt: skip


def test_inserting_the_same_delivery_again_is_a_no_op(store: SqlDeliveryStore) -> None:
    first = action("wh_1")
    add(store, first, action("wh_2"))
    with store.engine.begin() as conn:  # again, in another transaction, with another payload
        insert_deliveries(conn, [{**first, "payload": '{"other":true}'}, action("wh_3")])
        insert_deliveries(conn, [action("wh_3")])  # and twice in the same one
        insert_deliveries(conn, [])
    found = rows(store)
    assert sorted(found) == ["wh_1", "wh_2", "wh_3"]
    assert found["wh_1"]["payload"] == first["payload"]
    minimal = {"id": "wh_4", "workspace_id": "default", "destination_id": "crm",
               "event_type": "journey.action", "payload": {"b": 1, "a": [1]},
               "created_ms": 1000}  # fmt: skip
    add(store, minimal)
    stored = row(store, "wh_4")
    assert (stored["channel"], stored["state"], stored["attempts"], stored["next_attempt_ms"],
            stored["payload"]) == ("webhook", "pending", 0, 1000, '{"a":[1],"b":1}')  # fmt: skip


def test_a_malformed_row_is_refused_naming_the_key() -> None:
    with pytest.raises(ValueError, match="missing created_ms; unknown colour"):
        insert_deliveries(None, [{"id": "x", "workspace_id": "w", "destination_id": "d",  # type: ignore[arg-type]
                                  "event_type": "t", "payload": "{}", "colour": 1}])  # fmt: skip


def test_delivery_ids_are_deterministic() -> None:
    assert delivery_id("default", "welcome", 3, "p1", "hook") == delivery_id(
        "default", "welcome", 3, "p1", "hook")  # fmt: skip
    assert delivery_id("default", "welcome", 3, "p1", "hook") != delivery_id("default", "w", 3)
    assert len(delivery_id("x")) <= 64


def test_destinations_keep_their_secret_and_answer_it_only_at_creation(
    store: SqlDeliveryStore,
) -> None:
    created, was_new = store.put_destination(
        "default", "crm", url=URL, secret=None, secret_if_new="whsec_generated",
        headers={"X-Team": "crm"}, timeout_ms=3000, rate_per_s=2.5, disabled=False,
    )  # fmt: skip
    assert was_new and created["secret"] == "whsec_generated"
    assert created["headers"] == {"X-Team": "crm"} and created["circuit_state"] == "closed"
    again, was_new = store.put_destination(
        "default", "crm", url=URL + "2", secret=None, secret_if_new="whsec_other",
        headers={}, timeout_ms=5000, rate_per_s=None, disabled=False,
    )  # fmt: skip
    assert not was_new and "secret" not in again and again["url"] == URL + "2"
    got = store.get_destination("default", "crm")
    assert got is not None and "secret" not in got and got["rate_per_s"] is None
    assert [d["id"] for d in store.list_destinations("default")] == ["crm"]
    assert store.list_destinations("other") == [] and store.get_destination("other", "crm") is None
    (secret,) = [d["secret"] for d in store.dispatch_destinations()]
    assert secret == "whsec_generated"
    store.put_destination("default", "crm", url=URL, secret="whsec_rotated", secret_if_new="",
                          headers={}, timeout_ms=5000, rate_per_s=None, disabled=False)  # fmt: skip
    assert store.dispatch_destinations()[0]["secret"] == "whsec_rotated"


def test_disabling_or_deleting_a_destination_ends_its_pending_deliveries(
    store: SqlDeliveryStore,
) -> None:
    put(store, "crm", URL)
    put(store, "erp", URL)
    add(store, action("a1", "crm"), action("a2", "crm"), action("b1", "erp"))
    put(store, "crm", URL, disabled=True)
    assert row(store, "a1")["state"] == "dead"
    assert "destination 'crm' is disabled; enable it, then replay" in row(store, "a1")["last_error"]
    assert row(store, "b1")["state"] == "pending"
    assert store.delete_destination("default", "erp")
    assert not store.delete_destination("default", "erp")
    assert "destination 'erp' was deleted" in row(store, "b1")["last_error"]
    assert store.counts("default", "crm") == {"pending": 0, "delivered": 0, "dead": 2}


def test_due_reads_each_destination_on_its_own(store: SqlDeliveryStore) -> None:
    backlog = [action(f"slow-{i:03}", "slow", next_attempt_ms=1000 + i) for i in range(200)]
    add(store, *backlog, action("fast-1", "fast", next_attempt_ms=5000),
        action("fast-2", "fast", next_attempt_ms=5001),
        action("later", "fast", next_attempt_ms=99_999),
        action("elsewhere", "fast", workspace="other", next_attempt_ms=1),
        {**action("mail", "fast", next_attempt_ms=1), "channel": "email"})  # fmt: skip
    due = store.due([Want("default", "slow", 3, exclude=frozenset({"slow-000"})),
                     Want("default", "fast", 10), Want("default", "none", 5)], 10_000)  # fmt: skip
    assert [d.id for d in due if d.destination_id == "slow"] == ["slow-001", "slow-002", "slow-003"]
    assert [d.id for d in due if d.destination_id == "fast"] == ["fast-1", "fast-2"]
    one = store.due([Want("default", "fast", 1)], 10_000)
    assert [d.id for d in one] == ["fast-1"] and one[0].attempts == 0
    many = store.due(
        [Want("default", f"d{i}", 1) for i in range(120)] + [Want("default", "fast", 1)], 10_000
    )  # more destinations than one query
    assert [d.id for d in many] == ["fast-1"]


def test_recording_outcomes_circuits_and_deferrals(store: SqlDeliveryStore) -> None:
    put(store, "crm", URL)
    add(store, *(action(f"d{i}", "crm", next_attempt_ms=1000) for i in range(5)),
        action("old", "crm", created_ms=500, next_attempt_ms=1000))  # fmt: skip
    store.record([
        Result("d0", 1, "delivered", 2000, 204, None, 2000),
        Result("d1", 1, "pending", 3000, 500, "HTTP 500", 2000),
        Result("d2", 1, "dead", 2000, 400, "HTTP 400: no", 2000),
    ], [CircuitRow("default", "crm", "open", 5, 2000, 32_000)],
        [Deferral("default", "crm", 32_000, frozenset({"d4"}), window_ms=10_000,
                  window="10s")])  # fmt: skip
    got = rows(store)
    assert (got["d0"]["state"], got["d0"]["delivered_ms"], got["d0"]["attempts"]) == (
        "delivered", 2000, 1)  # fmt: skip
    assert (got["d1"]["state"], got["d1"]["next_attempt_ms"]) == ("pending", 32_000)  # deferred
    assert (got["d2"]["state"], got["d2"]["last_error"]) == ("dead", "HTTP 400: no")
    assert (got["d3"]["next_attempt_ms"], got["d3"]["attempts"]) == (32_000, 0)
    assert got["d4"]["next_attempt_ms"] == 1000  # in flight: not moved
    # Its window ends before the circuit reopens: it could not be retried in it.
    assert (got["old"]["state"], got["old"]["attempts"]) == ("dead", 0)
    assert got["old"]["last_error"] == (
        "gave up: the retry window of 10s ended while the destination's circuit was open; "
        "last: not attempted"
    )
    destination = store.get_destination("default", "crm")
    assert destination is not None
    assert (destination["circuit_state"], destination["consecutive_failures"],
            destination["reopen_at_ms"]) == ("open", 5, 32_000)  # fmt: skip
    # An outcome arriving for a delivery ended meanwhile does not bring it back.
    store.record([Result("d2", 2, "pending", 9000, 500, "late", 9000)])
    assert row(store, "d2")["state"] == "dead"


def test_orphans_and_disabled_destinations_end_with_a_reason(store: SqlDeliveryStore) -> None:
    put(store, "crm", URL)
    put(store, "off", URL)
    store.put_destination("default", "off", url=URL, secret=None, secret_if_new="",
                          headers={}, timeout_ms=2000, rate_per_s=None, disabled=True)  # fmt: skip
    add(store, action("ok", "crm"), action("ghost", "nowhere"), action("late", "off"),
        {**action("mail", "nowhere"), "channel": "email"})  # fmt: skip
    assert store.end_orphans() == 2
    got = rows(store)
    assert got["ok"]["state"] == "pending" and got["mail"]["state"] == "pending"
    assert got["ghost"]["last_error"] == ("destination 'nowhere' does not exist in workspace "
                                          "'default'; create it, then replay")  # fmt: skip
    assert "is disabled" in got["late"]["last_error"]
    assert store.end_orphans() == 0


def test_dead_letters_list_newest_first_and_replay(store: SqlDeliveryStore) -> None:
    put(store, "crm", URL)
    add(store, *(action(f"d{i}", "crm", created_ms=1000 + i) for i in range(5)),
        action("x1", "erp", created_ms=2000), action("other", "crm", workspace="w2"))  # fmt: skip
    store.record([Result(i, 7, "dead", 5000, 503, "gave up", 5000)
                  for i in ("d0", "d1", "d2", "d3", "x1", "other")])  # fmt: skip
    page = store.list_deliveries("default", "dead", limit=3)
    assert [d["id"] for d in page] == ["x1", "d3", "d2"]
    rest = store.list_deliveries("default", "dead", limit=3,
                                 before=(page[-1]["created_ms"], page[-1]["id"]))  # fmt: skip
    assert [d["id"] for d in rest] == ["d1", "d0"]
    assert [d["id"] for d in store.list_deliveries("default", "dead", "erp")] == ["x1"]
    assert [d["id"] for d in store.list_deliveries("default", "pending")] == ["d4"]
    assert store.replay("default", ids=["d0", "d4", "other", "nope"]) == 1  # dead, this workspace
    d0 = row(store, "d0")
    assert (d0["state"], d0["attempts"], d0["last_error"]) == ("pending", 0, None)
    assert d0["replayed_ms"] is not None and d0["next_attempt_ms"] == d0["replayed_ms"]
    assert store.replay("default", destination_id="crm") == 3
    assert store.replay("default", destination_id="crm") == 0
    assert row(store, "x1")["state"] == "dead" and row(store, "other")["state"] == "dead"
    assert store.get_delivery("default", "d1")["state"] == "pending"  # type: ignore[index]
    assert store.get_delivery("w2", "d1") is None


def test_one_dispatcher_per_store(store: SqlDeliveryStore) -> None:
    with exclusive(store.engine), pytest.raises(DelivererBusyError), exclusive(store.engine, 0.2):
        pass
    with exclusive(store.engine):  # released
        pass


def test_a_lost_lock_is_taken_again_unless_another_dispatcher_has_it(
    store: SqlDeliveryStore,
) -> None:
    def cut() -> None:  # what a database restart does to the lock's connection
        with store.engine.connect() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE "
                                  f"locktype = 'advisory' AND objid = {LOCK_KEY}"))  # fmt: skip

    postgres = store.engine.dialect.name == "postgresql"
    with exclusive(store.engine) as lock:
        assert lock.check()
        if postgres:
            cut()
            assert lock.check()  # taken again on a new connection
            with pytest.raises(DelivererBusyError), exclusive(store.engine):
                pass
            cut()
            with exclusive(store.engine):  # another dispatcher was quicker
                assert not lock.check()
