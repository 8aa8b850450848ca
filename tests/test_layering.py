"""The import graph is a house: `server/` above `studio/` above `streaming/` above `kernels/`,
nothing pointing up; the toy world's training (`training/`) above the model, imported by no part
of the product but the tools and the command line; the tools (`bench/`) apart from the model; the command line (`longlive/`)
on top; asyncio only in the live server; the generation world free of the server's libraries
(the GPU machines have torch and triton, no aiortc or PyAV).

Inside `server/` the same rule holds between its rooms: the foundation (protocol, frame bus,
block sink, addresses, prompt encoder, enhance) imports none of the others; each concern
(`door/`, `performing/`, `keeping/`, `media/`, `control/`) imports the foundation and the
concerns below it; the engine keeps its rewind points on the shelf in `keeping/`; the HTTP handlers
(`api`, `pages`) read what the app holds (`appkeys`); only `app` and `serve` put everything together."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from golden import REPO

ROOMS = ("kernels", "streaming", "training", "studio", "server", "bench", "longlive", "tools")
# room -> the rooms it may import (every import counts, at the top of a file or inside a function)
MAY_IMPORT = {
    "kernels": set(),
    "streaming": {"kernels"},
    "training": {"streaming", "kernels"},             # the toy world and its training: above the model
    "studio": {"streaming", "kernels"},
    "server": {"studio", "streaming", "kernels"},
    "bench": {"streaming", "kernels", "studio", "training"},   # tools measure the model, the offline room, the toy world
    "longlive": {"server", "studio", "streaming", "kernels", "bench", "training"},
    "tools": {"server", "studio", "streaming", "kernels", "bench", "longlive", "training"},   # the soak: on top, imported by none
}
SERVER_LIBRARIES = {"aiohttp", "aiortc", "av", "msgpack", "anthropic"}
# room -> third-party or standard modules it must never import
FORBIDDEN = {
    "kernels": SERVER_LIBRARIES | {"asyncio"},
    "streaming": SERVER_LIBRARIES | {"asyncio"},
    "training": SERVER_LIBRARIES | {"asyncio"},
    "bench": SERVER_LIBRARIES | {"asyncio"},
    "studio": SERVER_LIBRARIES - {"av", "anthropic"} | {"asyncio"},   # video files and the enhancer; no event loop
    "longlive": SERVER_LIBRARIES | {"asyncio", "torch"},     # the table only: --help stays instant
}


# server's rooms: a top-level module by its name, a sub-package by its folder -> the rooms it may import
SERVER_FOUNDATION = {"protocol", "framebus", "block_sink", "addresses", "prompt_encoder", "enhance"}
SERVER_CONCERNS = {"door", "performing", "keeping", "media", "control"}
SERVER_MAY_IMPORT = {
    **{room: set() for room in SERVER_FOUNDATION},
    "door": SERVER_FOUNDATION,
    "performing": SERVER_FOUNDATION,
    "keeping": SERVER_FOUNDATION,
    "media": SERVER_FOUNDATION | {"door"},                 # a session's role
    "engine": SERVER_FOUNDATION | {"keeping"},             # the rewind shelf
    "metrics": SERVER_FOUNDATION,
    "control": SERVER_FOUNDATION | {"engine", "door", "performing", "keeping", "media"},
    "appkeys": SERVER_FOUNDATION | SERVER_CONCERNS | {"engine", "metrics"},       # what the app holds
    "api": SERVER_FOUNDATION | SERVER_CONCERNS | {"engine", "metrics", "appkeys"},
    "pages": {"appkeys"},
    "app": SERVER_FOUNDATION | SERVER_CONCERNS | {"engine", "metrics", "appkeys", "api", "pages"},
    "serve": SERVER_FOUNDATION | SERVER_CONCERNS | {"engine", "metrics", "app"},
}


def server_room(path: Path) -> str:
    """The room of a file under server/: its folder (a concern) or its module name (the top)."""
    parts = path.relative_to(REPO / "server").with_suffix("").parts
    return parts[0]


def server_imports_of(path: Path) -> set[str]:
    """The server rooms `path` (under server/) imports, relative and absolute imports resolved."""
    package = list(path.relative_to(REPO).with_suffix("").parts[:-1])      # ["server", "media"]
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            names = [target + [a.name] for a in node.names] if not node.module else [target]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")]
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names]
        else:
            continue
        rooms |= {name[1] for name in names if len(name) > 1 and name[0] == "server"}
    return rooms


def server_sources() -> list[Path]:
    return [p for p in sorted((REPO / "server").rglob("*.py")) if p != REPO / "server" / "__init__.py"]


def imports_of(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (relative imports resolved)."""
    package = path.relative_to(REPO).parts[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(package if node.level else (node.module or "").split(".")[0])
    return names


def sources() -> list[tuple[str, Path]]:
    return [(room, p) for room in ROOMS for p in sorted((REPO / room).rglob("*.py"))]


def test_every_room_exists_and_the_rule_covers_it():
    assert all((REPO / room / "__init__.py").is_file() for room in ROOMS)
    assert not [p for p in REPO.glob("*.py")], "no loose modules at the top"


@pytest.mark.parametrize("room, path", sources(), ids=lambda v: str(v.relative_to(REPO)) if isinstance(v, Path) else v)
def test_imports_point_down_only(room, path):
    imported = imports_of(path)
    up = sorted((imported & set(ROOMS)) - MAY_IMPORT[room] - {room})
    assert not up, f"{path.relative_to(REPO)} ({room}) imports {up}; {room} may import only {sorted(MAY_IMPORT[room])}"
    bad = sorted(imported & FORBIDDEN.get(room, set()))
    assert not bad, f"{path.relative_to(REPO)} imports {bad}"


@pytest.mark.parametrize("path", server_sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_server_rooms_import_down_only(path):
    room = server_room(path)
    assert room in SERVER_MAY_IMPORT, (f"{path.relative_to(REPO)}: server room {room!r} has no place in "
                                       "SERVER_MAY_IMPORT; put it in a concern's folder or give it a rule")
    up = sorted(server_imports_of(path) - SERVER_MAY_IMPORT[room] - {room})
    assert not up, (f"{path.relative_to(REPO)} ({room}) imports server's {up}; "
                    f"{room} may import only {sorted(SERVER_MAY_IMPORT[room])}")


def test_the_server_rule_sees_a_violation(tmp_path, monkeypatch):
    """The checker itself: a concern reaching up (relative, package-relative and absolute) is seen."""
    door = tmp_path / "server" / "door"
    door.mkdir(parents=True)
    (door / "checks.py").write_text("from ..media.webrtc import x\nfrom .. import control\n"
                                    "def f():\n    import server.app\n    from .roles import PERFORMER\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert server_room(door / "checks.py") == "door"
    assert server_imports_of(door / "checks.py") == {"media", "control", "app", "door"}


def test_the_rule_sees_a_violation(tmp_path, monkeypatch):
    """The checker itself: an upward import and a relative import are seen."""
    fake = tmp_path / "streaming"
    fake.mkdir()
    (fake / "m.py").write_text("def f():\n    from server import app\n    from . import dit\n    import asyncio\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert imports_of(fake / "m.py") == {"server", "streaming", "asyncio"}


def test_generation_world_and_tools_import_without_the_server_libraries():
    code = (
        "import sys, pkgutil, importlib\n"
        f"for name in {sorted(SERVER_LIBRARIES)!r}: sys.modules[name] = None\n"
        "import streaming, kernels, bench\n"
        "for pkg in (streaming, kernels, bench):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if m.name.startswith('kernels.triton') and 'triton' not in sys.modules:\n"
        "            try: import triton\n"
        "            except ImportError: continue\n"
        "        importlib.import_module(m.name)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_longlive_bench_runs_without_aiortc_or_pyav(tmp_path):
    """GPU machines have torch and triton but no aiortc/av: the bench command must run there,
    and without --json it writes no file (the JSON goes only where --json says)."""
    code = (
        "import sys\n"
        "for name in ('av', 'aiortc', 'aiohttp', 'anthropic'): sys.modules[name] = None\n"
        "from longlive import cli\n"
        "sys.exit(cli.main(['bench', '--config', 'tiny', '--device', 'cpu', '--blocks', '1', '--warmup', '1',"
        " '--no-kernels']))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "end-to-end" in run.stdout
    assert list(tmp_path.iterdir()) == []
