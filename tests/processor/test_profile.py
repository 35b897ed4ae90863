"""Traits, sessions, consent and privacy tiers as the processor applies them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from tests.processor.harness import T0, Harness, iso, track


@pytest.fixture
def h(store_url: str) -> Iterator[Harness]:
    harness = Harness(store_url)
    yield harness
    harness.close()


CTX = {"world": {"id": "paris"}, "session_id": "s1"}


def test_traits_set_set_once_unset_and_late_events(h: Harness) -> None:
    h.send({"type": "identify", "userId": "u", "traits": {"plan": "free", "city": "Lyon"},
            "timestamp": iso(T0 + timedelta(minutes=5))})  # fmt: skip
    # Arrives later but happened earlier: does not overwrite the newer value.
    h.send({"type": "identify", "userId": "u", "traits": {"plan": "trial"},
            "timestamp": iso(T0)})  # fmt: skip
    h.send(track("lead.captured", {"form_id": "f", "$set_once": {"source": "ad", "plan": "x"},
                                   "$unset": ["city"]}, userId="u",
                 timestamp=iso(T0 + timedelta(minutes=6))))  # fmt: skip
    h.send(track("lead.captured", {"form_id": "f", "$set_once": {"source": "other"}},
                 userId="u", timestamp=iso(T0 + timedelta(minutes=7))))  # fmt: skip
    h.process()
    assert h.by("user_id", "u").traits == {"plan": "free", "source": "ad"}


def test_sessions_explicit_end_and_synthesised_end(h: Harness) -> None:
    h.send(track("session.started", {"entry_point": "direct"}, anonymousId="a", context=CTX))
    h.send(track("session.heartbeat", {"active_ms": 50_000}, anonymousId="a", context=CTX),
           advance=timedelta(minutes=1))  # fmt: skip
    h.send(track("session.ended", {"duration_ms": 61_000, "reason": "quit"}, anonymousId="a",
                 context=CTX))  # fmt: skip
    ctx2 = {**CTX, "session_id": "s2"}
    h.send(track("session.started", {}, anonymousId="a", context=ctx2))
    h.process()
    profile = h.by("anonymous_id", "a")
    assert profile.worlds["paris"].sessions == 2
    assert profile.worlds["paris"].active_ms == 50_000
    assert list(profile.sessions) == ["s2"]
    # Nothing more from s2: half an hour of log time later the server ends it.
    h.tick(h.now + timedelta(minutes=29))
    h.process()
    assert list(h.by("anonymous_id", "a").sessions) == ["s2"]
    h.tick(h.now + timedelta(minutes=2))
    h.process()
    profile = h.by("anonymous_id", "a")
    assert profile.sessions == {}
    end = profile.recent[-1]
    assert end.name == "session.ended"
    assert end.decoded_properties()["synthetic"] is True
    assert h.processor.counters()["sessions_synthesised"] == 1


def test_timer_survives_a_restart(h: Harness) -> None:
    h.send(track("session.started", {}, anonymousId="b", context=CTX))
    h.process()
    h.processor = h.new_processor()
    h.tick(h.now + timedelta(hours=1))
    h.process()
    assert h.by("anonymous_id", "b").sessions == {}


def test_eye_gaze_is_minimised_without_gaze_consent(h: Harness) -> None:
    obj = {"object_id": "o1", "product": {"sku": "S1"}}
    gaze = {"obj": obj, "source": "eye", "dwell_ms": 3000, "fixations": 7}
    h.send(track("object.gaze_dwell", gaze, anonymousId="g", context=CTX))
    h.send(track("consent.updated", {"scopes": {"gaze": True}}, anonymousId="g"))
    h.send(track("object.gaze_dwell", gaze, anonymousId="g", context=CTX))
    h.send(track("object.gaze_dwell", {**gaze, "source": "head"}, anonymousId="h", context=CTX))
    h.process()
    g = h.by("anonymous_id", "g")
    first, second = [r for r in g.recent if r.name == "object.gaze_dwell"]
    assert "dwell_ms" not in first.decoded_properties()
    assert "fixations" not in first.decoded_properties()
    assert second.decoded_properties()["dwell_ms"] == 3000
    assert g.worlds["paris"].products["S1"].gaze_ms == 3000  # only the consented dwell
    assert g.counters["minimised"] == 1
    assert h.by("anonymous_id", "h").recent[0].decoded_properties()["dwell_ms"] == 3000


def test_analytics_refusal_suppresses_behaviour(h: Harness) -> None:
    h.send(track("consent.updated", {"scopes": {"analytics": False}}, anonymousId="n"))
    h.send(track("zone.entered", {"zone_id": "lobby"}, anonymousId="n", context=CTX))
    h.process()
    profile = h.by("anonymous_id", "n")
    assert profile.consent["analytics"].granted is False
    assert "paris" not in profile.worlds
    assert profile.counters["suppressed_no_consent"] == 1


def test_raw_telemetry_never_reaches_a_profile(h: Harness) -> None:
    h.send(track("telemetry.pose_batch", {"interval_ms": 100, "samples": [{"t": 0}]},
                 anonymousId="t"))  # fmt: skip
    h.process()
    assert h.store.profile_by_identity(h.workspace, "anonymous_id", "t") is None
    assert h.processor.counters()["refused_raw_telemetry"] == 1


def test_email_never_kept_in_recent_events(h: Harness) -> None:
    h.send(track("custom.form", {"email": "eve@example.com", "note": "eve@example.com"},
                 anonymousId="e"))  # fmt: skip
    h.process()
    (recent,) = h.by("anonymous_id", "e").recent
    assert "email" not in recent.decoded_properties()
    assert recent.decoded_properties()["note"].startswith("sha256:")


def test_orders_and_revenue(h: Harness) -> None:
    h.send(track("Order Completed", {"order_id": "o1", "total": 129.5, "currency": "EUR",
                                     "products": [{"sku": "SNK", "price": 129.5}]},
                 userId="buyer", context=CTX))  # fmt: skip
    total = {"amount": "10.25", "currency": "EUR"}
    h.send(track("order.completed", {"order_id": "o2", "total": total,
                                     "items": [{"sku": "CAP", "qty": 1}]},
                 userId="buyer", context=CTX))  # fmt: skip
    h.process()
    paris = h.by("user_id", "buyer").worlds["paris"]
    assert paris.orders == 2
    assert paris.revenue == {"EUR": "139.75"}
    assert paris.products["CAP"].purchases == 1
