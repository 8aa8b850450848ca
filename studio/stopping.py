"""A stop a signal asked for (SIGTERM, through the command line's handler).

The handler raises `SystemExit` at once, which unwinds the command as Ctrl-C does (files being
written are removed). A long command also calls `check()` at each block: should that exception
have been raised where something swallowed it (a library's callback that was running when the
signal came), the command still stops at its next block.
"""

from __future__ import annotations

_requested: list[int] = []


def request(code: int) -> None:
    """A stop with exit status `code` is asked for."""
    _requested.append(code)


def check() -> None:
    """Raise `SystemExit` with the status asked for, if a stop was."""
    if _requested:
        raise SystemExit(_requested[0])
