"""The decision API against `worldflow serve`: offers and placements applied, decisions for
real traffic sent with the Segment client, logged, capped, learnt from, and the fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from segment.analytics.client import Client as SegmentClient

from tests.conftest import ServerProcess
from tests.segments.test_api import wait_for

PLACEMENT = """
type: billboard
strategy: bandit
fallback: {type: text, text: Welcome to the showroom}
"""
OFFERS: dict[str, dict[str, Any]] = {
    "vip-lounge": {"placements": ["lobby-billboard"], "priority": 5,
                   "content": {"type": "text", "text": "The VIP lounge is open"},
                   "eligible": {"==": [{"var": "traits.plan"}, "vip"]}},
    "sneakers-10": {"placements": ["lobby-billboard"], "caps": {"per_day": 1},
                    "content": {"type": "image", "image_url": "https://cdn.example/s.png"}},
}  # fmt: skip


def test_decisions_for_real_traffic(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        run_it(server)
    finally:
        server.stop()


def run_it(server: ServerProcess) -> None:
    with server.admin() as admin:
        bad = admin.put("/v1/offers/x", json={"placements": ["lobby-billboard"],
                                              "content": {"type": "smell"}})  # fmt: skip
        assert bad.status_code == 422
        assert bad.json()["message"].startswith("content.type: 'smell' is not one of text")
        put = admin.put("/v1/placements/lobby-billboard", content=PLACEMENT,
                        headers={"Content-Type": "application/yaml"})  # fmt: skip
        assert put.json()["version"] == 1
        for key, document in OFFERS.items():
            assert admin.put(f"/v1/offers/{key}", json=document).status_code == 200
        for path in ("/v1/placements/lobby-billboard", *(f"/v1/offers/{k}" for k in OFFERS)):
            wait_for(lambda p=path: admin.get(p).json()["status"]["state"] == "active")
        # Segments and scores are still applied beside offers and placements (which are not
        # checked as segments or scores).
        segment = {"condition": {"==": [{"var": "traits.plan"}, "vip"]}}
        score = {"rules": [{"event": "object.viewed", "points": 1}]}
        for _ in range(2):  # new, then the same again
            assert admin.put("/v1/segments/vips", json=segment).status_code == 200
            assert admin.put("/v1/scores/views", json=score).status_code == 200
    client = SegmentClient(server.write_key, host=server.url, sync_mode=True)
    client.identify(user_id="ada", traits={"plan": "vip"})
    client.flush()
    server.wait_processed()
    with httpx.Client(base_url=server.url, auth=(server.write_key, ""), timeout=10) as http:

        def decide(**who: Any) -> dict[str, Any]:
            answer = http.post(
                "/v1/decide",
                json={"placement": "lobby-billboard", "context": {"world": "paris"}, **who},
            )
            assert answer.status_code == 200, answer.text
            body: dict[str, Any] = answer.json()
            return body

        vip = decide(userId="ada")
        assert (vip["offer"], vip["fallback"]) == ("vip-lounge", False)
        assert vip["content"] == {"type": "text", "text": "The VIP lounge is open",
                                  "creative_id": "vip-lounge"}  # fmt: skip
        first = decide(anonymousId="visitor-1")
        assert first["offer"] == "sneakers-10" and first["decision_id"].startswith("dc_")
        again = decide(anonymousId="visitor-1")  # capped at one a day: the fallback
        assert (again["offer"], again["fallback"], again["strategy"]) == (None, True, "fallback")
        assert again["content"] == {"type": "text", "text": "Welcome to the showroom"}
        missing = http.post("/v1/decide", json={"placement": "nowhere", "userId": "ada"})
        assert missing.status_code == 404 and missing.json()["code"] == "placement_not_found"
        assert http.post("/v1/decide", json={"placement": "lobby-billboard"}).status_code == 400
        for body, status, code, field in (
            (b'{"placement": ', 400, "invalid_json", "body"),
            (b'{"userId": "ada"}', 422, "invalid_field", "placement"),
            (b'{"placement": "no such key!", "userId": "ada"}', 422, "invalid_field", "placement"),
            (b'{"placement": "x", "userId": "ada", "colour": 1}', 422, "invalid_field", "colour"),
            (b'{"placement": "x", "userId": 7}', 422, "invalid_field", "userId"),
            (b'{"placement": "x", "userId": "ada", "context": []}', 422, "invalid_field",
             "context"),
        ):  # fmt: skip
            bad = http.post("/v1/decide", content=body)
            assert (bad.status_code, bad.json()["code"]) == (status, code), bad.text
            assert field in bad.json()["message"], bad.text
        too_long = http.post("/v1/decide", json={"placement": "x", "userId": "a" * 201})
        assert too_long.status_code == 422 and too_long.json()["message"].startswith("userId")
        assert httpx.post(f"{server.url}/v1/decide", json={"placement": "lobby-billboard",
                          "userId": "ada"}).status_code == 401  # fmt: skip
        # The decisions are in the log; the impression and the interaction teach the bandit.
        served = wait_for(
            lambda: [
                e
                for e in (x["event"] for x in server.log_events())
                if e.get("name") == "decision.served"
                and e["properties"]["decision_id"] == first["decision_id"]
            ]
        )
        assert served[0]["properties"]["variant"] == "sneakers-10"
        seen = {"placement_id": "lobby-billboard", "decision_id": first["decision_id"],
                "creative_id": "sneakers-10"}  # fmt: skip
        client.track(anonymous_id="visitor-1", event="content.impression", properties=seen)
        client.track(anonymous_id="visitor-1", event="content.interacted",
                     properties={**seen, "action": "select"})  # fmt: skip
        client.flush()
        with server.admin() as admin:
            evidence = wait_for(
                lambda: (
                    (p := admin.get("/v1/placements/lobby-billboard").json())["evidence"]
                    and any(e["interactions"] for e in p["evidence"])
                    and p["evidence"]
                )
            )
            metrics = admin.get("/metrics").text
        assert {"arm": "", "offer": "sneakers-10", "impressions": 1, "interactions": 1} in evidence
        assert 'worldflow_decisions_total{strategy="fallback"}' in metrics
    recommend(server, client)


def recommend(server: ServerProcess, client: SegmentClient) -> None:
    """A recommend placement: people who view runners view trail shoes too, so someone who
    viewed runners is shown the trail shoes' offer, learnt from the log as it arrives."""

    def view(who: str, sku: str) -> None:
        client.track(anonymous_id=who, event="object.viewed", properties={
            "obj": {"object_id": f"shelf/{sku}", "product": {"sku": sku}}})  # fmt: skip

    for n in range(3):
        view(f"runner-{n}", "RUNNER")
        view(f"runner-{n}", "TRAIL")
        view(f"coat-{n}", "PARKA")
        view(f"coat-{n}", "SCARF")
    view("grace", "RUNNER")
    client.flush()
    shelf = {"type": "shelf", "strategy": "recommend"}
    with server.admin() as admin:
        assert admin.put("/v1/placements/shelf", json=shelf).status_code == 200
        for key, item in (("scarves", "SCARF"), ("trail-shoes", "TRAIL")):
            offer = {"placements": ["shelf"], "item": item, "content": {"type": "text",
                                                                        "text": key}}  # fmt: skip
            assert admin.put(f"/v1/offers/{key}", json=offer).status_code == 200
        wait_for(lambda: admin.get("/v1/offers/trail-shoes").json()["status"]["state"] == "active")
    server.wait_processed()
    with httpx.Client(base_url=server.url, auth=(server.write_key, ""), timeout=10) as http:
        chosen = wait_for(lambda: (d := http.post("/v1/decide", json={
            "placement": "shelf", "anonymousId": "grace"}).json())["offer"] == "trail-shoes"
            and d)  # fmt: skip
    assert chosen["strategy"] == "recommend"
