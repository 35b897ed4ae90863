"""The traffic simulator: its world model, determinism, realism, and the real server's verdict."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer

from tests.conftest import WRITE_KEY, ServerProcess
from worldflow.events.catalogue import Catalogue
from worldflow.simulate import (
    PERSONAS,
    Simulation,
    SimulationReport,
    WorldModel,
    load_world_model,
    run,
    simulate_command,
)

START = datetime(2025, 5, 1, 18, 0, tzinfo=UTC)
Message = dict[str, Any]


@pytest.fixture(scope="module")
def model() -> WorldModel:
    return load_world_model()


@pytest.fixture(scope="module")
def traffic(model: WorldModel) -> tuple[Simulation, list[Message]]:
    sim = Simulation(model, avatars=80, minutes=90, seed=11, start=START, malformed_rate=0.01)
    return sim, list(sim.messages())


def valid(sim: Simulation, messages: list[Message]) -> list[Message]:
    return [m for m in messages if m["messageId"] not in sim.malformed_ids]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- The world model -------------------------------------------------------------------------


def test_example_world_model(model: WorldModel) -> None:
    assert set(model.worlds) == {"paris-showroom", "neo-tokyo-store", "concert-hall"}
    spec = Catalogue.default().get("zone.entered")
    assert spec is not None
    zone_types = set(spec.fields["zone_type"].choices)
    products = [p for w in model.worlds.values() for p in w.products]
    assert 10 <= len(products) <= 20
    assert {"sneakers", "jackets", "bags", "accessories"} <= {p.category for p in products}
    for world in model.worlds.values():
        assert 4 <= len(world.zones) <= 6
        assert {z.zone_type for z in world.zones} <= zone_types
        for product in world.products:
            assert product.object_id == f"{world.scene}/{product.node}"
            assert product.zone in {z.id for z in world.zones}
    assert model.worlds["concert-hall"].events
    assert set(model.worlds["concert-hall"].platforms) == {"decentraland", "unity"}
    assert model.web_shop.id == "web-shop"
    assert set(model.personas) == set(PERSONAS)


def test_world_model_errors_name_the_problem(tmp_path: Path) -> None:
    text = Path("examples/worlds.yaml").read_text()
    bad = tmp_path / "worlds.yaml"
    bad.write_text(text.replace("zone_type: stage", "zone_type: arena"))
    with pytest.raises(ValueError, match="main-stage has unknown type 'arena'"):
        load_world_model(bad)
    bad.write_text(text.replace("node: bag-atelier/shelf/sling", "node: attic/sling"))
    with pytest.raises(ValueError, match="BAG-SLING-BLK is not in a zone"):
        load_world_model(bad)


# --- Determinism and time --------------------------------------------------------------------


def test_same_seed_same_traffic(
    model: WorldModel, traffic: tuple[Simulation, list[Message]]
) -> None:
    sim, messages = traffic
    again = Simulation(model, avatars=80, minutes=90, seed=11, start=START, malformed_rate=0.01)
    assert list(again.messages()) == messages
    assert again.malformed_ids == sim.malformed_ids
    other = Simulation(model, avatars=80, minutes=90, seed=12, start=START, malformed_rate=0.01)
    assert list(other.messages()) != messages


def test_later_run_same_people_new_message_ids(model: WorldModel) -> None:
    """A rerun with the same seed is the same visitors again, not a wall of duplicates."""

    def traffic_from(start: datetime) -> list[Message]:
        return list(Simulation(model, 10, 30, seed=3, start=start, malformed_rate=0).messages())

    first, later = traffic_from(START), traffic_from(START + timedelta(days=1))
    names = [m.get("event") or m["type"] for m in first]
    assert names == [m.get("event") or m["type"] for m in later]
    assert [m["anonymousId"] for m in first] == [m["anonymousId"] for m in later]
    assert not {m["messageId"] for m in first} & {m["messageId"] for m in later}


def test_messages_in_time_order_within_the_window(
    traffic: tuple[Simulation, list[Message]],
) -> None:
    _, messages = traffic
    stamps = [m["timestamp"] for m in messages]
    assert stamps == sorted(stamps)
    assert all(s.endswith("Z") for s in stamps)
    times = [datetime.fromisoformat(s) for s in stamps]
    assert times[0] >= START and times[-1] <= START + timedelta(minutes=90)
    assert times[-1] - times[0] > timedelta(minutes=60)  # spread over the window


def test_default_window_ends_now(model: WorldModel) -> None:
    messages = list(Simulation(model, 5, 10, seed=1).messages())
    last = datetime.fromisoformat(messages[-1]["timestamp"])
    assert timedelta(0) <= datetime.now(UTC) - last < timedelta(minutes=10)


# --- Conventions and realism -----------------------------------------------------------------


def test_context_convention(model: WorldModel, traffic: tuple[Simulation, list[Message]]) -> None:
    sim, messages = traffic
    worlds = {w.id: w for w in model.worlds.values()}
    for m in valid(sim, messages):
        assert m["type"] in {"track", "identify", "page", "alias"}
        assert m.get("anonymousId") or m.get("userId")
        ctx = m["context"]
        world = ctx["world"]
        assert set(world) == {"id", "scene", "scene_version"}
        assert ctx["session_id"] and ctx["device"]["id"] and ctx["timezone"] and ctx["locale"]
        if world["id"] == "web-shop":
            assert ctx["platform"] == "web" and ctx["device_class"] in {"desktop", "mobile"}
        else:
            assert m["type"] != "page"
            assert ctx["platform"] in worlds[world["id"]].platforms
            assert world["scene"] == worlds[world["id"]].scene
            assert ctx["device_class"] in {"hmd", "desktop", "mobile", "console"}
        if m.get("event") in ("zone.entered", "zone.exited"):
            assert ctx["zone"] == m["properties"]["zone_id"]


def test_personas_behave_differently(traffic: tuple[Simulation, list[Message]]) -> None:
    sim, messages = traffic
    assert set(sim.persons_by_persona()) == set(PERSONAS)
    assert sum(sim.messages_by_persona.values()) == len(messages)
    device_persona = {d.anonymous_id: p.persona for p in sim.people for d in p.devices.values()}
    events: dict[str, list[str]] = defaultdict(list)
    for m in valid(sim, messages):
        events[device_persona[m["anonymousId"]]].append(m.get("event") or m["type"])
    per_person = {
        persona: {name: events[persona].count(name) / count for name in set(events[persona])}
        for persona, count in sim.persons_by_persona().items()
    }
    assert per_person["buyer"].get("order.completed", 0) > 0.3
    assert per_person["browser"].get("order.completed", 0) < per_person["buyer"]["order.completed"]
    assert per_person["enthusiast"]["agent.conversation_started"] > per_person["browser"].get(
        "agent.conversation_started", 0
    )
    assert per_person["enthusiast"]["product.tried_on"] > per_person["browser"].get(
        "product.tried_on", 0
    )
    assert per_person["event_goer"]["event.registered"] > 0.5
    for name in ("event.checked_in", "event.reaction", "event.left"):
        assert name in per_person["event_goer"], name
    assert "page" in per_person["buyer"] or "page" in per_person["browser"]


def test_commerce_and_events_are_consistent(traffic: tuple[Simulation, list[Message]]) -> None:
    sim, messages = traffic
    ok = valid(sim, messages)
    orders = [m["properties"] for m in ok if m.get("event") == "order.completed"]
    assert orders
    for order in orders:
        total = sum(float(i["money"]["amount"]) * i["qty"] for i in order["items"])
        assert order["total"] == {"amount": f"{total:.2f}", "currency": "EUR"}
    checkouts = {m["properties"]["order_id"] for m in ok if m.get("event") == "checkout.started"}
    assert {o["order_id"] for o in orders} <= checkouts
    stage_events = [m for m in ok if m.get("event", "").startswith("event.")]
    assert {m["context"]["world"]["id"] for m in stage_events} <= {"concert-hall", "web-shop"}
    for m in ok:
        if m.get("event") == "event.checked_in":
            assert m["context"]["platform"] in {"decentraland", "unity"}
            assert m["context"]["zone"] == m["properties"]["stage"] == "main-stage"


def test_consent_governs_eye_gaze(traffic: tuple[Simulation, list[Message]]) -> None:
    sim, messages = traffic
    scopes: dict[str, dict[str, bool]] = {}
    sources: list[str] = []
    for m in valid(sim, messages):
        if m.get("event") == "consent.updated":
            scopes[m["anonymousId"]] = m["properties"]["scopes"]
        elif m.get("event") == "object.gaze_dwell":
            sources.append(m["properties"]["source"])
            if m["properties"]["source"] == "eye":
                assert scopes[m["anonymousId"]]["gaze"] is True
                assert m["context"]["device_class"] == "hmd"
    assert sources.count("head") > len(sources) / 2
    granted = [s for s in scopes.values() if s["analytics"]]
    assert len(granted) > 0.85 * len(scopes)
    assert any(not s["marketing_contact"] for s in scopes.values())


def test_identity_linking(traffic: tuple[Simulation, list[Message]]) -> None:
    sim, messages = traffic
    ok = valid(sim, messages)
    anonymous_ids_of_user: dict[str, set[str]] = defaultdict(set)
    for m in ok:
        if m.get("userId") and m.get("anonymousId"):
            anonymous_ids_of_user[m["userId"]].add(m["anonymousId"])
    assert any(len(ids) >= 2 for ids in anonymous_ids_of_user.values())
    # identity.linked email hashes are those of the identified addresses, on several devices.
    emails = {sha256(m["traits"]["email"].strip().lower()) for m in ok if m["type"] == "identify"}
    linked: dict[str, set[str]] = defaultdict(set)
    for m in ok:
        if m.get("event") == "identity.linked" and m["properties"]["id_type"] == "email":
            linked[m["properties"]["id_hash"]].add(m["anonymousId"])
    assert set(linked) >= emails
    assert any(len(devices) >= 2 for devices in linked.values())
    wallets = {m["properties"]["address_hash"] for m in ok if m.get("event") == "wallet.connected"}
    wallet_links = {
        m["properties"]["id_hash"]
        for m in ok
        if m.get("event") == "identity.linked" and m["properties"]["id_type"] == "wallet"
    }
    assert wallets and wallets == wallet_links
    assert any(m["type"] == "alias" and m["previousId"] == m["anonymousId"] for m in ok)
    # A device keeps its anonymousId across sessions; each person has one per platform.
    sessions_of: dict[str, set[str]] = defaultdict(set)
    for m in ok:
        sessions_of[m["anonymousId"]].add(m["context"]["session_id"])
    assert any(len(s) >= 2 for s in sessions_of.values())
    for person in sim.people:
        ids = [d.anonymous_id for d in person.devices.values()]
        assert len(set(ids)) == len(ids) == len(set(person.platforms.values()) | {"web"})


def test_some_sessions_end_without_session_ended(
    traffic: tuple[Simulation, list[Message]],
) -> None:
    sim, messages = traffic
    seen: dict[str, set[str]] = defaultdict(set)
    for m in valid(sim, messages):
        if m.get("event", "").startswith("session."):
            seen[m["context"]["session_id"]].add(m["event"])
    started = [s for s in seen.values() if "session.started" in s]
    assert any("session.ended" not in s for s in started)
    assert sum("session.ended" in s for s in started) > len(started) / 2
    assert any("session.heartbeat" in s for s in started)


def test_malformed_rate(model: WorldModel, traffic: tuple[Simulation, list[Message]]) -> None:
    sim, messages = traffic
    assert 0.003 * len(messages) < len(sim.malformed_ids) < 0.03 * len(messages)
    clean = Simulation(model, avatars=80, minutes=90, seed=11, start=START, malformed_rate=0)
    assert list(clean.messages()) == valid(sim, messages)  # the noise leaves the traffic alone
    assert clean.malformed_ids == set()


# --- Against the real server -----------------------------------------------------------------


def test_server_accepts_every_valid_message_and_quarantines_the_rest(
    server: ServerProcess, model: WorldModel
) -> None:
    progress: list[SimulationReport] = []
    report = run(server.url, WRITE_KEY, 40, 60, seed=5, start=START, malformed_rate=0.01,
                 on_progress=progress.append, progress_every_s=0.05)  # fmt: skip
    sim = Simulation(model, 40, 60, seed=5, start=START, malformed_rate=0.01)
    messages = list(sim.messages())
    assert sim.malformed_ids
    assert report.messages == report.sent == len(messages)
    assert report.malformed == report.rejected == len(sim.malformed_ids)
    assert report.accepted == len(messages) - len(sim.malformed_ids)
    assert (report.failed, report.duplicates, report.malformed_accepted) == (0, 0, 0)
    assert report.unexpected_rejections == []
    assert report.persons == 40 and sum(report.persons_by_persona.values()) == 40
    assert progress and progress[-1].done
    logged = [e["event"] for e in server.log_events()]
    assert {e["message_id"] for e in logged} == {m["messageId"] for m in valid(sim, messages)}
    assert not any(e.get("custom") for e in logged if e["type"] == "track")
    assert {q["message_id"] for q in server.quarantine()} == sim.malformed_ids


def test_rate_limit_and_command_summary(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    report = simulate_command(server.url, WRITE_KEY, avatars=6, minutes=30, seed=2, rate=400)
    assert report.sent > 50
    assert report.elapsed_s >= 0.9 * report.sent / 400
    out = capsys.readouterr().out
    assert "Simulated 6 visitors over 30 minutes" in out
    assert re.search(rf"accepted\s+│\s+{report.accepted}\s", out), out
    with pytest.raises(typer.Exit):  # the wrong key is found before any traffic is generated
        simulate_command(server.url, "wk_wrong", avatars=2, minutes=5, seed=2, rate=None)
    assert "stopped: HTTP 401 invalid_write_key" in capsys.readouterr().out


def test_run_stops_when_the_server_goes_away(server: ServerProcess) -> None:
    reports: list[SimulationReport] = []

    def stop_server_midway(report: SimulationReport) -> None:
        reports.append(report)
        if server.proc is not None and report.accepted:
            server.stop()

    report = run(server.url, WRITE_KEY, 200, 120, seed=4, on_progress=stop_server_midway,
                 progress_every_s=0.05)  # fmt: skip
    assert report.error is not None and report.done
    assert 0 < report.accepted < report.messages < 8000  # it stopped early, not at the end
    assert report.failed > 0
