"""``worldflow scenes``: register a scene file with a server (``add``), or show what it would
register without one (``show``). The file is checked locally first, so a malformed tag is
reported before anything is sent."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from worldflow.scenes.registry import (
    SCENE_KEY,
    Scene,
    SceneError,
    format_of_name,
    parse_scene,
    sniff,
)

MEDIA_TYPES = {"gltf": "model/gltf+json", "glb": "model/gltf-binary", "x3d": "model/x3d+xml"}

scenes_app = typer.Typer(help="The scene registry: tagged objects of glTF and X3D scenes "
                         "(docs/SCENES.md).", no_args_is_help=True)  # fmt: skip

FileArg = Annotated[Path, typer.Argument(help="A .gltf, .glb or .x3d file", exists=True,
                                         dir_okay=False, readable=True)]  # fmt: skip
KeyOpt = Annotated[str | None, typer.Option(help="The scene's key (default: from the file name)")]


class AddError(Exception):
    pass


def _error(message: str) -> None:
    """On standard error, unwrapped: messages hold paths and places to copy."""
    typer.secho("error: ", fg="red", err=True, nl=False)
    typer.echo(message, err=True)


def key_of(path: Path) -> str:
    """A scene key from a file name: ``Paris Showroom v2.glb`` → ``paris-showroom-v2``."""
    key = re.sub(r"[^a-z0-9._-]+", "-", path.stem.lower()).strip("-._")[:64].rstrip("-._")
    if not SCENE_KEY.fullmatch(key):
        raise SceneError(f"{path.name}: no scene key can be made of the file name; give --key")
    return key


def read(path: Path, key: str | None) -> tuple[bytes, str, Scene]:
    """The file's bytes, its format and what it registers."""
    data = path.read_bytes()
    fmt = format_of_name(path.name) or sniff(data)
    if fmt is None:
        raise SceneError(f"{path}: neither glTF (.gltf, .glb) nor X3D (.x3d)")
    try:
        return data, fmt, parse_scene(data, key or key_of(path), fmt)
    except SceneError as exc:
        raise SceneError(f"{path}: {exc}") from None


def add(data: bytes, fmt: str, key: str, world: str | None, url: str,
        token: str) -> dict[str, Any]:  # fmt: skip
    """PUT the file to the server's scene registry; its answer."""
    if not url.startswith(("http://", "https://")):
        raise AddError(f"--url: {url!r} is not an http(s) URL")
    query = f"?{urllib.parse.urlencode({'world': world})}" if world else ""
    request = urllib.request.Request(  # noqa: S310 - checked above: http(s) only
        f"{url.rstrip('/')}/v1/scenes/{key}{query}",
        data=data,
        method="PUT",
        headers={"Authorization": f"Bearer {token}", "Content-Type": MEDIA_TYPES[fmt]},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - likewise
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise AddError(f"the server answered {exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise AddError(f"{url}: {exc.reason}") from None


def _counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{counts[k]} {k}" for k in ("objects", "products", "zones", "placements"))


@scenes_app.command("add")
def add_command(
    file: FileArg,
    key: KeyOpt = None,
    world: Annotated[str | None, typer.Option(help="The world it is a scene of")] = None,
    url: Annotated[str, typer.Option(help="Worldflow server")] = "http://127.0.0.1:8080",
    token: Annotated[
        str, typer.Option(envvar="WORLDFLOW_ADMIN_TOKEN", help="An admin API token")
    ] = "",
) -> None:
    """Register a scene's tagged objects, products, zones and placements with a server (a new
    version replaces the last: objects gone from the file are removed)."""
    if not token:
        _error("--token (or WORLDFLOW_ADMIN_TOKEN) is required")
        raise typer.Exit(2)
    try:
        data, fmt, scene = read(file, key)
        answer = add(data, fmt, scene.key, world, url, token)
    except (SceneError, AddError) as exc:
        _error(str(exc))
        raise typer.Exit(1) from None
    state = f"version {answer['version']}" + ("" if answer.get("changed", True) else " (unchanged)")
    changes = f"{answer.get('added', 0)} added, {answer.get('removed', 0)} removed"
    typer.echo(f"scene {answer['key']}: {state}: {_counts(answer)} ({changes})")


@scenes_app.command("show")
def show_command(
    file: FileArg,
    key: KeyOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Print what a scene file would register (no server needed)."""
    try:
        _data, _fmt, scene = read(file, key)
    except SceneError as exc:
        _error(str(exc))
        raise typer.Exit(1) from None
    if as_json:
        entries = [e.as_dict() for e in scene.entries]
        shown = {"key": scene.key, "format": scene.format, **scene.counts(), "entries": entries}
        typer.echo(json.dumps(shown, indent=2))
        return
    table = Table(title=f"scene {scene.key} ({scene.format}): {_counts(scene.counts())}")
    for column in ("object id", "kind", "node path", "name", "sku", "category", "more"):
        table.add_column(column)
    for entry in scene.entries:
        more = ", ".join(f"{k}={v}" for k, v in entry.properties.items() if k != "explicit_id")
        table.add_row(entry.object_id, entry.kind, entry.node_path, entry.name or "",
                      entry.sku or "", entry.category or "", more)  # fmt: skip
    Console(width=200).print(table)
