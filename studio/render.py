"""`longlive render TIMELINE`: play a timeline offline into a video file, exactly and resumably.

Two kinds of timeline:

- a recording's sidecar (it has our "longlive" runs, see `studio.sidecar`): the recorded
  session is replayed run by run, each from the state it began in (a seed change, a
  rewind), and the frames are checked against the sidecar's block hashes: with the same
  config and weights they are equal, so a show played live at a fast setting can be made
  again frame-exact, or at another setting, afterwards;
- a Scope v2.0 timeline: one stream from its seed, each segment's prompt (or blend of its
  weighted prompts) taking over at the first block boundary at or after its start time, as a
  cut or gliding in over its transition's blocks (`Segment.blend`, `Segment.transition_spec`),
  cut to its length.

The timeline's settings apply (config, resolution, seed, denoising steps) unless the
command line overrides them; a resolution the model cannot make is rounded to the nearest
it can, with a warning. The same timeline and seed give the same frames.

Resumable: the video is made in chunks of `CHUNK_BLOCKS` blocks in a work folder beside the
output (`.NAME.render/`); after each chunk the pipeline's state is saved there. `--resume`
continues from the last finished chunk and gives the same frames (and the same file) as an
uninterrupted render, since chunks always start at the same blocks. When done, the chunks
are joined without re-encoding, the output's own sidecar is written beside it
(`NAME.timeline.json`) and the work folder is removed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from streaming.errors import UserError

from .lineage import Lineage, Run
from .sidecar import MadeBlock, Recipe, SidecarBuilder, Source, block_hash
from .timeline import BlockClock, Timeline

log = logging.getLogger(__name__)

CHUNK_BLOCKS = 8           # blocks per chunk of the work folder (a resume restarts at a chunk boundary)
STATE = "state.pt"
JOB = "job.json"


class RenderError(UserError):
    """A render that cannot go on; one sentence for the user."""


@dataclass(frozen=True)
class Plan:
    """What to make: runs of blocks, the frames to keep, and what it is made from."""

    runs: tuple[Run, ...]
    frames: int | None              # cut the video to this many frames (None: every frame)
    source: Source
    recipe: Recipe | None           # the sidecar's hashes to compare with, when it has them

    @property
    def blocks(self) -> int:
        return sum(r.blocks for r in self.runs)

    def fingerprint(self, weights: str) -> str:
        text = json.dumps({"runs": [r.to_wire() for r in self.runs], "frames": self.frames,
                           "source": self.source.__dict__, "weights": weights}, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()


def run(args: argparse.Namespace) -> int:
    from streaming.config import choose_preset, load_config
    from streaming.pipeline import VideoPipeline

    from .videofile import check_output

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    timeline = Timeline.load(args.timeline)
    recipe = Recipe.from_timeline(timeline)
    output = args.output or default_output(args.timeline)
    check_output(output)
    config_name = args.config or (recipe.config if recipe else None)
    cfg = load_config(choose_preset(config_name, args.weights))
    size = args.resolution or ((timeline.settings.width, timeline.settings.height)
                               if timeline.settings.width and timeline.settings.height else None)
    changes: dict[str, Any] = {}
    if size is not None:
        width, height = nearest_size(cfg, *size)
        changes["video"] = {"width": width, "height": height}
    if timeline.settings.denoising_steps:
        changes["schedule"] = {"denoising_steps": list(timeline.settings.denoising_steps)}
    if changes:
        cfg = cfg.replace(**changes)
    weights = "embedded" if args.weights is None else Path(args.weights).name
    plan = make_plan(timeline, recipe, cfg, args.seed, weights)
    pipe = VideoPipeline.from_config(cfg, args.weights, args.device)
    if pipe.embedded_default:
        log.warning("no weights given: rendering with the tiny random-weight default (%s)", cfg.source)
    start = time.perf_counter()
    made = Renderer(pipe, plan, output, weights).render(resume=args.resume)
    took = time.perf_counter() - start
    fps = cfg.video.fps
    print(f"wrote {output} ({made.frames} frames, {made.frames / fps:.2f} s at {fps} fps, "
          f"{cfg.video.width}x{cfg.video.height}) in {took:.1f} s")
    if plan.recipe is not None:
        print(compare(plan.recipe, made, plan.source, weights))
    return 0


def default_output(timeline_path: Path) -> Path:
    """x.timeline.json -> x.render.mp4 (never the recording's own x.mp4)."""
    name = timeline_path.name
    for suffix in (".timeline.json", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return timeline_path.with_name(name + ".render.mp4")


def nearest_size(cfg: Any, width: int, height: int) -> tuple[int, int]:
    """The nearest frame size the model can make (multiples of the VAE and patch factor)."""
    factor = cfg.vae.spatial_factor * max(cfg.model.patch_size[1], cfg.model.patch_size[2])
    w, h = (max(factor, round(v / factor) * factor) for v in (width, height))
    if (w, h) != (width, height):
        log.warning("the model makes frames in multiples of %d pixels: rendering %dx%d instead of %dx%d",
                    factor, w, h, width, height)
    return w, h


def make_plan(timeline: Timeline, recipe: Recipe | None, cfg: Any, seed: int | None, weights: str) -> Plan:
    f = cfg.latent_frames_per_block
    clock = BlockClock(cfg.video.fps, f)
    if recipe is not None:
        runs = recipe.runs
        if seed is not None:
            runs = tuple(Run(Lineage(r.lineage.prompt, seed, r.lineage.changes), r.first_block, r.blocks)
                         for r in runs)
        frames = recipe.total_frames        # a render's sidecar may end in a cut block
        first_seed = runs[0].lineage.seed
    else:
        schedule = timeline.schedule(clock)
        first_seed = seed if seed is not None else (timeline.settings.seed or 0)
        lineage = Lineage(schedule[0][1].blend(), first_seed)    # (the first starts the stream: no transition)
        for block, segment in schedule[1:]:
            lineage = lineage.with_prompt(block, segment.blend(), segment.transition_spec())
        runs = (Run(lineage, 0, clock.blocks_for(timeline.duration)),)
        frames = clock.frames_for(timeline.duration)
    source = Source(config=cfg.name, weights=weights, fps=float(cfg.video.fps), latent_frames_per_block=f,
                    width=cfg.video.width, height=cfg.video.height,
                    denoising_steps=tuple(int(t) for t in cfg.schedule.denoising_steps), seed=first_seed)
    return Plan(runs, frames, source, recipe)


def compare(recipe: Recipe, made: SidecarBuilder, source: Source, weights: str) -> str:
    """One line: do the frames equal the recording's?"""
    ours = [b["hash"] for b in made.blocks]
    same_source = (recipe.config, recipe.weights, recipe.width, recipe.height) == \
        (source.config, weights, source.width, source.height)
    differ = sum(a != b for a, b in zip(ours, recipe.hashes)) + abs(len(ours) - len(recipe.hashes))
    if differ == 0:
        return f"the frames equal the recording's: all {len(ours)} blocks match its hashes"
    if not same_source:
        return (f"rendered with {source.config} at {source.width}x{source.height} ({weights}); the recording was "
                f"{recipe.config} at {recipe.width}x{recipe.height} ({recipe.weights}), so its hashes do not apply")
    return f"warning: {differ} of {len(recipe.hashes)} blocks differ from the recording's hashes"


class Renderer:
    def __init__(self, pipe: Any, plan: Plan, output: Path, weights: str):
        self.pipe, self.plan, self.output = pipe, plan, Path(output)
        self.work = self.output.parent / f".{self.output.name}.render"
        self.fingerprint = plan.fingerprint(weights)
        # states a later run begins in, to be kept when an earlier run passes through them
        self._wanted = {(r.lineage.until(r.first_block), r.first_block) for r in plan.runs[1:]}
        self._snapshots: dict[Any, Any] = {}

    # -- the whole job -------------------------------------------------------------------------------
    def render(self, resume: bool = False) -> SidecarBuilder:
        from .videofile import concat_videos

        builder, done = self._begin(resume)
        total = self.plan.frames if self.plan.frames is not None else self._frames_upper_bound()
        with tqdm(total=total, initial=min(builder.frames, total), unit="frame", desc="render", file=sys.stderr,
                  disable=None) as bar:
            for chunk_start in range(done, self.plan.blocks, CHUNK_BLOCKS):
                self._chunk(chunk_start, min(chunk_start + CHUNK_BLOCKS, self.plan.blocks), builder, bar)
        parts = sorted(self.work.glob("chunk-*.mp4"))
        concat_videos(parts, self.output)
        builder.timeline().save(self.output.with_name(_stem(self.output) + ".timeline.json"))
        shutil.rmtree(self.work, ignore_errors=True)
        return builder

    def _begin(self, resume: bool) -> tuple[SidecarBuilder, int]:
        job = self.work / JOB
        if resume and job.is_file():
            try:
                saved = json.loads(job.read_text())
            except ValueError:
                saved = {}
            if saved.get("fingerprint") != self.fingerprint:
                raise RenderError(f"the interrupted render in {self.work} was of another timeline or setting; "
                                  f"render without --resume to start over")
            state = self.work / STATE
            if state.is_file():
                return self._load(state)
        elif resume:
            log.warning("no interrupted render of %s to resume; starting from the beginning", self.output)
        elif self.work.exists():
            log.warning("starting %s over (an interrupted render was there; --resume continues one)", self.output)
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        _atomic_write(job, json.dumps({"fingerprint": self.fingerprint}).encode())
        return SidecarBuilder(self.plan.source), 0

    def _frames_upper_bound(self) -> int:
        return sum(self._frames_of_run(r) for r in self.plan.runs)

    def _frames_of_run(self, r: Run) -> int:
        clock = BlockClock(self.plan.source.fps, self.plan.source.latent_frames_per_block)
        return sum(clock.frames_in(b) for b in range(r.first_block, r.end_block))

    # -- one chunk -----------------------------------------------------------------------------------
    def _chunk(self, first: int, end: int, builder: SidecarBuilder, bar: Any) -> None:
        from .videofile import VideoWriter

        src = self.plan.source
        part = self.work / f"chunk-{first // CHUNK_BLOCKS:05d}.mp4"
        with VideoWriter(part, src.width, src.height, round(src.fps)) as out:
            for k in range(first, end):
                frames, made = self._block(k)
                if self.plan.frames is not None:
                    frames = frames[: max(0, self.plan.frames - builder.frames)]
                    made.frames = frames
                if len(frames):
                    out.write(frames)
                    builder.add(made, block_hash(frames))
                    bar.update(len(frames))
        self._save(end, builder)

    def _block(self, k: int) -> tuple[np.ndarray, MadeBlock]:
        """Output block k: reach its run's state if it begins one, then generate it."""
        run_index, b = self._locate(k)
        r = self.plan.runs[run_index]
        cause = None
        if b == r.first_block:
            self._reach(r.lineage, r.first_block)
            cause = None if run_index == 0 else "jump"
        blk = self.pipe.next_frames()
        self._apply(r.lineage, b + 1)
        self._keep(r.lineage, b + 1)
        frames = np.asarray(blk.frames)
        return frames, MadeBlock(frames, int(blk.block), blk.prompt, r.lineage, cause)

    def _locate(self, k: int) -> tuple[int, int]:
        for i, r in enumerate(self.plan.runs):
            if k < r.blocks:
                return i, r.first_block + k
            k -= r.blocks
        raise IndexError(k)

    def _reach(self, lineage: Lineage, block: int) -> None:
        """The state before `block` of `lineage`: a kept snapshot, else replayed from the start."""
        key = (lineage.until(block), block)
        snap = self._snapshots.get(key)
        if snap is not None:
            self.pipe.restore(snap)
            return
        self.pipe.start(lineage.prompt, lineage.seed)
        self._apply(lineage, 0)
        # the blocks before the run (a recording that began mid-stream) are made again, unseen
        with tqdm(total=block, unit="block", desc="catch up", file=sys.stderr, disable=None if block else True,
                  leave=False) as bar:
            for b in range(block):
                self.pipe.next_frames()
                self._apply(lineage, b + 1)
                self._keep(lineage, b + 1)
                bar.update(1)

    def _apply(self, lineage: Lineage, block: int) -> None:
        """The changes that take effect at `block`, at the boundary before it."""
        for change in lineage.changes_at(block):
            if change.prompt is not None:
                self.pipe.switch_prompt(change.prompt, transition=change.transition)
            else:
                self.pipe.reseed_noise(change.noise_seed)

    def _keep(self, lineage: Lineage, block: int) -> None:
        if not self._wanted:              # (most renders: one run, nothing to keep)
            return
        key = (lineage.until(block), block)
        if key in self._wanted and key not in self._snapshots:
            self._snapshots[key] = self.pipe.snapshot("cpu")

    # -- the work folder -----------------------------------------------------------------------------
    def _save(self, done: int, builder: SidecarBuilder) -> None:
        import torch

        state = {"fingerprint": self.fingerprint, "done": done,
                 "builder": {"runs": [r.to_wire() for r in builder.runs], "blocks": builder.blocks,
                             "events": builder.events, "frames": builder.frames},
                 "pipeline": self.pipe.snapshot("cpu") if done < self.plan.blocks else None}
        tmp = self.work / (STATE + ".partial")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.work / STATE)

    def _load(self, path: Path) -> tuple[SidecarBuilder, int]:
        import torch

        try:
            # our own file, written by _save in a folder we made: it holds the pipeline's snapshot objects
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise RenderError(f"the saved state in {path} cannot be read ({type(e).__name__}); "
                              f"render without --resume to start over") from None
        if state.get("fingerprint") != self.fingerprint:
            raise RenderError(f"the saved state in {path} is of another render; render without --resume")
        done = int(state["done"])
        for chunk in range((done + CHUNK_BLOCKS - 1) // CHUNK_BLOCKS):
            if not (self.work / f"chunk-{chunk:05d}.mp4").is_file():
                raise RenderError(f"chunk {chunk} of the interrupted render is missing from {self.work}; "
                                  f"render without --resume to start over")
        for stale in self.work.glob(".chunk-*"):
            stale.unlink(missing_ok=True)
        builder = SidecarBuilder(self.plan.source)
        saved = state["builder"]
        builder.runs = [Run.from_wire(r) for r in saved["runs"]]
        builder.blocks, builder.events, builder.frames = saved["blocks"], saved["events"], saved["frames"]
        if state["pipeline"] is not None:   # (when the next block begins a run, _block reaches its state instead)
            self.pipe.restore(state["pipeline"])
        log.info("resuming %s at block %d of %d", self.output, done, self.plan.blocks)
        return builder, done


def _stem(path: Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)
