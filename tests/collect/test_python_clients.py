"""The official Python libraries of Segment and RudderStack, unchanged, against the server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient

from tests.conftest import ServerProcess

Factory = Callable[..., Any]


def segment_client(server: ServerProcess, **kw: Any) -> Any:
    return SegmentClient(server.write_key, host=server.url, **kw)


def rudder_client(server: ServerProcess, **kw: Any) -> Any:
    return RudderClient(server.write_key, host=server.url, **kw)


def every_call(client: Any, tag: str) -> None:
    """One call of each type, with a shape that exercises names, properties and traits."""
    client.identify(f"user-{tag}", {"email_hash": "h1", "plan": "gold"}, message_id=f"{tag}-i")
    client.track(
        f"user-{tag}", "zone.entered", {"zone_id": "paris-lobby", "zone_type": "lobby"},
        message_id=f"{tag}-t",
    )  # fmt: skip
    client.track(
        f"user-{tag}", "Product Viewed", {"product_id": "sneaker-1", "price": 99.5,
                                          "currency": "eur"}, message_id=f"{tag}-pv",
    )  # fmt: skip
    client.page(f"user-{tag}", "docs", "Getting started", {"path": "/start"}, message_id=f"{tag}-p")
    client.screen(f"user-{tag}", "shop", "Cart", {"items": 2}, message_id=f"{tag}-s")
    client.group(f"user-{tag}", f"team-{tag}", {"name": "Acme"}, message_id=f"{tag}-g")
    client.alias(f"anon-{tag}", f"user-{tag}", message_id=f"{tag}-a")


def by_id(server: ServerProcess) -> dict[str, dict[str, Any]]:
    return {e["event"]["message_id"]: e["event"] for e in server.log_events()}


@pytest.mark.parametrize("make", [segment_client, rudder_client], ids=["segment", "rudder"])
@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_every_call_type_lands_in_the_log(server: ServerProcess, make: Factory, gzip: bool) -> None:
    errors: list[Any] = []
    client = make(server, gzip=gzip, on_error=lambda e, batch: errors.append(e), sync_mode=False)
    every_call(client, "x")
    client.flush()
    client.shutdown()
    assert errors == []
    events = by_id(server)
    assert {k: v["type"] for k, v in events.items()} == {
        "x-i": "identify", "x-t": "track", "x-pv": "track", "x-p": "page", "x-s": "screen",
        "x-g": "group", "x-a": "alias",
    }  # fmt: skip
    assert events["x-i"]["traits"]["plan"] == "gold"
    assert events["x-i"]["user_id"] == "user-x"
    zone = events["x-t"]
    assert (zone["name"], zone.get("custom", False)) == ("zone.entered", False)
    assert zone["properties"]["zone_id"] == "paris-lobby"
    viewed = events["x-pv"]
    assert viewed["name"] == "object.viewed"
    assert viewed["original_name"] == "Product Viewed"
    assert viewed["properties"]["obj"]["product"]["sku"] == "sneaker-1"
    assert events["x-p"]["name"] == "Getting started"
    assert events["x-p"]["properties"]["category"] == "docs"
    assert events["x-s"]["name"] == "Cart"
    assert events["x-g"]["group_id"] == "team-x"
    assert (events["x-a"]["previous_id"], events["x-a"]["user_id"]) == ("anon-x", "user-x")
    # The library's own context survives.
    assert "library" in zone["context"]
    assert zone["sent_at"] is not None


@pytest.mark.parametrize("make", [segment_client, rudder_client], ids=["segment", "rudder"])
def test_sync_mode_single_requests(server: ServerProcess, make: Factory) -> None:
    client = make(server, sync_mode=True)
    for i in range(5):
        client.track("u-sync", "object.viewed", {"obj": {"object_id": f"o{i}"}},
                     message_id=f"sync-{i}")  # fmt: skip
    assert sorted(by_id(server)) == [f"sync-{i}" for i in range(5)]


@pytest.mark.parametrize("make", [segment_client, rudder_client], ids=["segment", "rudder"])
def test_wrong_write_key_is_reported_not_retried(server: ServerProcess, make: Factory) -> None:
    errors: list[Any] = []
    server_key = server.write_key
    server.write_key = "wk_wrong"
    try:
        client = make(server, on_error=lambda e, batch: errors.append(e), max_retries=1)
    finally:
        server.write_key = server_key
    client.track("u1", "custom thing", {}, message_id="nope")
    client.flush()
    client.shutdown()
    assert len(errors) == 1
    assert getattr(errors[0], "status", None) == 401
    assert getattr(errors[0], "code", None) == "invalid_write_key"
    assert server.log_events() == []


def test_batch_of_many_and_retried_batch_counts_once(server: ServerProcess) -> None:
    client = segment_client(server, upload_size=100)
    for i in range(1000):
        client.track(f"u{i % 37}", "object.gaze_dwell",
                     {"obj": {"object_id": f"o{i % 11}"}, "source": "head", "dwell_ms": i},
                     message_id=f"many-{i}")  # fmt: skip
    client.flush()
    # The same messages again: a client retry after a lost response.
    for i in range(1000):
        client.track(f"u{i % 37}", "object.gaze_dwell",
                     {"obj": {"object_id": f"o{i % 11}"}, "source": "head", "dwell_ms": i},
                     message_id=f"many-{i}")  # fmt: skip
    client.flush()
    client.shutdown()
    events = server.log_events()
    assert len(events) == 1000
    assert len({e["event"]["message_id"] for e in events}) == 1000
    import httpx

    text = httpx.get(f"{server.url}/metrics").text
    assert 'worldflow_events_accepted_total{channel="segment",workspace="default"} 1000.0' in text
    assert 'worldflow_events_duplicate_total{channel="segment",workspace="default"} 1000.0' in text
