"""``make demo``: start the embedded server, send a showroom's worth of traffic, show what landed.

Run with ``python -m worldflow.demo [--port 8080] [--data-dir .worldflow] [--no-wait]``. The
traffic goes through the same public APIs a world would use: a Segment batch, single calls,
CloudEvents and the WebSocket stream, plus a few malformed events that end in the quarantine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# Fixed, local-only demo secrets so the printed curl examples work.
WRITE_KEY = "wk_demo_showroom"
ADMIN_TOKEN = "wat_demo_admin"  # noqa: S105
ZONES = ["lobby", "sneakers", "jackets", "checkout"]
PRODUCTS = {"sneakers": ["SNK-RUNNER", "SNK-TRAIL"], "jackets": ["JKT-RAIN", "JKT-DOWN"]}

console = Console()


def _request(
    url: str, body: Any = None, *, auth: str = "basic", content_type: str = "application/json"
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": content_type}
    if auth == "basic":
        headers["Authorization"] = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    else:
        headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
    req = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 - local URL
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def visit(avatar: int, rng: random.Random) -> list[dict[str, Any]]:
    """One avatar's visit to the Paris showroom, as Segment track calls."""
    user = f"avatar-{avatar}"
    context = {"world": {"id": "paris-showroom", "scene": "main"}, "platform": "webxr",
               "device_class": rng.choice(["hmd", "desktop", "mobile"])}  # fmt: skip

    def track(event: str, **properties: Any) -> dict[str, Any]:
        return {"type": "track", "event": event, "anonymousId": user, "context": context,
                "messageId": str(uuid.uuid4()), "properties": properties}  # fmt: skip

    calls = [track("session.started", entry_point=rng.choice(["direct", "portal", "campaign"]))]
    for zone in rng.sample(ZONES, k=rng.randint(2, 4)):
        calls.append(track("zone.entered", zone_id=zone, zone_type="showroom"))
        for sku in PRODUCTS.get(zone, []):
            obj = {"object_id": f"{zone}/{sku}", "product": {"sku": sku}}
            calls.append(track("object.gaze_dwell", obj=obj, source="head",
                               dwell_ms=rng.randint(300, 9000)))  # fmt: skip
            if rng.random() < 0.4:
                calls.append(track("product.tried_on", obj=obj, slot="feet",
                                   duration_ms=rng.randint(2000, 30000)))  # fmt: skip
        calls.append(track("zone.exited", zone_id=zone, dwell_ms=rng.randint(5000, 120000)))
    if rng.random() < 0.3:
        calls.append({"type": "track", "event": "Order Completed", "anonymousId": user,
                      "messageId": str(uuid.uuid4()), "context": context,
                      "properties": {"order_id": f"o-{avatar}", "revenue": 129.0,
                                     "currency": "EUR",
                                     "products": [{"product_id": "SNK-RUNNER", "price": 129.0,
                                                   "quantity": 1}]}})  # fmt: skip
    return calls


def send_traffic(url: str, avatars: int) -> dict[str, int]:
    rng = random.Random(7)
    sent = {"batches": 0, "events": 0, "malformed": 0}
    for avatar in range(avatars):
        calls = visit(avatar, rng)
        status, _ = _request(f"{url}/v1/batch", {"batch": calls})
        assert status == 200, status
        sent["batches"] += 1
        sent["events"] += len(calls)
        traits = {"plan": rng.choice(["free", "vip"])}
        identify = {"anonymousId": f"avatar-{avatar}", "userId": f"user-{avatar}", "traits": traits}
        _request(f"{url}/v1/identify", identify)
        sent["events"] += 1
    # A world server speaking CloudEvents.
    status, _ = _request(
        f"{url}/v1/cloudevents",
        [{"specversion": "1.0", "id": f"ce-{i}", "source": "/worlds/paris-showroom",
          "type": "io.worldflow.event.checked_in", "anonymousid": f"avatar-{i}",
          "data": {"event_id": "spring-launch", "stage": "main"}} for i in range(5)],
        content_type="application/cloudevents-batch+json",
    )  # fmt: skip
    sent["events"] += 5
    # Malformed input is quarantined, never silently dropped.
    status, answer = _request(f"{url}/v1/batch", {"batch": [
        {"type": "track", "event": "zone.entered", "anonymousId": "x",
         "properties": {"zone_id": 42}},
        {"type": "track", "event": "object.viewed", "properties": {"obj": {}}},
        {"type": "teleport", "anonymousId": "x"},
    ]})  # fmt: skip
    sent["malformed"] = len(answer.get("rejected", []))
    return sent


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:  # noqa: S310
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{"))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("WORLDFLOW_PORT", "8080")))
    parser.add_argument("--data-dir", default=os.environ.get("WORLDFLOW_DATA_DIR", ".worldflow"))
    parser.add_argument("--avatars", type=int, default=40)
    parser.add_argument("--no-wait", action="store_true", help="stop after showing the results")
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    env = {**os.environ, "WORLDFLOW_WRITE_KEY": WRITE_KEY, "WORLDFLOW_ADMIN_TOKEN": ADMIN_TOKEN}
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    with console.status("starting the Worldflow server…"):
        server = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "worldflow", "serve", "--data-dir", args.data_dir,
             "--port", str(args.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                if _request(f"{url}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                err = server.stderr.read().decode() if server.stderr else ""
                console.print(f"[red]the server did not start:[/red]\n{err[-2000:]}")
                sys.exit(1)
            time.sleep(0.1)
    try:
        with console.status(f"sending a showroom's traffic from {args.avatars} avatars…"):
            sent = send_traffic(url, args.avatars)
        table = Table(title="What the server has now")
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_row("events sent", str(sent["events"]))
        for label, name in (
            ("accepted into the durable log", "worldflow_events_accepted_total"),
            ("duplicates recognised", "worldflow_events_duplicate_total"),
            ("quarantined (malformed)", "worldflow_events_quarantined_total"),
        ):
            table.add_row(label, f"{metric(url, name):.0f}")
        console.print(table)
        _, log = _request(f"{url}/v1/log?limit=1&after=2", auth="bearer")
        console.print("One canonical event from the log:")
        console.print_json(json.dumps(log["events"][0]["event"]))
        _, quarantine = _request(f"{url}/v1/quarantine?limit=3", auth="bearer")
        for item in quarantine["items"]:
            reasons = "; ".join(f"{e['field']}: {e['message']}" for e in item["errors"])
            console.print(f"[yellow]quarantined[/yellow] {item['code']}: {reasons}")
        bearer = f"-H 'Authorization: Bearer {ADMIN_TOKEN}'"
        console.print(
            f"\n[bold]Worldflow is running on {url}[/bold]\n"
            f"  API docs        {url}/docs\n"
            f"  metrics         {url}/metrics\n"
            f"  the log         curl {bearer} '{url}/v1/log?limit=5'\n"
            f"  quarantine      curl {bearer} {url}/v1/quarantine\n"
            f"  send an event   curl -u {WRITE_KEY}: {url}/v1/track -d "
            '\'{"event":"zone.entered","userId":"me","properties":{"zone_id":"lobby"}}\'\n'
            "Point any Segment or RudderStack SDK at this host with the write key above."
        )
        if not args.no_wait:
            console.print("Press Ctrl+C to stop.")
            server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(30)


if __name__ == "__main__":
    main()
