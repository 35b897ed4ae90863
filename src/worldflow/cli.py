"""The ``worldflow`` command line."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from rich.console import Console
from rich.panel import Panel

from worldflow import __version__
from worldflow.config import ConfigError, Settings, load_settings

app = typer.Typer(
    help="Worldflow: marketing automation for virtual worlds.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="TOML settings file (default ./worldflow.toml)")
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory [env WORLDFLOW_DATA_DIR]")
]
StoreOpt = Annotated[
    str | None,
    typer.Option("--store", help="Store URL, e.g. postgresql://user@host/db [WORLDFLOW_STORE]"),
]


def _settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _lock_data_dir(data_dir: Path) -> Any:
    """One server per data directory: the embedded log has exactly one writer."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / ".lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        console.print(f"[red]error:[/red] another Worldflow server uses {data_dir}")
        raise typer.Exit(1) from None
    return handle


@app.command()
def serve(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    host: Annotated[str | None, typer.Option(help="Listen address [WORLDFLOW_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port [WORLDFLOW_PORT]")] = None,
    store: StoreOpt = None,
    workers: Annotated[
        int | None, typer.Option(help="Ingest worker processes [WORLDFLOW_WORKERS]")
    ] = None,
) -> None:
    """Run the server: ingestion, the event log and the admin API.

    With one worker (the default) everything runs in this process beside the log writer
    process; with several, this process supervises the workers and the writer they share.
    """
    from worldflow.services import Services, prepare

    settings = _settings(
        config, data_dir=data_dir, host=host, port=port, store=store, workers=workers
    )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    lock = _lock_data_dir(settings.data_dir)
    boot = prepare(settings)
    if boot.write_key or boot.admin_token:
        console.print(
            Panel.fit(
                f"workspace [bold]{boot.workspace_id}[/bold] created\n"
                f"write key:   [bold]{boot.write_key}[/bold]\n"
                f"admin token: [bold]{boot.admin_token}[/bold]\n"
                "They are stored hashed and will not be shown again.",
                title="Worldflow first start",
            )
        )
    console.print(
        f"Worldflow {__version__} on http://{settings.host}:{settings.port} with "
        f"{settings.workers} worker(s) (store {settings.store_url.split('@')[-1]}, docs at /docs)"
    )
    uvicorn_options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "ws": "websockets-sansio",
        "ws_per_message_deflate": settings.ws_deflate,
        "lifespan": "on",
        "log_level": settings.log_level,
        "access_log": False,
        "timeout_graceful_shutdown": 15,
        "server_header": False,
    }
    try:
        if settings.workers <= 1:
            # SIGINT/SIGTERM: stop accepting, drain requests, then the lifespan closes the log.
            from worldflow.app import create_app

            app_ = create_app(settings, Services.open(settings))
            uvicorn.Server(uvicorn.Config(app_, **uvicorn_options)).run()
        else:
            _serve_workers(settings, uvicorn_options)
    finally:
        lock.close()


def _serve_workers(settings: Settings, uvicorn_options: dict[str, Any]) -> None:
    """Supervise N ingest workers (one listening socket) and the log writer they share."""
    import shutil
    from dataclasses import replace

    from uvicorn.supervisors import Multiprocess

    from worldflow.services import (
        deliverer_process,
        processor_process,
        settings_env,
        writer_process,
    )

    writer = writer_process(settings)
    writer.start()
    processor = processor_process(settings, writer.address)
    if processor is not None:
        processor.start()
    deliverer = deliverer_process(settings, writer.address)
    if deliverer is not None:
        deliverer.start()
    metrics_dir = settings.data_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ.update(settings_env(replace(settings, log_writer_address=writer.address)))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    config = uvicorn.Config(
        "worldflow.app:worker_app", factory=True, workers=settings.workers, **uvicorn_options
    )
    try:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    finally:
        if deliverer is not None:
            deliverer.stop()
        if processor is not None:
            processor.stop()
        writer.stop()  # after the workers: it commits what they sent, then exits


@app.command()
def migrate(config: ConfigOpt = None, data_dir: DataDirOpt = None, store: StoreOpt = None) -> None:
    """Bring the store's schema to the newest version."""
    from worldflow.store.sql import SqlStore

    settings = _settings(config, data_dir=data_dir, store=store)
    sql = SqlStore(settings.store_url)
    sql.migrate()
    sql.close()
    console.print("schema is up to date")


@app.command()
def process(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    store: StoreOpt = None,
    partitions: Annotated[
        str, typer.Option(help="Comma-separated partitions this processor owns")
    ] = "0",
) -> None:
    """Run a processor on its own (serve with processor = false), for the given partitions."""
    import signal
    import threading

    from worldflow.processing import PartitionBusyError, run
    from worldflow.services import processor_options

    settings = _settings(config, data_dir=data_dir, store=store)
    logging.basicConfig(level=settings.log_level.upper())
    owned = [int(p) for p in partitions.split(",") if p.strip()]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    console.print(f"processing partitions {owned} of {settings.store_url.split('@')[-1]}")
    try:
        run(settings.store_url, owned, None, stop, options=processor_options(settings))
    except PartitionBusyError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


@app.command()
def deliver(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    store: StoreOpt = None,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            help="A host name, IP address or CIDR range webhooks may go to although it is not "
            "public (repeat it; adds to webhook_allow)",
        ),
    ] = None,
    concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            help="Requests at once, overall (to each destination: its max_in_flight)",
        ),
    ] = 256,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on 127.0.0.1 at this port")
    ] = None,
) -> None:
    """Deliver journeys' webhooks from the store (one dispatcher per store), until stopped."""
    import signal
    import threading

    from worldflow.actions.deliver import DelivererBusyError, quiet_http_logs, run
    from worldflow.actions.webhooks import AllowList
    from worldflow.metrics import Metrics

    settings = _settings(config, data_dir=data_dir, store=store)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    quiet_http_logs()
    try:
        allowed = AllowList.parse([settings.webhook_allow, *(allow or [])])
    except ValueError as exc:
        console.print(f"[red]error:[/red] --{exc}")
        raise typer.Exit(2) from None
    metrics = Metrics()
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1", registry=metrics.registry)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    console.print(f"delivering webhooks from {settings.store_url.split('@')[-1]}")
    try:
        run(settings.store_url, stop, allow=allowed, concurrency=concurrency,
            metrics=metrics)  # fmt: skip
    except DelivererBusyError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@app.command()
def replay(config: ConfigOpt = None, data_dir: DataDirOpt = None, store: StoreOpt = None) -> None:
    """Rebuild profiles, identities and every derived state from the whole event log.

    Stop the server first: replay needs to own the partitions the server's processor owns.
    """
    from rich.progress import Progress

    from worldflow.processing import PartitionBusyError
    from worldflow.processing import replay as replay_log
    from worldflow.services import processor_options

    settings = _settings(config, data_dir=data_dir, store=store)
    with Progress(console=console) as progress:
        task = progress.add_task("replaying the log", total=None)

        def show(offset: int, end: int) -> None:
            progress.update(task, completed=offset, total=end)

        try:
            counters = replay_log(
                settings.store_url, on_progress=show, options=processor_options(settings)
            )
        except PartitionBusyError as exc:
            console.print(f"[red]error:[/red] {exc} (stop the server first)")
            raise typer.Exit(1) from exc
    console.print(", ".join(f"{k} {v}" for k, v in sorted(counters.items())))


@app.command()
def simulate(
    url: Annotated[str, typer.Option(help="Worldflow server")] = "http://127.0.0.1:8080",
    write_key: Annotated[
        str, typer.Option(envvar="WORLDFLOW_WRITE_KEY", help="A source's write key")
    ] = "",
    avatars: Annotated[int, typer.Option(help="Visitors to simulate")] = 100,
    minutes: Annotated[float, typer.Option(help="Simulated time, ending now")] = 60,
    seed: Annotated[int, typer.Option(help="Same seed, same visitors")] = 7,
    rate: Annotated[float | None, typer.Option(help="Cap on events per second")] = None,
) -> None:
    """Send realistic traffic from simulated visitors of the example worlds."""
    from worldflow.simulate import simulate_command

    if not write_key:
        console.print("[red]error:[/red] --write-key (or WORLDFLOW_WRITE_KEY) is required")
        raise typer.Exit(2)
    simulate_command(url, write_key, avatars, minutes, seed, rate)


@app.command("apply")
def apply_command(
    path: Annotated[Path, typer.Argument(help="A YAML/JSON file or a directory of them")],
    url: Annotated[str, typer.Option(help="Worldflow server")] = "http://127.0.0.1:8080",
    token: Annotated[
        str, typer.Option(envvar="WORLDFLOW_ADMIN_TOKEN", help="An admin API token")
    ] = "",
) -> None:
    """Apply segment and score definitions (docs/SEGMENTS.md) to a running server."""
    from worldflow.segments.apply import ApplyError, apply

    if not token:
        console.print("[red]error:[/red] --token (or WORLDFLOW_ADMIN_TOKEN) is required")
        raise typer.Exit(2)
    try:
        answers = apply(path, url, token)
    except ApplyError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    for answer in answers:
        state = f"version {answer['version']}" + ("" if answer["changed"] else " (unchanged)")
        typer.echo(f"{answer['kind']} {answer['key']}: {state}")


journeys_app = typer.Typer(help="Journeys: simulate one on recorded history.",
                           no_args_is_help=True)  # fmt: skip
app.add_typer(journeys_app, name="journeys")

from worldflow.scenes.cli import scenes_app  # noqa: E402 - its commands import what they use

app.add_typer(scenes_app, name="scenes")


@journeys_app.command("simulate")
def journeys_simulate(
    journey: Annotated[str, typer.Argument(help="A journey's key, or a YAML/JSON file of one")],
    since: Annotated[str, typer.Option(help="How far back in the log: 90m, 1d, 7d…")] = "7d",
    workspace: Annotated[str, typer.Option(help="The workspace")] = "default",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    store: StoreOpt = None,
) -> None:
    """What a journey (a draft, say) would have done over the recorded history: entries, steps,
    branches, conversions and actions per channel. Nothing is sent, nothing is changed."""
    import json as json_module

    from worldflow.journeys.dryrun import simulate as simulate_journey
    from worldflow.segments.definition import DefinitionError, iter_documents, parse_duration
    from worldflow.store.definitions import SqlDefinitionStore
    from worldflow.store.sql import SqlStore

    settings = _settings(config, data_dir=data_dir, store=store)
    try:
        since_ms = parse_duration(since, "--since")
        path = Path(journey)
        if path.is_file():
            (document,) = list(iter_documents(path.read_text(), str(path)))[:1]
        else:
            sql = SqlStore(settings.store_url)
            found = SqlDefinitionStore(sql.engine).get(workspace, "journey", journey)
            sql.close()
            if found is None:
                console.print(f"[red]error:[/red] no journey {journey!r} in {workspace!r}, "
                              "nor a file of that name")  # fmt: skip
                raise typer.Exit(1)
            document = found["document"]
        report = simulate_journey(settings.store_url, workspace, document, since_ms)
    except (DefinitionError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    typer.echo(json_module.dumps(report, indent=2))


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
