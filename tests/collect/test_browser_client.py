"""analytics.js 2.0 (``@segment/analytics-next``), unchanged, in headless Chromium, against the
server.

A tiny static server on its own port serves the test page and the library's UMD bundle (from
``tests/collect/node/node_modules``), so the page's origin differs from the server's: every
event POST carrying ``Authorization`` is preceded by a CORS preflight, as on a real site. The
library is pointed at the server (``apiHost`` and the metrics host), so nothing leaves the
machine. Playwright only observes requests: routing them would hide the preflights.
"""

from __future__ import annotations

import json
import mimetypes
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.collect.test_node_clients import ensure_node_modules
from tests.conftest import ServerProcess, need
from tests.httpd import LocalServer, QuietHandler

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
DELIVERY_DEADLINE_S = 20

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Worldflow browser test</title>
<link rel="icon" href="data:,">
<script>
  // Lazy chunks of the bundle (if any) load from here instead of cdn.segment.com.
  window.analytics = { _cdn: location.origin + '/cdn' };
</script>
<script src="/cdn/analytics-next/bundles/index.js"></script>
</head><body>
<h1>analytics-next &rarr; Worldflow</h1>
<p id="status">loading</p>
<ol id="sent"></ol>
<a id="away" href="/away.html">away</a>
</body></html>
"""
AWAY = """<!doctype html>
<html><head><title>away</title><link rel="icon" href="data:,"></head><body>away</body></html>
"""

LOAD_JS = """
async ({ writeKey, apiHost, strategy, stripAuthorization }) => {
  if (stripAuthorization) {
    // As behind a proxy or with the classic snippet: only the body carries the write key.
    const original = window.fetch;
    window.fetch = (url, init) => {
      if (init && init.headers) {
        const headers = { ...init.headers };
        delete headers.Authorization;
        init = { ...init, headers };
      }
      return original(url, init);
    };
  }
  const segment = { apiKey: writeKey, apiHost, protocol: 'http' };
  if (strategy) segment.deliveryStrategy = strategy;
  const [analytics] = await window.AnalyticsNext.AnalyticsBrowser.load(
    {
      writeKey,
      // Inline settings: no GET https://cdn.segment.com/v1/projects/<key>/settings.
      cdnSettings: {
        integrations: { 'Segment.io': segment },
        // The library's telemetry (POST /v1/m), flushed often so the test sees one.
        metrics: { host: apiHost, protocol: 'http', flushTimer: 500 },
      },
    },
    // Without this the library's own metrics still go to https://api.segment.io/v1/m.
    { integrations: { 'Segment.io': { apiHost, protocol: 'http' } } },
  );
  window.__analytics = analytics;
  window.__errors = [];
  analytics.on('error', (e) => window.__errors.push(String(e && (e.reason || e.code || e))));
  document.getElementById('status').textContent = 'loaded ' + analytics.VERSION;
  return analytics.VERSION;
}
"""

CALLS_JS = """
async (tag) => {
  const a = window.__analytics;
  const calls = [
    () => a.identify(`user-${tag}`, { plan: 'gold', email_hash: 'h1' }),
    () => a.track('zone.entered', { zone_id: 'paris-lobby', zone_type: 'lobby' }),
    () => a.track('Product Viewed', { product_id: 'sneaker-1', price: 99.5, currency: 'eur' }),
    () => a.page('docs', 'Getting started', { section: tag }),
    () => a.group(`team-${tag}`, { name: 'Acme' }),
    () => a.alias(`user-${tag}`, `anon-${tag}`),
  ];
  if (typeof a.screen === 'function') calls.push(() => a.screen('shop', 'Cart', { items: 2 }));
  const sent = [];
  for (const call of calls) {
    const ctx = await call();
    sent.push(JSON.parse(JSON.stringify(ctx.event)));
    const li = document.createElement('li');
    const e = ctx.event;
    li.textContent = `${e.type} ${e.event || e.name || e.groupId || ''} ${e.messageId}`;
    document.getElementById('sent').appendChild(li);
  }
  return sent;
}
"""

HIDE_JS = """
() => {
  Object.defineProperty(document, 'visibilityState', { value: 'hidden', configurable: true });
  document.dispatchEvent(new Event('visibilitychange'));
}
"""


class StaticSite(LocalServer):
    """The test page and the analytics-next UMD files, on a port of their own."""

    def __init__(self, bundles: Path) -> None:
        pages = {"/page.html": PAGE.encode(), "/away.html": AWAY.encode()}
        prefix = "/cdn/analytics-next/bundles/"

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                body: bytes | None = pages.get(path)
                kind = "text/html; charset=utf-8"
                if body is None and path.startswith(prefix):
                    file = (bundles / path[len(prefix) :]).resolve()
                    if file.parent == bundles and file.is_file():
                        body = file.read_bytes()
                        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)

    @property
    def origin(self) -> str:
        return self.url


@pytest.fixture(scope="session")
def bundles() -> Path:
    need("Chromium", shutil.which("chromium") is not None and Path(CHROMIUM).exists(),
         f"install the chromium package ({CHROMIUM})")  # fmt: skip
    umd = ensure_node_modules() / "@segment" / "analytics-next" / "dist" / "umd"
    assert (umd / "index.js").is_file(), f"no UMD bundle in {umd}"
    return umd.resolve()


@pytest.fixture
def site(bundles: Path) -> Iterator[StaticSite]:
    with StaticSite(bundles) as s:
        yield s


def wait_for(check: Callable[[], Any], what: str, pause: Callable[[], Any], timeout: float) -> Any:
    """Poll ``check`` until it is truthy; ``pause`` waits a little (and lets Playwright's
    sync API deliver the browser's events, which ``time.sleep`` would not)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        pause()


def served(server: ServerProcess) -> dict[tuple[str, str, str], int]:
    """Requests the server answered, by (method, route, status), from its latency histogram.

    The server's own view: Playwright does not see a keepalive request sent while the page
    unloads, nor any CORS preflight."""
    counts: dict[tuple[str, str, str], int] = {}
    pattern = re.compile(
        r'^worldflow_http_request_duration_seconds_count\{method="([^"]*)",route="([^"]*)",'
        r'status="([^"]*)"\} (\S+)$'
    )
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if match := pattern.match(line):
            method, route, status, n = match.groups()
            counts[method, route, status] = int(float(n))
    return counts


BATCHING = {"strategy": "batching", "config": {"size": 100, "timeout": 60000}}
MODES = {
    # id: (deliveryStrategy, how a batch is flushed, strip the Authorization header)
    "standard": (None, None, False),
    "batching-pagehide": (BATCHING, "navigate", False),
    "batching-hidden": (BATCHING, "hide", False),
    "standard-body-key": (None, None, True),
    "batching-body-key": (BATCHING, "hide", True),
}
SHORT = {"identify": "i", "track": "t", "page": "p", "screen": "s", "group": "g", "alias": "a"}


@dataclass
class BrowserRun:
    sent: list[dict[str, Any]]  # the events as the library built them (ctx.event)
    requests: list[dict[str, Any]]  # every request the browser made
    answers: list[dict[str, Any]]  # status and headers of the server's answers to POSTs
    failures: list[str]  # failed requests
    console: list[str]  # console errors and uncaught page errors
    errors: list[str]  # the library's 'error' events
    events: dict[str, dict[str, Any]]  # the log, by message id, once all sent events are in


def posts_to(server: ServerProcess, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in requests if r["method"] == "POST" and r["url"].startswith(server.url)]


def run_in_browser(server: ServerProcess, site: StaticSite, mode: str) -> BrowserRun:
    """Load the page, send one call of each type, flush, wait for the events in the log."""
    from playwright.sync_api import Response, sync_playwright

    strategy, flush, strip = MODES[mode]
    requests: list[dict[str, Any]] = []
    answers: list[dict[str, Any]] = []
    failures: list[str] = []
    console: list[str] = []

    def on_response(response: Response) -> None:
        if response.request.method == "POST" and response.url.startswith(server.url):
            answers.append({"url": response.url, "status": response.status,
                            "headers": response.headers})  # fmt: skip

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context()
            context.on("request", lambda r: requests.append(
                {"url": r.url, "method": r.method, "headers": r.headers, "body": r.post_data}
            ))  # fmt: skip
            context.on(
                "requestfailed", lambda r: failures.append(f"{r.method} {r.url} {r.failure}")
            )
            context.on("response", on_response)
            page = context.new_page()
            page.on("console", lambda m: console.append(f"{m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: console.append(f"uncaught: {e}"))

            page.goto(f"{site.origin}/page.html")
            version = page.evaluate(
                LOAD_JS, {"writeKey": server.write_key, "apiHost": f"127.0.0.1:{server.port}/v1",
                          "strategy": strategy, "stripAuthorization": strip},
            )  # fmt: skip
            assert version == "1.84.3", version
            sent: list[dict[str, Any]] = page.evaluate(CALLS_JS, mode)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"browser-{mode}.png"), full_page=True)
            errors: list[str] = page.evaluate("() => window.__errors")
            if flush == "hide":
                page.evaluate(HIDE_JS)
            elif flush == "navigate":
                page.click("#away")
                page.wait_for_url(f"{site.origin}/away.html")

            def pause() -> None:
                page.wait_for_timeout(100)  # unlike time.sleep, lets Playwright take events

            wanted = {e["messageId"] for e in sent}

            def logged() -> dict[str, dict[str, Any]] | None:
                found = {e["event"]["message_id"]: e["event"] for e in server.log_events()}
                return found if set(found) >= wanted else None

            events = wait_for(logged, f"{len(wanted)} events from the browser ({mode})", pause,
                              DELIVERY_DEADLINE_S)  # fmt: skip
            if flush != "navigate":
                wait_for(lambda: any(k[:2] == ("POST", "/v1/m") for k in served(server)),
                         "the library's telemetry", pause, 5)  # fmt: skip
                # Let the answers reach the page before the browser closes. (Playwright sees
                # neither the keepalive request of a page being left nor its answer.)
                wait_for(lambda: len(answers) >= len(posts_to(server, requests)),
                         "the answers in the browser", pause, 5)  # fmt: skip
            if flush != "navigate":
                errors = page.evaluate("() => window.__errors")
        finally:
            browser.close()
    return BrowserRun(sent, requests, answers, failures, console, errors, events)


@pytest.mark.parametrize("mode", list(MODES))
def test_analytics_next_in_chromium(server: ServerProcess, site: StaticSite, mode: str) -> None:
    strategy, flush, strip = MODES[mode]
    run = run_in_browser(server, site, mode)
    sent = {e["messageId"]: e for e in run.sent}
    types = {e["type"] for e in run.sent}
    assert types >= {"identify", "track", "page", "group", "alias"}, types

    # The requests, as the server answered them: the paths of the delivery mode, all 200, and
    # CORS preflights (at least one per path: Chrome caches them per URL) unless the
    # Authorization header was stripped (text/plain without custom headers is a simple request).
    answered = served(server)
    ingest = {(route, status) for (method, route, status) in answered
              if method == "POST" and route != "/v1/m"}  # fmt: skip
    paths = {f"/v1/{SHORT[t]}" for t in types} if strategy is None else {"/v1/b"}
    assert ingest == {(path, "200") for path in paths}, answered
    preflights = {k: n for k, n in answered.items() if k[0] == "OPTIONS"}
    if strip:
        assert preflights == {}, preflights
    else:
        assert sum(preflights.values()) >= len(paths), f"too few CORS preflights: {answered}"
        assert {status for (_, _, status) in preflights} == {"200"}, preflights

    # The library's telemetry was taken and thrown away (the log holds only the events).
    if flush != "navigate":
        assert {k[2] for k in answered if k[:2] == ("POST", "/v1/m")} == {"200"}, answered
        telemetry = [p for p in posts_to(server, run.requests) if p["url"].endswith("/v1/m")]
        assert telemetry and all("series" in json.loads(p["body"]) for p in telemetry)
    assert len(server.log_events()) == len(sent)

    # The requests as the browser sent them: text/plain, the write key in the body (and in
    # Authorization unless stripped), every event exactly once. Playwright does not see the
    # keepalive request of a page being left: batching-hidden covers that body.
    posts = [p for p in posts_to(server, run.requests) if not p["url"].endswith("/v1/m")]
    if flush == "navigate":
        assert posts == []
    else:
        delivered: list[dict[str, Any]] = []
        for post in posts:
            assert post["headers"].get("content-type") == "text/plain", post
            assert ("authorization" in post["headers"]) is not strip, post
            body = json.loads(post["body"])
            assert body["writeKey"] == server.write_key, body
            delivered.extend(body["batch"] if strategy else [body])
        assert sorted(e["messageId"] for e in delivered) == sorted(sent)

    # The answers as the browser saw them: 200, CORS allowed, Retry-After readable. Leaving the
    # page may abort the library's metrics call (/v1/m) before its answer reaches the page.
    aborted = [f for f in run.failures if f"{server.url}/v1/m " in f and "ERR_ABORTED" in f]
    assert len(run.answers) == len(posts_to(server, run.requests)) - len(aborted)
    for answer in run.answers:
        assert answer["status"] == 200, answer
        assert answer["headers"].get("access-control-allow-origin") in ("*", site.origin), answer
        exposed = answer["headers"].get("access-control-expose-headers", "").lower()
        assert "retry-after" in exposed, answer

    # Nothing went anywhere but the two local origins; nothing failed or complained.
    elsewhere = [r["url"] for r in run.requests
                 if not r["url"].startswith((site.origin, server.url))]  # fmt: skip
    assert elsewhere == []
    # When the page is being hidden or left, the browser may abort the library's own metrics
    # call (/v1/m) still in flight; its events went out by beacon and were checked above.
    assert flush is not None or aborted == []
    assert [f for f in run.failures if f not in aborted] == []
    assert run.errors == []
    assert run.console == []

    # Every event is in the log as the library sent it.
    events = run.events
    assert server.quarantine() == []
    anonymous_ids = {e["anonymousId"] for e in run.sent}
    assert len(anonymous_ids) == 1 and None not in anonymous_ids, anonymous_ids
    for mid, original in sent.items():
        event = events[mid]
        assert event["type"] == original["type"], (event, original)
        assert event["anonymous_id"] == original["anonymousId"]
        assert event.get("user_id") == original.get("userId")
        assert event["sent_at"] is not None, event
        context = event["context"]
        assert context["page"]["url"] == f"{site.origin}/page.html", context
        assert context["page"]["title"] == "Worldflow browser test", context
        assert "HeadlessChrome" in context["userAgent"], context
        assert context["library"] == {"name": "analytics.js", "version": "next-1.84.3"}

    by_type: dict[str, list[dict[str, Any]]] = {}
    for mid, original in sent.items():
        by_type.setdefault(original["type"], []).append(events[mid])
    (identify,) = by_type["identify"]
    assert identify["user_id"] == f"user-{mode}"
    assert identify["traits"] == {"plan": "gold", "email_hash": "h1"}
    tracks = {e.get("original_name") or e["name"]: e for e in by_type["track"]}
    assert tracks["zone.entered"]["properties"] == {"zone_id": "paris-lobby", "zone_type": "lobby"}
    viewed = tracks["Product Viewed"]
    assert viewed["name"] == "object.viewed"
    assert viewed["properties"]["obj"]["product"]["sku"] == "sneaker-1"
    (page,) = by_type["page"]
    assert page["name"] == "Getting started"
    assert page["properties"]["category"] == "docs"
    assert page["properties"]["section"] == mode
    assert page["properties"]["url"] == f"{site.origin}/page.html"
    (group,) = by_type["group"]
    assert (group["group_id"], group["traits"]) == (f"team-{mode}", {"name": "Acme"})
    (alias,) = by_type["alias"]
    (alias_sent,) = [e for e in run.sent if e["type"] == "alias"]
    assert alias["previous_id"] == alias_sent["previousId"] == f"anon-{mode}"
    assert alias["user_id"] == alias_sent["userId"]
    if "screen" in types:
        (screen,) = by_type["screen"]
        assert (screen["name"], screen["properties"]["items"]) == ("Cart", 2)


def test_wrong_write_key_is_reported_in_the_browser(
    server: ServerProcess, site: StaticSite
) -> None:
    """The 401 must be readable cross-origin: else the library sees a network error and
    retries (ten times, with backoff) instead of reporting the key."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context().new_page()
            page.goto(f"{site.origin}/page.html")
            page.evaluate(
                LOAD_JS, {"writeKey": "wk_wrong", "apiHost": f"127.0.0.1:{server.port}/v1",
                          "strategy": None, "stripAuthorization": False},
            )  # fmt: skip
            page.evaluate("() => { window.__analytics.track('zone.entered', {zone_id: 'z'}); }")
            errors = wait_for(lambda: page.evaluate("() => window.__errors"),
                              "the library's error event", lambda: page.wait_for_timeout(100),
                              DELIVERY_DEADLINE_S)  # fmt: skip
        finally:
            browser.close()
    assert len(errors) == 1 and "401" in errors[0], errors
    answered = served(server)
    assert answered.get(("POST", "/v1/t", "401")) == 1, answered  # not retried
    assert server.log_events() == []
    assert server.quarantine() == []
