"""Errors a user can fix, and how any error becomes one line for them.

`UserError` is the root of every error whose message is a sentence for the user (a bad
config, missing weights, an unusable device, an unwritable output, a bad control message):
the command line prints it as one line and exits with status 2, the server answers it as
an error event. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; `str(err)` is one sentence saying what and how."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__
