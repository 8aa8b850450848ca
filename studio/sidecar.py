"""The timeline beside a video: what made each of its blocks, so it can be made again.

A recording (and a render) writes, next to its video, a Scope v2.0 timeline whose segments
are the prompts as they played, stamped "exportedAt" (ISO 8601 UTC, as Scope stamps its exports:
when the file was written), plus our own fields under "longlive":

    {"format": 1, "config": "tiny", "weights": "embedded" | folder name, "fps": 16,
     "latent_frames_per_block": 3, "width": 320, "height": 192,
     "runs":   [{"prompt" | "prompts", "seed", "changes": [...], "first_block", "blocks"}, ...],  (studio.lineage.Run)
     "blocks": [{"frames": 9, "hash": "<sha256 of the block's frames, 24 hex digits>"}, ...],
     "events": [{"kind": "start" | "prompt" | "rewind to segment 2" | "seed 7" | "dropped" | ...,
                 "block": recorded block, "time": seconds into the video, "prompt"?, "prompts"?,
                 "transition"?, "blocks"?}, ...]}

`runs` are what `longlive render` replays; `blocks` lets it check that it made the same
frames; `events` say what happened where (a rewind, a seed change, blocks the recorder lost).
An event that begins a prompt names it in "prompt" (a blend's label, `a (70%) + b (30%)`);
when it is a blend, "prompts" lists its texts and normalised weights, and when it glides in,
"transition" holds the glide's `{"blocks", "method"}` (the lineage's wire form, see
`studio.lineage`). The exported segments are these prompts: a blend's weights are written
x100 as Scope writes them (70 and 30), a glide as the segment's transitionSteps and
temporalInterpolationMethod.
`SidecarBuilder` grows one block at a time (the recorder, the renderer); `Recipe` reads one back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from streaming.blend import Blend

from .lineage import Lineage, LineageError, Run, prompt_wire, transition_wire
from .timeline import Segment, Settings, Timeline, TimelineError, Transition, WeightedPrompt, utc_now

FORMAT = 1
HASH_CHARS = 24


def block_hash(frames: np.ndarray) -> str:
    """A block's frames [N, H, W, 3] uint8 -> a short hex digest of their shape and bytes."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    h = hashlib.sha256(repr(frames.shape).encode())
    h.update(frames.data)
    return h.hexdigest()[:HASH_CHARS]


class Block(Protocol):
    frames: np.ndarray
    block: int
    prompt: str
    lineage: Lineage
    cause: str | None
    dropped_before: int


@dataclass
class MadeBlock:
    """A block made offline (a render, an interactive session), as `SidecarBuilder.add` takes it.
    With the hash given, only the frame count matters: `frames` may be an empty stand-in of that length."""

    frames: np.ndarray
    block: int
    prompt: str
    lineage: Lineage
    cause: str | None = None
    dropped_before: int = 0


@dataclass(frozen=True)
class Source:
    """What made the video, besides its runs: the same source makes the same frames."""

    config: str
    weights: str            # "embedded" (the random-weight default) or the weights folder's name
    fps: float
    latent_frames_per_block: int
    width: int
    height: int
    denoising_steps: tuple[int, ...]
    seed: int


class SidecarBuilder:
    def __init__(self, source: Source):
        self.source = source
        self.runs: list[Run] = []
        self.blocks: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.frames = 0                     # video frames so far

    @property
    def seconds(self) -> float:
        return self.frames / self.source.fps

    def add(self, blk: Block, frames_hash: str | None = None) -> None:
        """One more block of the video, in order."""
        n = int(len(blk.frames))
        here = {"block": len(self.blocks), "time": round(self.seconds, 6)}
        if blk.dropped_before:
            self.lost(blk.dropped_before)
        run = self.runs[-1] if self.runs else None
        if run is not None and blk.block == run.end_block and blk.lineage.extends(run.lineage, blk.block - 1):
            self.runs[-1] = Run(blk.lineage, run.first_block, run.blocks + 1)
            if blk.lineage.prompt_at(blk.block) != run.lineage.prompt_at(blk.block - 1):
                self.events.append({"kind": "prompt", **here, "prompt": blk.prompt, **_structure(blk)})
        else:
            self.runs.append(Run(blk.lineage, blk.block, 1))
            kind = blk.cause or ("start" if run is None else "jump")
            self.events.append({"kind": kind, **here, "prompt": blk.prompt, **_structure(blk)})
        self.blocks.append({"frames": n, "hash": frames_hash or block_hash(blk.frames)})
        self.frames += n

    def lost(self, blocks: int) -> None:
        """Blocks that never reached the video, after the last one added."""
        self.events.append({"kind": "dropped", "block": len(self.blocks), "time": round(self.seconds, 6),
                            "blocks": int(blocks)})

    def timeline(self, exported_at: str | None = None) -> Timeline:
        """The video so far as a timeline (segments: the prompts and blends as they played, and
        the transitions they glided in with), stamped exportedAt (default: now, as Scope writes it)."""
        src = self.source
        segments: list[Segment] = []
        starts = [e for e in self.events if "prompt" in e]
        for i, e in enumerate(starts):
            end = starts[i + 1]["time"] if i + 1 < len(starts) else self.seconds
            prompts = _weighted(e)
            if segments and segments[-1].prompts == prompts:
                last = segments[-1]
                segments[-1] = Segment(last.start, max(end, last.end), last.prompts, last.transition)
            elif end > e["time"]:
                t = e.get("transition")
                segments.append(Segment(e["time"], end, prompts,
                                        None if t is None else Transition(t["blocks"], t["method"])))
        ours = {"format": FORMAT, "config": src.config, "weights": src.weights, "fps": src.fps,
                "latent_frames_per_block": src.latent_frames_per_block, "width": src.width, "height": src.height,
                "runs": [r.to_wire() for r in self.runs], "blocks": list(self.blocks), "events": list(self.events)}
        settings = Settings(pipeline="longlive", width=src.width, height=src.height, seed=src.seed,
                            denoising_steps=tuple(src.denoising_steps))
        return Timeline(tuple(segments), settings, exported_at=exported_at or utc_now(), longlive=ours)


@dataclass(frozen=True)
class Recipe:
    """A sidecar read back: how to make its video again, and the hashes to check against."""

    config: str
    weights: str
    fps: float
    latent_frames_per_block: int
    width: int
    height: int
    runs: tuple[Run, ...]
    hashes: tuple[str, ...]
    frames: tuple[int, ...] = ()     # video frames of each block (the last may be cut short)

    @classmethod
    def from_timeline(cls, timeline: Timeline) -> "Recipe | None":
        """The recipe in `timeline.longlive`, None when it has none (a timeline from Scope)."""
        ours = timeline.longlive
        if not ours or "runs" not in ours:
            return None
        try:
            if ours.get("format") != FORMAT:
                raise TimelineError(f"longlive.format {ours.get('format')!r} is not supported (this reads {FORMAT})")
            runs = ours["runs"]
            if not isinstance(runs, list) or not runs:
                raise TimelineError("longlive.runs must list at least one run")
            parsed = tuple(Run.from_wire(r, f"longlive.runs[{i}]") for i, r in enumerate(runs))
            blocks = ours.get("blocks", [])
            if not isinstance(blocks, list) or not all(
                    isinstance(b, dict) and isinstance(b.get("hash"), str) and isinstance(b.get("frames"), int)
                    and not isinstance(b.get("frames"), bool) and b["frames"] >= 0 for b in blocks):
                raise TimelineError("longlive.blocks must list objects with a \"hash\" string and a \"frames\" count")
            return cls(config=_str(ours, "config"), weights=_str(ours, "weights"), fps=_number(ours, "fps"),
                       latent_frames_per_block=int(_number(ours, "latent_frames_per_block")),
                       width=int(_number(ours, "width")), height=int(_number(ours, "height")),
                       runs=parsed, hashes=tuple(b["hash"] for b in blocks), frames=tuple(b["frames"] for b in blocks))
        except LineageError as e:
            raise TimelineError(str(e)) from None

    @property
    def blocks(self) -> int:
        return sum(r.blocks for r in self.runs)

    @property
    def total_frames(self) -> int | None:
        """Frames of the whole video, when every block's count is known."""
        return sum(self.frames) if len(self.frames) == self.blocks else None


def _structure(blk: Block) -> dict[str, Any]:
    """What an event beginning a prompt says besides its label: the blend's parts, the glide."""
    out: dict[str, Any] = {}
    prompt = blk.lineage.prompt_at(blk.block)
    if isinstance(prompt, Blend):
        out.update(prompt_wire(prompt))
    for change in blk.lineage.changes_at(blk.block):
        if change.transition is not None:
            out["transition"] = transition_wire(change.transition)
    return out


def _weighted(event: dict[str, Any]) -> tuple[WeightedPrompt, ...]:
    """An event's prompts as a segment's: a blend's normalised weights x100 (Scope's 70/30)."""
    if "prompts" not in event:
        return (WeightedPrompt(event["prompt"], 100.0),)
    return tuple(WeightedPrompt(p["text"], round(p["weight"] * 100, 6)) for p in event["prompts"])


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise TimelineError(f"longlive.{key} must be a non-empty string")
    return value


def _number(obj: dict[str, Any], key: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise TimelineError(f"longlive.{key} must be a positive number")
    return value
