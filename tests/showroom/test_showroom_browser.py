"""The browser showroom end to end, in headless Chromium: a visitor accepts the consent
banner, walks with the keyboard to the sneaker wall, looks at the sneakers, walks back to the
entrance and turns to the lobby billboard, which by then shows the offer a journey pushed.

Everything is real: `worldflow serve` serving /showroom/ (the page, the SDK's modules and
three.js from sdk/js/node_modules), the example workspace's showroom definitions applied with
`worldflow apply`, the scene registered from examples/showroom/showroom.gltf, the SDK's
events over the push channel, the processor's segment, the journey's in-world action pushed
to the page. The screenshot is kept in tests/artifacts/showroom.png.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.collect.test_browser_client import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from tests.conftest import ServerProcess, need
from tests.sdk.test_js_sdk import ensure_node_modules
from worldflow.segments.apply import apply

pytestmark = [pytest.mark.browser, pytest.mark.node]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WORLD = "paris-showroom"
TURN_TOLERANCE = 0.2  # radians: a frame of a slow software renderer turns about 0.15
ARRIVED_M = 0.4
OFFER = "Sneaker week"


@pytest.fixture(scope="module")
def showroom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    need("Chromium", Path(CHROMIUM).exists(), "apt-get install chromium")
    ensure_node_modules()  # three.js, served at /showroom/three/
    srv = ServerProcess(tmp_path_factory.mktemp("showroom") / "data").start()
    try:
        answers = apply(EXAMPLES / "segments" / "showroom.yaml", srv.url, srv.admin_token)
        assert {a["key"] for a in answers} >= {"lobby-billboard", "sneaker-lookers",
                                               "showroom-sneakers"}  # fmt: skip
        with srv.admin() as admin:
            gltf = (EXAMPLES / "showroom" / "showroom.gltf").read_bytes()
            scene = admin.put(f"/v1/scenes/paris-flagship?world={WORLD}", content=gltf)
            assert scene.status_code == 200, scene.text
            assert (scene.json()["products"], scene.json()["placements"]) == (5, 2)
            source = admin.post("/v1/sources", json={"name": "showroom", "world": WORLD})
            assert source.status_code == 201, source.text
            deadline = time.monotonic() + 30
            while admin.get("/v1/journeys/showroom-sneakers").json()["status"]["state"] != (
                "active"
            ):
                assert time.monotonic() < deadline, "the journey did not activate"
                time.sleep(0.1)
        yield srv, source.json()["write_key"]
    finally:
        srv.stop()


def test_the_showroom_is_served_with_its_modules(showroom: tuple[ServerProcess, str]) -> None:
    srv, _ = showroom
    for path, kind in (("/showroom/", "text/html"), ("/showroom/showroom.js", "javascript"),
                       ("/showroom/sdk/index.js", "javascript"),
                       ("/showroom/three/build/three.module.js", "javascript"),
                       ("/showroom/showroom.gltf", "")):  # fmt: skip
        answer = httpx.get(srv.url + path, timeout=10)
        assert answer.status_code == 200, path
        assert kind in answer.headers["content-type"], (path, answer.headers["content-type"])
    moved = httpx.get(srv.url + "/showroom?key=k", timeout=10)
    assert (moved.status_code, moved.headers["location"]) == (308, "/showroom/?key=k")
    assert httpx.get(srv.url + "/showroom/nothing.js", timeout=10).status_code == 404


class Visitor:
    """Drives the page with the keyboard, as a person would: turns with A/D, walks with W,
    reading where the avatar is after each press."""

    def __init__(self, page: Any) -> None:
        self.page = page

    def pose(self) -> dict[str, float]:
        pose: dict[str, float] = self.page.evaluate("({...window.showroom.avatar})")
        return pose

    def hold(self, key: str, seconds: float) -> None:
        self.page.keyboard.down(key)
        time.sleep(seconds)
        self.page.keyboard.up(key)

    def turn_to(self, x: float, z: float) -> None:
        for _ in range(80):
            pose = self.pose()
            # yaw 0 faces −z; yaw grows turning right (towards +x)
            want = math.atan2(x - pose["x"], -(z - pose["z"]))
            diff = (want - pose["yaw"] + math.pi) % (2 * math.pi) - math.pi
            if abs(diff) < TURN_TOLERANCE:
                return
            self.hold("d" if diff > 0 else "a", min(abs(diff) / 1.8, 0.25) * 0.8)
        raise AssertionError(f"could not turn towards ({x}, {z}) from {self.pose()}")

    def walk_to(self, x: float, z: float) -> None:
        for _ in range(80):
            pose = self.pose()
            distance = math.hypot(x - pose["x"], z - pose["z"])
            if distance < ARRIVED_M:
                return
            self.turn_to(x, z)
            self.hold("w", min(distance / 2.2, 0.6) * 0.8)
        raise AssertionError(f"could not walk to ({x}, {z}) from {self.pose()}")

    def state(self, expression: str) -> Any:
        return self.page.evaluate(f"window.showroom.{expression}")


def wait_until(check: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_visitor_looks_at_sneakers_and_the_billboard_changes(
    showroom: tuple[ServerProcess, str],
) -> None:
    from playwright.sync_api import sync_playwright

    srv, key = showroom
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 800, "height": 450})
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.goto(f"{srv.url}/showroom/?key={key}&world={WORLD}")
            page.wait_for_function("window.showroom && (window.showroom.ready || "
                                   "window.showroom.errors.length)", timeout=60_000)  # fmt: skip
            visitor = Visitor(page)
            assert visitor.state("errors") == []
            assert sorted(z["id"] for z in visitor.state("zones")) == [
                "entrance", "jacket-gallery", "sneaker-wall"]  # fmt: skip

            # Nothing is collected before the visitor chooses; then the placements show what
            # /v1/decide chose for them.
            assert page.is_visible("#consent")
            assert visitor.state("wf.stats().sent") == 0
            page.click("#accept")
            wait_until(lambda: (visitor.state("placements['lobby-billboard']") or {}).get(
                "source") == "decision", "the billboard's decision")  # fmt: skip
            first = visitor.state("placements['lobby-billboard'].content")
            assert first.get("title") != OFFER
            anonymous_id = visitor.state("wf.anonymousId")

            # To the sneaker wall, facing the Trail Moss on its plinth; look for three seconds.
            visitor.walk_to(-6, -3.4)
            visitor.turn_to(-6, -5)
            assert visitor.state("zone") == "sneaker-wall"
            time.sleep(3)
            # Back to the entrance, facing the billboard: the sneakers are out of view (a
            # visit ends a second later and its object.viewed events go out).
            visitor.walk_to(0, 4)
            visitor.turn_to(0, -6.9)
            assert visitor.state("zone") == "entrance"

            shown = wait_until(
                lambda: (s := visitor.state("placements['lobby-billboard']")) and
                s["source"] == "action" and s,
                "the journey's in-world action on the billboard", timeout=45,
            )  # fmt: skip
            assert shown["content"]["title"] == OFFER
            assert shown["content"]["creative_id"] == "sneakers-10"  # the offer the step names
            assert shown["actionId"].startswith("iw_")
            billboard = page.text_content('#placements li[data-placement="lobby-billboard"]')
            assert billboard is not None and OFFER in billboard
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "showroom.png"))
            canvas = page.locator("#view canvas").bounding_box()
            assert canvas is not None and canvas["width"] == 800
        finally:
            browser.close()
    assert problems == []
    assert_the_server_saw_it(srv, anonymous_id, shown["actionId"])


def assert_the_server_saw_it(srv: ServerProcess, anonymous_id: str, action_id: str) -> None:
    with srv.admin() as admin:
        profile = admin.get(f"/v1/profiles/by/anonymous_id/{anonymous_id}").json()
        # The events arrived: the zones walked through, the sneakers viewed (enriched with the
        # registry's product), the decisions served and shown.
        events = [e["event"] for e in srv.log_events()
                  if e["event"].get("anonymous_id") == anonymous_id]  # fmt: skip
        names = [e["name"] for e in events]
        for name in ("consent.updated", "session.started", "zone.entered", "object.viewed",
                     "decision.served", "content.impression"):  # fmt: skip
            assert name in names, (name, names)
        viewed = [e for e in events if e["name"] == "object.viewed"]
        skus = {e["properties"]["obj"].get("product", {}).get("sku") for e in viewed}
        assert "SNK-TRAIL-GRN" in skus, viewed
        # The profile entered the segment; the journey decided the in-world action, which the
        # page acknowledged.
        assert "sneaker-lookers" in profile["segments"], profile["segments"]
        delivery = admin.get(f"/v1/deliveries/{action_id}").json()
        assert (delivery["channel"], delivery["state"]) == ("inworld", "delivered"), delivery
        assert delivery["payload"]["journey"] == "showroom-sneakers"
        assert delivery["payload"]["profile"]["anonymous_id"] == anonymous_id
        stats = admin.get("/v1/journeys/showroom-sneakers/stats").json()
        assert stats["versions"][0]["entered"] >= 1, stats
        assert stats["versions"][0]["deliveries"]["inworld"]["delivered"] >= 1, stats
