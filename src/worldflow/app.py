"""The ASGI application: composes the edges, the admin API and operations endpoints."""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worldflow import __version__, admin, showroom
from worldflow.actions import api as actions_api
from worldflow.collect import http as ingest_http
from worldflow.collect import push, stream
from worldflow.collect.errors import ApiError
from worldflow.config import Settings, load_settings
from worldflow.decide import api as decide_api
from worldflow.journeys import api as journeys_api
from worldflow.log import LogError, LogOverloaded
from worldflow.metrics import Metrics
from worldflow.profiles import api as profiles_api
from worldflow.scenes import api as scenes_api
from worldflow.segments import api as segments_api
from worldflow.services import Services, prepare

log = logging.getLogger("worldflow")


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    headers = extra.pop("headers", None)
    return JSONResponse({"code": code, "message": message, **extra}, status, headers=headers)


class LatencyMiddleware:
    """Request latency per route template (bounded label set), and error status counts."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.request_latency.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - started
            )


class App(FastAPI):
    """FastAPI, with the WebSocket edges served directly. A world session holds its socket
    for hours, and every layer between the server and the handler (middleware, routing,
    exception handling, exit stacks) is a coroutine frame with its state, kept as long as
    the socket: about 10 KiB a connection, a quarter of what one costs. None of those layers
    does anything for a WebSocket that its handler does not do itself (authentication, error
    frames, closing)."""

    sockets: Final = {"/v1/stream": stream.stream, "/v1/push": push.push}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            handler = self.sockets.get(scope["path"])
            if handler is not None:
                scope["app"] = self
                await handler(WebSocket(scope, receive, send))
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """Build the application; ``services`` are opened at startup unless given."""
    metrics = services.metrics if services else Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = services
        if svc is None:
            if not settings.log_writer_address:  # not a worker of a supervising server
                await run_in_threadpool(prepare, settings)
            svc = await run_in_threadpool(Services.open, settings, metrics)
        app.state.services = svc
        await svc.start()
        # Ingestion allocates many short-lived objects per request; with the default gen-0
        # threshold (700) the collector walks the heap every few requests. Freeze what start-up
        # built and collect less often: it keeps about a quarter of the CPU for requests.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        try:
            yield
        finally:
            # Uvicorn has stopped accepting and drained requests: flush the log and close.
            await svc.close()

    app = App(
        title="Worldflow",
        version=__version__,
        summary="Open-source marketing automation for virtual worlds",
        lifespan=lifespan,
    )

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> Response:
        _count(_request, exc.code)
        return error_response(exc.status, exc.code, exc.message, headers=exc.headers)

    @app.exception_handler(LogOverloaded)
    async def overloaded(_request: Request, exc: LogOverloaded) -> Response:
        _count(_request, "overloaded")
        return error_response(
            429, "overloaded", str(exc), headers={"Retry-After": str(exc.retry_after_s)}
        )

    @app.exception_handler(LogError)
    async def log_error(_request: Request, exc: LogError) -> Response:
        _count(_request, "log_unavailable")
        return error_response(503, "log_unavailable", str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 405:
            message = f"{_request.method} is not allowed on {_request.url.path}"
        elif exc.status_code == 404:
            message = f"no endpoint at {_request.url.path}"
        _count(_request, code)
        return error_response(exc.status_code, code, message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
        ]
        message = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        _count(_request, "invalid_field")
        return error_response(422, "invalid_field", message, errors=problems)

    def _count(request: Request, code: str) -> None:
        svc: Services | None = getattr(request.app.state, "services", None)
        if svc is not None:
            svc.metrics.requests_rejected.labels(code).inc()

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz(request: Request) -> Response:
        """Ready to accept events: store migrated, log writer running, not shutting down."""
        svc: Services | None = getattr(request.app.state, "services", None)
        if svc is None or not svc.ready:
            return error_response(503, "not_ready", "starting or shutting down")
        if not svc.log.running:
            return error_response(503, "not_ready", "the log writer is not reachable")
        return JSONResponse({"status": "ready", "log_end_offset": svc.log.end_offset()})

    @app.get("/metrics", tags=["operations"], include_in_schema=True)
    async def prometheus_metrics(request: Request) -> Response:
        """Prometheus metrics."""
        svc: Services = request.app.state.services
        svc.metrics.log_pending.set(svc.log.pending_events)
        svc.metrics.log_end_offset.set(svc.log.end_offset())
        for partition, state in (await run_in_threadpool(svc.profiles.processor_states)).items():
            svc.metrics.processor_offset.labels(str(partition)).set(state.offset)
            for name, count in state.counters.items():
                svc.metrics.processor_counts.labels(str(partition), name).set(count)
        registry = svc.metrics.registry
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # several workers: add up their files
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # Routes are matched in order, each against its pattern: the hot paths come first (behind
    # the ingest routes, a decision spent about 45 µs in routing alone).
    app.include_router(decide_api.router)
    app.include_router(ingest_http.router)
    app.include_router(push.router)
    app.include_router(admin.router)
    app.include_router(profiles_api.router)
    app.include_router(segments_api.router)
    app.include_router(actions_api.router)
    app.include_router(journeys_api.router)
    app.include_router(scenes_api.router)
    showroom.mount(app, Path(settings.showroom_dir) if settings.showroom_dir else None)

    # Browsers post to the ingest paths from any page of the brand's site or world.
    app.add_middleware(
        CORSMiddleware,
        allow_origin_regex=".*",
        allow_credentials=True,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],
        # analytics.js honours Retry-After on a 429 only when the browser lets it read it.
        expose_headers=["Retry-After"],
        max_age=86400,
    )
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    return app


def worker_app() -> FastAPI:
    """Application factory of the ingest workers that ``worldflow serve --workers N`` starts;
    the supervisor passes the settings (and the log writer's address) in the environment."""
    return create_app(load_settings())
