"""The browser client's files: the page, the projector and viewer pages, and the static files
under client/ (only the suffixes a page needs, nothing outside the folder, no node_modules).

`static_file` is the catch-all route, for every method: whatever no other route takes comes
here. A path that another route serves with other methods (GET /api/prompt, DELETE
/api/command) is answered 405 with `Allow` and a sentence, not 404; a client file, to any
method but GET or HEAD, 405 too; anything else, 404."""

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
    allowed = await _methods_elsewhere(request)
    if allowed and request.method not in allowed:
        raise _not_allowed(request, allowed)
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
    if request.method not in FILE_METHODS:
        raise _not_allowed(request, FILE_METHODS)
    return web.FileResponse(path)


FILE_METHODS = frozenset({"GET", "HEAD"})


async def _methods_elsewhere(request: web.Request) -> set[str]:
    """The methods the app's other routes take at this request's path (none: only this route)."""
    here = request.match_info.route.resource
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not here:
            _, methods = await resource.resolve(request)
            allowed |= methods
    return allowed


def _not_allowed(request: web.Request, allowed: set[str] | frozenset[str]) -> web.HTTPMethodNotAllowed:
    """405 with `Allow` and a sentence naming the methods the path takes."""
    methods = sorted(allowed)
    named = [m for m in methods if m != "HEAD" or methods == ["HEAD"]]      # GET says HEAD too
    said = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " or " + named[-1]
    return web.HTTPMethodNotAllowed(request.method, methods, content_type="application/json",
                                    text=json.dumps({"error": f"{request.path[:120]} takes {said}, "
                                                              f"not {request.method[:20]}"}))
