"""How a stream's state came to be: its start and every change since, by block.

The generator is a pure function of its history: the noise of block b is a function of
(seed, b, step) and the prompt switches happen at block boundaries, so the state at any
block boundary is fixed by a `Lineage`: the prompt and seed the stream started with, and
the changes (a prompt switch, fresh noise) with the stream block each took effect at (the
first block generated under it). Replaying a lineage from a fresh `pipe.start` reproduces
the stream frame for frame; restoring a snapshot taken at block b and generating on equals
replaying `lineage.until(b)` and generating on.

A `Run` is a stretch of consecutively generated blocks of one lineage: blocks
`first_block .. first_block + blocks - 1` of the stream. A recording is a list of runs (a
seed change, a rewind or a restart begins a new one); `longlive render` replays them.

Wire form (inside a timeline's "longlive" object): a lineage is
`{"prompt": str, "seed": int, "changes": [{"block": int, "prompt": str} | {"block": int, "noise_seed": int}]}`,
a run adds `"first_block"` and `"blocks"`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streaming.errors import UserError
from streaming.noise import SEED_MAX

MAX_CHANGES = 100_000     # changes in one lineage read from a file


class LineageError(UserError, ValueError):
    """A lineage or run read from a file that cannot be used; one sentence naming the field."""


@dataclass(frozen=True)
class Change:
    block: int                       # the first stream block generated under the change
    prompt: str | None = None        # a prompt switch ...
    noise_seed: int | None = None    # ... or fresh noise from this block on

    def to_wire(self) -> dict[str, Any]:
        if self.prompt is not None:
            return {"block": self.block, "prompt": self.prompt}
        return {"block": self.block, "noise_seed": self.noise_seed}


@dataclass(frozen=True)
class Lineage:
    prompt: str
    seed: int
    changes: tuple[Change, ...] = ()

    def with_prompt(self, block: int, prompt: str) -> "Lineage":
        return self._with(Change(block, prompt=prompt))

    def with_noise(self, block: int, seed: int) -> "Lineage":
        return self._with(Change(block, noise_seed=seed))

    def _with(self, change: Change) -> "Lineage":
        # two changes of one kind at one block: the later one is the one that counts
        kept = tuple(c for c in self.changes
                     if not (c.block == change.block and (c.prompt is None) == (change.prompt is None)))
        return Lineage(self.prompt, self.seed, kept + (change,))

    def until(self, block: int) -> "Lineage":
        """The lineage of the state at the boundary before `block` (changes taking effect at
        `block` included: the boundary is where they are applied)."""
        return Lineage(self.prompt, self.seed, tuple(c for c in self.changes if c.block <= block))

    def changes_at(self, block: int) -> list[Change]:
        return [c for c in self.changes if c.block == block]

    def prompt_at(self, block: int) -> str:
        """The prompt block `block` is generated under."""
        prompt = self.prompt
        for c in self.changes:
            if c.block <= block and c.prompt is not None:
                prompt = c.prompt
        return prompt

    def extends(self, other: "Lineage", block: int) -> bool:
        """True when this lineage, up to the boundary before `block`, is `other` up to there."""
        return self.until(block) == other.until(block)

    def to_wire(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "seed": self.seed, "changes": [c.to_wire() for c in self.changes]}

    @classmethod
    def from_wire(cls, obj: Any, where: str = "lineage") -> "Lineage":
        if not isinstance(obj, dict):
            raise LineageError(f"{where} must be an object")
        prompt = _text(obj.get("prompt"), f"{where}.prompt")
        seed = _whole(obj.get("seed"), f"{where}.seed", 0, SEED_MAX)
        raw = obj.get("changes", [])
        if not isinstance(raw, list):
            raise LineageError(f"{where}.changes must be a list")
        if len(raw) > MAX_CHANGES:
            raise LineageError(f"{where}.changes has {len(raw)} entries; the limit is {MAX_CHANGES}")
        changes = []
        for i, c in enumerate(raw):
            at = f"{where}.changes[{i}]"
            if not isinstance(c, dict):
                raise LineageError(f"{at} must be an object")
            block = _whole(c.get("block"), f"{at}.block", 0, 2**62)
            if changes and block < changes[-1].block:
                raise LineageError(f"{at}.block {block} comes before the previous change's block {changes[-1].block}")
            if ("prompt" in c) == ("noise_seed" in c):
                raise LineageError(f"{at} needs exactly one of \"prompt\" and \"noise_seed\"")
            if "prompt" in c:
                changes.append(Change(block, prompt=_text(c["prompt"], f"{at}.prompt")))
            else:
                changes.append(Change(block, noise_seed=_whole(c["noise_seed"], f"{at}.noise_seed", 0, SEED_MAX)))
        return cls(prompt, seed, tuple(changes))


@dataclass(frozen=True)
class Run:
    lineage: Lineage
    first_block: int
    blocks: int

    @property
    def end_block(self) -> int:
        return self.first_block + self.blocks

    def to_wire(self) -> dict[str, Any]:
        return {**self.lineage.to_wire(), "first_block": self.first_block, "blocks": self.blocks}

    @classmethod
    def from_wire(cls, obj: Any, where: str = "run") -> "Run":
        lineage = Lineage.from_wire(obj, where)
        return cls(lineage, _whole(obj.get("first_block"), f"{where}.first_block", 0, 2**62),
                   _whole(obj.get("blocks"), f"{where}.blocks", 1, 2**62))


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LineageError(f"{where} must be a non-empty string")
    return value


def _whole(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LineageError(f"{where} must be a whole number")
    if not lo <= value <= hi:
        raise LineageError(f"{where} must be between {lo} and {hi}")
    return value
