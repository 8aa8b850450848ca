"""How a stream's state came to be: its start and every change since, by block.

The generator is a pure function of its history: the noise of block b is a function of
(seed, b, step) and the prompt switches happen at block boundaries, so the state at any
block boundary is fixed by a `Lineage`: the prompt and seed the stream started with, and
the changes (a prompt switch, with the transition it glides in with if any, or fresh noise)
with the stream block each took effect at (the first block generated under it; for a
transition, the first block of the glide). Replaying a lineage from a fresh `pipe.start`
reproduces the stream frame for frame; restoring a snapshot taken at block b and generating
on equals replaying `lineage.until(b)` and generating on.

A prompt is a string or a `streaming.blend.Blend` (weighted prompts). A blend of one prompt
is stored as that prompt's string, and a transition of 0 or 1 blocks as none (a cut), since
they make the same frames: equal streams have equal lineages.

A `Run` is a stretch of consecutively generated blocks of one lineage: blocks
`first_block .. first_block + blocks - 1` of the stream. A recording is a list of runs (a
seed change, a rewind or a restart begins a new one); `longlive render` replays them.

Wire form (inside a timeline's "longlive" object): a lineage is

    {PROMPT, "seed": int, "changes": [{"block": int, PROMPT, "transition"?: TRANSITION}
                                      | {"block": int, "noise_seed": int}, ...]}

where PROMPT is `"prompt": str` (one prompt) or `"prompts": [{"text": str, "weight": float}, ...]`
(a blend, weights the normalised fractions that sum to 1) and TRANSITION is
`{"blocks": int (2..MAX_TRANSITION_BLOCKS; 0 or 1 read as a cut), "method": "linear" | "slerp"}`. A run adds
`"first_block"` and `"blocks"`. Files written before blends (plain prompts only) read the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from streaming.blend import MAX_TRANSITION_BLOCKS, METHODS, Blend, BlendError, TransitionSpec
from streaming.errors import UserError
from streaming.noise import SEED_MAX

MAX_CHANGES = 100_000     # changes in one lineage read from a file


class LineageError(UserError, ValueError):
    """A lineage or run read from a file that cannot be used; one sentence naming the field."""


@dataclass(frozen=True)
class Change:
    block: int                                # the first stream block generated under the change
    prompt: str | Blend | None = None         # a prompt switch ...
    noise_seed: int | None = None             # ... or fresh noise from this block on
    transition: TransitionSpec | None = None  # how the prompt switch glides in (None: a cut)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", _canonical(self.prompt))
        if self.transition is not None and (self.prompt is None or self.transition.blocks <= 1):
            object.__setattr__(self, "transition", None)

    def to_wire(self) -> dict[str, Any]:
        if self.prompt is None:
            return {"block": self.block, "noise_seed": self.noise_seed}
        out = {"block": self.block, **prompt_wire(self.prompt)}
        if self.transition is not None:
            out["transition"] = transition_wire(self.transition)
        return out


@dataclass(frozen=True)
class Lineage:
    prompt: str | Blend
    seed: int
    changes: tuple[Change, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", _canonical(self.prompt))

    def with_prompt(self, block: int, prompt: str | Blend, transition: TransitionSpec | None = None) -> "Lineage":
        """A switch to `prompt` taking effect at `block`: a cut, or a glide over `transition.blocks` blocks."""
        return self._with(Change(block, prompt=prompt, transition=transition))

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

    def prompt_at(self, block: int) -> str | Blend:
        """The prompt (or blend) block `block` is generated under, or during a transition glides towards."""
        prompt = self.prompt
        for c in self.changes:
            if c.block <= block and c.prompt is not None:
                prompt = c.prompt
        return prompt

    def extends(self, other: "Lineage", block: int) -> bool:
        """True when this lineage, up to the boundary before `block`, is `other` up to there."""
        return self.until(block) == other.until(block)

    def to_wire(self) -> dict[str, Any]:
        return {**prompt_wire(self.prompt), "seed": self.seed, "changes": [c.to_wire() for c in self.changes]}

    @classmethod
    def from_wire(cls, obj: Any, where: str = "lineage") -> "Lineage":
        if not isinstance(obj, dict):
            raise LineageError(f"{where} must be an object")
        prompt = _prompt(obj, where)
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
            if sum(key in c for key in ("prompt", "prompts", "noise_seed")) != 1:
                raise LineageError(f"{at} needs exactly one of \"prompt\", \"prompts\" and \"noise_seed\"")
            if "noise_seed" in c:
                if "transition" in c:
                    raise LineageError(f"{at}.transition belongs to a prompt change, not a noise_seed change")
                changes.append(Change(block, noise_seed=_whole(c["noise_seed"], f"{at}.noise_seed", 0, SEED_MAX)))
            else:
                transition = _transition(c["transition"], f"{at}.transition") if "transition" in c else None
                changes.append(Change(block, prompt=_prompt(c, at), transition=transition))
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


def prompt_wire(prompt: str | Blend) -> dict[str, Any]:
    """`{"prompt": str}` for one prompt, `{"prompts": [{"text", "weight"}, ...]}` for a blend."""
    prompt = _canonical(prompt)
    if isinstance(prompt, Blend):
        return {"prompts": [{"text": t, "weight": w} for t, w in prompt.parts]}
    return {"prompt": prompt}


def transition_wire(transition: TransitionSpec) -> dict[str, Any]:
    return {"blocks": transition.blocks, "method": transition.method}


def _canonical(prompt: str | Blend | None) -> str | Blend | None:
    """A blend of one prompt is that prompt."""
    if isinstance(prompt, Blend) and prompt.single is not None:
        return prompt.single
    return prompt


def _prompt(obj: dict[str, Any], where: str) -> str | Blend:
    """The "prompt" string or "prompts" blend of a lineage or change (exactly one of them)."""
    if ("prompt" in obj) == ("prompts" in obj):
        raise LineageError(f"{where} needs exactly one of \"prompt\" and \"prompts\"")
    if "prompt" in obj:
        return _text(obj["prompt"], f"{where}.prompt")
    return _blend(obj["prompts"], f"{where}.prompts")


def _blend(items: Any, where: str) -> str | Blend:
    if not isinstance(items, list):
        raise LineageError(f"{where} must be a list of {{\"text\", \"weight\"}} objects")
    pairs: list[tuple[str, float]] = []
    for j, item in enumerate(items):
        at = f"{where}[{j}]"
        if not isinstance(item, dict):
            raise LineageError(f"{at} must be an object with text and weight")
        text = _text(item.get("text"), f"{at}.text")
        weight = item.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise LineageError(f"{at}.weight must be a number")
        try:
            pairs.append((text, float(weight)))
        except OverflowError:
            raise LineageError(f"{at}.weight must be a finite number") from None
    try:
        blend = Blend.of(pairs)
    except BlendError as e:
        raise LineageError(f"{where} is not a usable blend: {e}") from None
    # weights we wrote are already normalised: keep them bit for bit (renormalising may move the last digit)
    if len(blend.parts) == len(pairs) and all(t == bt and math.isclose(w, bw, rel_tol=0, abs_tol=1e-12)
                                              for (t, w), (bt, bw) in zip(pairs, blend.parts)):
        blend = Blend(tuple(pairs))
    return _canonical(blend)


def _transition(obj: Any, where: str) -> TransitionSpec:
    if not isinstance(obj, dict):
        raise LineageError(f"{where} must be an object with blocks and method")
    blocks = _whole(obj.get("blocks"), f"{where}.blocks", 0, MAX_TRANSITION_BLOCKS)
    method = obj.get("method", "linear")
    if method not in METHODS:
        raise LineageError(f"{where}.method must be \"linear\" or \"slerp\"")
    return TransitionSpec(blocks, method)


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
