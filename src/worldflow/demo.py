"""``make demo``: the embedded server, two hours of simulated visitors across the example worlds,
and what Worldflow made of them: one profile per person, stitched across worlds and devices.

Run with ``python -m worldflow.demo [--avatars 1000] [--minutes 120] [--port 8080]
[--data-dir .worldflow] [--no-wait]``. The traffic goes through the public Segment-compatible
API, exactly as a world's SDK would send it (see ``worldflow.simulate``). The journeys' webhooks
go to a local CRM that verifies their signatures, their e-mails to a local mail sink (an SMTP
server on a loopback port, set as the workspace's ``smtp`` settings).
"""

from __future__ import annotations

import argparse
import base64
import email
import email.policy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from worldflow.metrics import latency_quantiles
from worldflow.segments.apply import apply
from worldflow.simulate import DEFAULT_MODEL, SimulationReport, run

if TYPE_CHECKING:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP, Envelope, Session

# Fixed, local-only demo secrets so the printed curl examples work.
WRITE_KEY = "wk_demo_showroom"
ADMIN_TOKEN = "wat_demo_admin"  # noqa: S105

DEMO_SECRET = "whsec_" + base64.b64encode(b"worldflow-demo-crm-secret-32byte").decode()

console = Console()
SEGMENTS = DEFAULT_MODEL.parent / "segments"  # the example workspace's segments and scores
SHOWROOM = DEFAULT_MODEL.parent / "showroom"  # the browser showroom's page and scene
SHOWROOM_SCENE = "paris-flagship"
SHOWROOM_WORLD = "paris-showroom"


def _get(url: str, *, admin: bool = True) -> Any:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if admin else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - local URL
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
        body = resp.read()
    return json.loads(body) if resp.headers.get_content_type() == "application/json" else body


def _send(url: str, body: dict[str, Any], method: str = "PUT") -> Any:
    request = urllib.request.Request(  # noqa: S310 - local URL
        url, data=json.dumps(body).encode(), method=method,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
        return json.loads(resp.read())


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{"))  # fmt: skip


class Receiver:
    """The demo's CRM: a local endpoint that verifies each webhook's Standard Webhooks signature
    with the public library, and keeps when each webhook id first arrived, with its data."""

    def __init__(self, secret: str = DEMO_SECRET) -> None:
        self.secret = secret
        self.arrived: dict[str, tuple[float, Any]] = {}  # webhook id → (time, data)
        self.rejected = 0  # a body that does not verify
        self.truncated = 0  # a request cut short (its sender stopped): sent again later
        hook, receiver = Webhook(secret), self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                if len(body) < length:  # the sender went away mid-request
                    receiver.truncated += 1
                    return
                try:
                    hook.verify(body, dict(self.headers))
                except WebhookVerificationError:
                    receiver.rejected += 1
                    self.send_response(401)
                else:
                    data = json.loads(body)["data"]
                    receiver.arrived.setdefault(self.headers["webhook-id"], (time.time(), data))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks"

    @property
    def received(self) -> int:
        return len(self.arrived)


class MailSink:
    """The demo's mail server: an SMTP server (aiosmtpd) on a free loopback port that keeps
    each e-mail the dispatcher sends it once per Message-ID (delivery is at least once): to
    whom, its subject and the first line of its text."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller  # a dev dependency, as make demo installs

        self.arrived: dict[str, tuple[str, str, str]] = {}  # Message-ID → (to, subject, line)
        self._lock = threading.Lock()
        with socket.socket() as probe:  # aiosmtpd needs the port before it listens
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.controller: Controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    @property
    def smtp(self) -> dict[str, Any]:
        """The workspace's ``smtp`` settings that send to this sink (clear text: loopback)."""
        return {"host": "127.0.0.1", "port": self.port, "security": "none",
                "from": "Worldflow showroom <journeys@showroom.example>"}  # fmt: skip

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        text = ""
        if isinstance(message, EmailMessage):
            body = message.get_body(("plain",))
            text = str(body.get_content()) if isinstance(body, EmailMessage) else ""
        line = next((line.strip() for line in text.splitlines() if line.strip()), "")
        with self._lock:
            self.arrived.setdefault(str(message["Message-ID"]), (
                ", ".join(envelope.rcpt_tos), str(message["Subject"] or ""), line))  # fmt: skip
        return "250 OK: received by the demo's mail sink"

    @property
    def received(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return list(self.arrived.values())

    def stop(self) -> None:
        self.controller.stop()


def _mail_sink() -> MailSink | None:
    try:
        return MailSink()
    except ImportError:
        console.print("[yellow]no mail sink: the journeys' e-mails are not sent (pip install "
                      "aiosmtpd, or make demo, installs it)[/yellow]")  # fmt: skip
        return None


class Dashboard:
    """The live view: what the simulator sent and what the server did with it."""

    def __init__(self, url: str, receiver: Receiver | None = None,
                 mail: MailSink | None = None) -> None:  # fmt: skip
        self.url = url
        self.receiver = receiver
        self.mail = mail
        self.report = SimulationReport()
        self.status: dict[str, Any] = {}
        self.metrics = ""
        self.segments: list[dict[str, Any]] = []
        self.journeys: dict[str, dict[str, Any]] = {}  # key → its latest version's stats
        self.started = time.monotonic()

    def refresh(self) -> None:
        try:
            self.status = _get(f"{self.url}/v1/processor")
            self.metrics = _get(f"{self.url}/metrics", admin=False).decode()
            self.segments = _get(f"{self.url}/v1/segments")["segments"]
            for journey in _get(f"{self.url}/v1/journeys")["journeys"]:
                versions = _get(f"{self.url}/v1/journeys/{journey['key']}/stats")["versions"]
                self.journeys[journey["key"]] = {**journey, "stats": versions[-1] if versions
                                                 else {}}  # fmt: skip
        except (OSError, ValueError):
            pass  # the next refresh will do

    def waiting(self) -> bool:
        """Whether runs still wait in a timed step of the cart journey, or its webhooks or the
        journeys' e-mails have not all arrived."""
        stats = self.journeys.get("cart-rescue", {}).get("stats", {})
        sent = stats.get("actions", {}).get("webhook", 0)
        mailed = sum(journey["stats"].get("actions", {}).get("email", 0)
                     for journey in self.journeys.values())  # fmt: skip
        return (bool(stats.get("at", {}).get("pause"))
                or (self.receiver is not None and self.receiver.received < sent)
                or (self.mail is not None and len(self.mail.received) < mailed))  # fmt: skip

    def render(self) -> Group:
        r = self.report
        partition = self.status.get("partitions", {}).get("0", {})
        counters = partition.get("counters", {})
        p99 = latency_quantiles(self.metrics, "/v1/batch", (0.99,))[0] if self.metrics else 0.0
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold cyan", justify="right")
        table.add_column()
        rows = [
            ("visitors", f"{r.persons:,}  " + ", ".join(
                f"{n} {persona}" for persona, n in sorted(r.persons_by_persona.items()))),
            ("events sent", f"{r.sent:,}  ({r.rate:,.0f}/s)"),
            ("accepted", f"{_metric(self.metrics, 'worldflow_events_accepted_total'):,.0f}"),
            ("quarantined", f"{_metric(self.metrics, 'worldflow_events_quarantined_total'):,.0f}"
                            f"  (malformed on purpose: {r.malformed})"),
            ("ingest p99", f"{p99:.1f} ms per batch"),
            ("processed", f"{counters.get('events', 0):,} events, lag {partition.get('lag', 0):,}"),
            ("profiles", f"{self.status.get('profiles', 0):,}"),
            ("merges", f"{counters.get('merges', 0):,} (devices and worlds stitched into one "
                       f"person; {counters.get('merges_refused_unique', 0)} refused)"),
            ("sessions", f"{counters.get('sessions_synthesised', 0):,} missing ends synthesised"),
            ("privacy", f"{counters.get('minimised', 0):,} eye-gaze events minimised, "
                        f"{counters.get('suppressed_no_consent', 0):,} suppressed (no consent)"),
        ]  # fmt: skip
        for label, value in rows:
            table.add_row(label, value)
        segments = Table(box=None, pad_edge=False)
        segments.add_column("segment", style="bold cyan")
        segments.add_column("people", justify="right")
        segments.add_column("what it means")
        for segment in self.segments:
            about = segment["definition"].get("description") or segment["definition"].get("name")
            segments.add_row(segment["key"], f"{segment['size']:,}", about or "")
        title = (f"segments, live ({counters.get('segment_transitions', 0):,} entries and exits,"
                 " each an event in the log)")  # fmt: skip
        journeys = Table(box=None, pad_edge=False)
        for column in ("journey", "entered", "inside now", "converted", "actions decided"):
            journeys.add_column(column, style="bold cyan" if column == "journey" else None,
                                justify="left" if column == "journey" else "right")  # fmt: skip
        for key, journey in self.journeys.items():
            stats = journey["stats"]
            actions = ", ".join(f"{n:,} {channel}" for channel, n in
                                sorted(stats.get("actions", {}).items())) or "-"  # fmt: skip
            journeys.add_row(key, f"{stats.get('entered', 0):,}",
                             f"{sum(stats.get('at', {}).values()):,}",
                             f"{stats.get('converted', 0):,}", actions)  # fmt: skip
        received = self.receiver.received if self.receiver else 0
        mails = len(self.mail.received) if self.mail else 0
        about = (f"journeys, live · {received:,} signed webhooks at the CRM, {mails:,} "
                 f"e-mail{'' if mails == 1 else 's'} at the mail sink")  # fmt: skip
        return Group(
            Panel(table, title="Worldflow demo: two simulated hours across three worlds"),
            Panel(segments, title=title),
            Panel(journeys, title=about),
        )


def _start_server(args: argparse.Namespace, url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "WORLDFLOW_WRITE_KEY": WRITE_KEY,
        "WORLDFLOW_ADMIN_TOKEN": ADMIN_TOKEN,
        "WORLDFLOW_WEBHOOK_ALLOW": "127.0.0.1",
    }  # the demo's CRM listens on this machine
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    log = (Path(args.data_dir) / "demo-server.log").open("ab")
    server = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "worldflow", "serve", "--data-dir", args.data_dir,
         "--port", str(args.port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            _get(f"{url}/readyz", admin=False)
            return server
        except (OSError, urllib.error.HTTPError):
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            tail = (Path(args.data_dir) / "demo-server.log").read_text(errors="replace")[-2000:]
            console.print(f"[red]the server did not start:[/red]\n{tail}")
            sys.exit(1)
        time.sleep(0.1)


def _wait_processed(url: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = _get(f"{url}/v1/processor")
        if status["partitions"].get("0", {}).get("lag", 1) == 0 or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def _stitched_person(url: str) -> dict[str, Any] | None:
    """A profile that merged devices or worlds, to show what identity resolution did."""
    for plan in ("vip", "plus", "free"):
        found = _get(f"{url}/v1/profiles?trait=plan&value={plan}&limit=200")["profiles"]
        stitched = [p for p in found if p["merged_from"] and len(p["stats"]["worlds"]) > 1]
        if stitched:
            best: dict[str, Any] = max(
                stitched, key=lambda p: (len(p["stats"]["worlds"]), len(p["merged_from"]))
            )
            return best
    return None


def _show_person(person: dict[str, Any]) -> None:
    table = Table(title=f"One person, one profile: {person['id']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    identities = "; ".join(f"{t}: {', '.join(v[:3])}" for t, v in person["identities"].items())
    table.add_row("identities", identities)
    table.add_row("merged from", ", ".join(person["merged_from"]))
    table.add_row("traits", json.dumps(person["traits"], ensure_ascii=False))
    for world, stats in person["stats"]["worlds"].items():
        zones = ", ".join(sorted(stats.get("zones", {}))) or "-"
        products = ", ".join(sorted(stats.get("products", {}))[:6]) or "-"
        sessions, orders = stats.get("sessions", 0), stats.get("orders", 0)
        table.add_row(
            f"in {world}",
            f"{sessions} sessions; zones {zones}; products {products}; orders {orders}",
        )
    consent = ", ".join(f"{k}={'yes' if v['granted'] else 'no'}"
                        for k, v in person["consent"].items())  # fmt: skip
    table.add_row("consent", consent or "not given yet")
    table.add_row("segments", ", ".join(person["segments"]) or "-")
    table.add_row("scores", ", ".join(f"{k} {v:g}" for k, v in person["scores"].items()) or "-")
    console.print(table)


def _show_mail(mail: MailSink, shown: int = 5) -> None:
    received = mail.received
    count = f"{len(received):,} e-mail{'' if len(received) == 1 else 's'}"
    console.print(f"\n[bold]{count} received by the demo's mail sink[/bold] "
                  f"(smtp://127.0.0.1:{mail.port})")  # fmt: skip
    for to, subject, line in received[:shown]:
        console.print(f"  [bold]{escape(subject)}[/bold] (to {escape(to)})\n    {escape(line)}")
    if len(received) > shown:
        console.print(f"  … and {len(received) - shown:,} more")


def _showroom(url: str, data_dir: Path) -> str | None:
    """Registers the browser showroom's scene and makes (once per data dir) a world's key for
    it; the address to open, or None when three.js is not installed."""
    request = urllib.request.Request(  # noqa: S310 - local URL
        f"{url}/v1/scenes/{SHOWROOM_SCENE}?world={SHOWROOM_WORLD}", method="PUT",
        data=(SHOWROOM / "showroom.gltf").read_bytes(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "model/gltf+json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
        scene = json.loads(resp.read())
    console.print(f"registered scene [bold]{SHOWROOM_SCENE}[/bold] version {scene['version']}: "
                  f"{scene['products']} products, {scene['zones']} zones, "
                  f"{scene['placements']} placements")  # fmt: skip
    try:
        _get(f"{url}/showroom/three/build/three.module.js", admin=False)
    except urllib.error.HTTPError:
        console.print("[yellow]the browser showroom needs three.js: run `npm ci` in sdk/js "
                      "(make demo does when npm is installed)[/yellow]")  # fmt: skip
        return None
    # A world's key is shown once when made: the demo keeps its own beside the data.
    saved = data_dir / "demo-showroom.key"
    known = {s["id"] for s in _get(f"{url}/v1/sources")["sources"]}
    if saved.exists():
        source_id, key = saved.read_text().split()
        if source_id in known:
            return f"{url}/showroom/?key={key}"
    made = _send(f"{url}/v1/sources", {"name": "browser showroom", "world": SHOWROOM_WORLD}, "POST")
    saved.write_text(f"{made['id']} {made['write_key']}\n")
    return f"{url}/showroom/?key={made['write_key']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("WORLDFLOW_PORT", "8080")))
    parser.add_argument("--data-dir", default=os.environ.get("WORLDFLOW_DATA_DIR", ".worldflow"))
    parser.add_argument("--avatars", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=120)
    parser.add_argument("--no-wait", action="store_true", help="stop after showing the results")
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    with console.status("starting the Worldflow server…"):
        server = _start_server(args, url)
    mail: MailSink | None = None
    try:
        receiver = Receiver()
        _send(f"{url}/v1/destinations/crm", {"url": receiver.url, "secret": receiver.secret})
        mail = _mail_sink()
        if mail is not None:  # the other settings stay as they are
            settings = {**_get(f"{url}/v1/settings"), "smtp": mail.smtp}
            _send(f"{url}/v1/settings", settings)
        for answer in apply(SEGMENTS, url, ADMIN_TOKEN):
            console.print(f"applied {answer['kind']} [bold]{answer['key']}[/bold] "
                          f"version {answer['version']}")  # fmt: skip
        showroom = _showroom(url, Path(args.data_dir))
        dashboard = Dashboard(url, receiver, mail)
        done = threading.Event()

        def simulate() -> None:
            try:
                dashboard.report = run(
                    url, WRITE_KEY, args.avatars, args.minutes,
                    on_progress=lambda r: setattr(dashboard, "report", r),
                )  # fmt: skip
            finally:
                done.set()

        threading.Thread(target=simulate, daemon=True).start()
        with Live(dashboard.render(), console=console, refresh_per_second=4) as live:
            while not done.wait(0.5):
                dashboard.refresh()
                live.update(dashboard.render())
            _wait_processed(url)
            # The journeys' waits run on the log's clock (real time): let the ones the traffic
            # started finish, and their webhooks and e-mails arrive.
            deadline = time.monotonic() + 30
            dashboard.refresh()  # a short simulation may end before the first refresh
            while time.monotonic() < deadline and dashboard.waiting():
                time.sleep(0.5)
                dashboard.refresh()
                live.update(dashboard.render())
            dashboard.refresh()
            live.update(dashboard.render())
        if dashboard.report.error:
            console.print(f"[red]the simulation stopped: {dashboard.report.error}[/red]")
            sys.exit(1)
        person = _stitched_person(url)
        if person is not None:
            console.print()
            _show_person(person)
        if mail is not None:
            _show_mail(mail)
        quarantine = _get(f"{url}/v1/quarantine?limit=2")["items"]
        for item in quarantine:
            reasons = "; ".join(f"{e['field']}: {e['message']}" for e in item["errors"])
            console.print(f"[yellow]quarantined[/yellow] {item['code']}: {reasons}")
        bearer = f"-H 'Authorization: Bearer {ADMIN_TOKEN}'"
        someone = person["id"] if person else "<profile id>"
        user = (person or {}).get("identities", {}).get("user_id", ["<user id>"])[0]
        if showroom is not None:
            console.print(
                f"\n[bold]Walk the showroom in a browser:[/bold] {showroom}\n"
                "  look at the sneakers on the left for a few seconds, walk back to the entrance,"
                "\n  and the lobby billboard shows you the offer the showroom-sneakers journey "
                "pushed"
            )  # fmt: skip
        console.print(
            f"\n[bold]Worldflow is running on {url}[/bold]\n"
            f"  API docs          {url}/docs\n"
            f"  a profile         curl {bearer} {url}/v1/profiles/{someone}\n"
            f"  by identity       curl {bearer} {url}/v1/profiles/by/user_id/{user}\n"
            f"  by trait          curl {bearer} '{url}/v1/profiles?trait=plan&value=vip'\n"
            f"  segments          curl {bearer} {url}/v1/segments/sneaker-fans\n"
            f"  journeys          curl {bearer} {url}/v1/journeys/cart-rescue/stats\n"
            f"  the processor     curl {bearer} {url}/v1/processor\n"
            f"  quarantine        curl {bearer} {url}/v1/quarantine\n"
            f"  metrics           {url}/metrics\n"
            f"  send an event     curl -u {WRITE_KEY}: {url}/v1/track -d "
            '\'{"event":"zone.entered","userId":"me","properties":{"zone_id":"lobby"}}\'\n'
            f"  more traffic      worldflow simulate --url {url} --write-key {WRITE_KEY}\n"
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
        if mail is not None:
            mail.stop()


if __name__ == "__main__":
    main()
