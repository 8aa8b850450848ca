"""The browser client's files: the page, the projector and viewer pages, and the static files
under client/ (only the suffixes a page needs, nothing outside the folder, no node_modules)."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from .appkeys import STATIC_ROOT

CLIENT_DIR = Path(__file__).resolve().parent.parent / "client"
STATIC_SUFFIXES = {".html", ".js", ".mjs", ".css", ".svg", ".png", ".ico", ".woff2"}


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(request.app[STATIC_ROOT] / "index.html")


def page(name: str):
    """A route serving one page of the client (the projector view, the viewer page)."""
    async def serve(request: web.Request) -> web.FileResponse:
        return web.FileResponse(request.app[STATIC_ROOT] / name)
    return serve


async def static_file(request: web.Request) -> web.FileResponse:
    root: Path = request.app[STATIC_ROOT]
    rel = request.match_info["path"]
    try:
        path = (root / rel).resolve()
        found = (path.is_relative_to(root) and path.suffix in STATIC_SUFFIXES and path.is_file()
                 and "node_modules" not in path.relative_to(root).parts)
    except (OSError, ValueError, RuntimeError):       # a NUL byte, a loop of links
        found = False
    if not found:
        raise web.HTTPNotFound(text=json.dumps({"error": f"no file {rel[:120]!r}"}), content_type="application/json")
    return web.FileResponse(path)
