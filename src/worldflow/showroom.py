"""The browser showroom (examples/showroom) served by `worldflow serve` at ``/showroom/``.

Three folders of a checkout are served as they are, read-only, no build step:

- ``/showroom/`` — the page, its script and its glTF scene (``showroom_dir``);
- ``/showroom/sdk/`` — the JavaScript SDK's ES modules (``sdk/js/src``);
- ``/showroom/three/`` — three.js, as ``npm ci`` installs it for the SDK
  (``sdk/js/node_modules/three``; `make demo` runs it when npm is there).

``showroom_dir`` defaults to the checkout's examples/showroom, found beside the package's
sources; the SDK's folder is taken beside it. Where a folder is missing (an installed wheel,
no npm), its paths answer 404 with a JSON error saying what to do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.staticfiles import StaticFiles

CHECKOUT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = CHECKOUT / "examples" / "showroom"


def folders(showroom_dir: Path | None) -> dict[str, Path]:
    """Where each mounted path is read from."""
    page = (showroom_dir or DEFAULT_DIR).resolve()
    sdk = page.parents[1] / "sdk" / "js"
    return {
        "/showroom/sdk": sdk / "src",
        "/showroom/three": sdk / "node_modules" / "three",
        "/showroom": page,
    }


MISSING = {
    "/showroom/sdk": "the JavaScript SDK's sources (sdk/js/src) are not beside the showroom",
    "/showroom/three": "three.js is not installed: run `npm ci` in sdk/js (make demo does)",
    "/showroom": "the showroom (examples/showroom) is not here: run worldflow serve from a "
    "checkout, or set showroom_dir",
}


def mount(app: FastAPI, showroom_dir: Path | None) -> None:
    """Serve the showroom's folders; the most specific paths first."""

    @app.get("/showroom", include_in_schema=False)
    async def showroom_root(request: Request) -> RedirectResponse:
        query = request.url.query
        return RedirectResponse(f"/showroom/?{query}" if query else "/showroom/", 308)

    for path, folder in folders(showroom_dir).items():
        if folder.is_dir():
            app.mount(path, StaticFiles(directory=folder, html=True), name=path.strip("/"))
        else:
            app.add_api_route(f"{path}/{{rest:path}}", _missing(MISSING[path]),
                              include_in_schema=False)  # fmt: skip


def _missing(message: str) -> Callable[[str], Awaitable[JSONResponse]]:
    async def not_here(rest: str) -> JSONResponse:
        return JSONResponse({"code": "showroom_unavailable", "message": message}, 404)

    return not_here
