"""Training checkpoints: written whole or not at all, read back with one clear error.

A checkpoint is a torch pickle of plain data (state dicts, step counters, random states). It is
written to a temporary file in the same folder and moved into place, so a run killed while
saving leaves the previous checkpoint intact, and `--resume` always finds a complete one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from streaming.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be resumed from; one sentence naming the file."""


def save(path: str | Path, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path} to resume from") from None
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable training checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint of this project")
    return state
