"""`longlive render TIMELINE`: play a timeline offline into a video file, exactly and resumably.

Two kinds of timeline:

- a recording's sidecar (it has our "longlive" runs, see `studio.sidecar`): the recorded
  session is replayed run by run, each from the state it began in (a seed change, a
  rewind), and the frames are checked against the sidecar's block hashes: with the same
  config and weights they are equal, so a show played live at a fast setting can be made
  again frame-exact, or at another setting, afterwards;
- a Scope timeline (a v2.x timeline file, or the timeline of a Scope workflow,
  `*.scope-workflow.json`): one stream from its seed, each segment's prompt (or blend of its
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
(`NAME.timeline.json`) and the work folder is removed. Ctrl-C (or SIGTERM) keeps the finished
chunks and says, in one line, what was kept and the command that resumes.

It says what it is about to do where that is not obvious: the frame size and where it comes
from (the timeline, `--resolution` or the config), and, for a recording that began mid-stream,
that the blocks before its start are replayed first (unseen) and about how long that takes.
Without a terminal for the progress bar (a log, a pipe) each finished chunk is one line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from streaming.errors import UserError

from . import stopping
from .lineage import Lineage, Run
from .sidecar import MadeBlock, Recipe, SidecarBuilder, Source, block_hash
from .timeline import BlockClock, Timeline

log = logging.getLogger(__name__)

CHUNK_BLOCKS = 8           # blocks per chunk of the work folder (a resume restarts at a chunk boundary)
# a replay says how long it will take after timing MEASURE_BLOCKS blocks that follow WARMUP_BLOCKS
# (the first blocks of a process run several times slower than the rest)
WARMUP_BLOCKS, MEASURE_BLOCKS = 2, 2
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
    own = (cfg.video.width, cfg.video.height)
    if changes:
        cfg = cfg.replace(**changes)
    weights = "embedded" if args.weights is None else Path(args.weights).name
    plan = make_plan(timeline, recipe, cfg, args.seed, weights)
    for note in timeline.notes:          # what of the file is not played as written (studio.timeline)
        print(f"{args.timeline.name}: {note}")
    pipe = VideoPipeline.from_config(cfg, args.weights, args.device)
    if pipe.embedded_default:
        log.warning("no weights given: rendering with %s", cfg.about or cfg.source)
    # (said once the model is there: a mistake before it stays the one line it is)
    say(size_line(cfg, own, "--resolution" if args.resolution else
                  None if size is None else "recording" if recipe is not None else "timeline"))
    start = time.perf_counter()
    renderer = Renderer(pipe, plan, output, weights)
    try:
        made = renderer.render(resume=args.resume)
    except (KeyboardInterrupt, SystemExit) as e:    # Ctrl-C; SIGTERM arrives as SystemExit(143)
        if isinstance(e, KeyboardInterrupt) or (isinstance(e.code, int) and e.code > 128):
            say(renderer.stopped_line(resume_command(args, output)))
        raise
    took = time.perf_counter() - start
    fps = cfg.video.fps
    print(f"wrote {output} ({made.frames} frames, {made.frames / fps:.2f} s at {fps} fps, "
          f"{cfg.video.width}x{cfg.video.height}) in {took:.1f} s")
    if plan.recipe is not None:
        print(compare(plan.recipe, made, plan.source, weights))
    return 0


def say(line: str) -> None:
    """One line for the user on stderr, above the progress bar when one is showing."""
    tqdm.write(f"longlive render: {line}", file=sys.stderr)
    sys.stderr.flush()


def size_line(cfg: Any, own: tuple[int, int], source: str | None) -> str:
    """Which frame size the render makes, why, and how to change it. `source`: "--resolution",
    "recording", "timeline", or None (the config's own size)."""
    w, h = cfg.video.width, cfg.video.height
    why = {"--resolution": "as --resolution says", "recording": "the recording's size",
           "timeline": "the timeline's own resolution setting"}.get(source, f"the {cfg.name} config's own size")
    line = f"rendering at {w}x{h}, {why}; --resolution WxH renders another size"
    if (w, h) != own:
        line += f" (the {cfg.name} config's own is {own[0]}x{own[1]})"
    return line


def about(seconds: float) -> str:
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


def program() -> list[str]:
    """How this command was started, to be typed again: `longlive` where that is the script on
    PATH, else the script's path as given, else `PYTHON -m longlive`."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "longlive":
        found = shutil.which("longlive")
        try:
            if found and os.path.samefile(found, argv0):
                return ["longlive"]
        except OSError:
            pass
        return [argv0]
    return [sys.executable, "-m", "longlive"]


def resume_command(args: argparse.Namespace, output: Path) -> str:
    """The command that continues this render: the same timeline, output and settings, and --resume."""
    words = [*program(), "render", str(args.timeline), "-o", str(output)]
    if args.seed is not None:
        words += ["--seed", str(args.seed)]
    if args.resolution:
        words += ["--resolution", f"{args.resolution[0]}x{args.resolution[1]}"]
    if args.config:
        words += ["--config", str(args.config)]
    if args.weights is not None:
        words += ["--weights", str(args.weights)]
    if args.device:
        words += ["--device", str(args.device)]
    return shlex.join(words + ["--resume"])


def default_output(timeline_path: Path) -> Path:
    """x.timeline.json (or x.scope-workflow.json) -> x.render.mp4 (never the recording's own x.mp4)."""
    name = timeline_path.name
    for suffix in (".timeline.json", ".scope-workflow.json", ".json"):
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
        self.saved = 0               # output blocks finished and kept in the work folder

    # -- the whole job -------------------------------------------------------------------------------
    def render(self, resume: bool = False) -> SidecarBuilder:
        from .videofile import concat_videos

        builder, done = self._begin(resume)
        total = self.plan.frames if self.plan.frames is not None else self._frames_upper_bound()
        chunks = -(-self.plan.blocks // CHUNK_BLOCKS)
        with tqdm(total=total, initial=min(builder.frames, total), unit="frame", desc="render", file=sys.stderr,
                  disable=None) as bar:
            for chunk_start in range(done, self.plan.blocks, CHUNK_BLOCKS):
                end = min(chunk_start + CHUNK_BLOCKS, self.plan.blocks)
                self._chunk(chunk_start, end, builder, bar)
                if bar.disable:          # (no terminal: a line per chunk stands in for the bar)
                    say(f"chunk {chunk_start // CHUNK_BLOCKS + 1} of {chunks} done "
                        f"({end} of {self.plan.blocks} blocks, {builder.frames} frames)")
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

    def stopped_line(self, command: str) -> str:
        """What an interrupted render kept, and the command that continues it."""
        if self.saved == 0:
            return (f"stopped before its first chunk of {CHUNK_BLOCKS} blocks was finished, so nothing was kept; "
                    f"start again with: {command}")
        return (f"stopped; kept the first {self.saved} of {self.plan.blocks} blocks (the finished chunks) in "
                f"{self.work}; resume with: {command}")

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
            self._reach(r.lineage, r.first_block, run_index)
            cause = None if run_index == 0 else "jump"
        stopping.check()
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

    def _reach(self, lineage: Lineage, block: int, run_index: int = 0) -> None:
        """The state before `block` of `lineage`: a kept snapshot, else replayed from the start
        (said in one line, with about how long it takes once the first blocks are timed)."""
        key = (lineage.until(block), block)
        snap = self._snapshots.get(key)
        if snap is not None:
            self.pipe.restore(snap)
            return
        self.pipe.start(lineage.prompt, lineage.seed)
        self._apply(lineage, 0)
        # the blocks before the run (a recording that began mid-stream) are made again, unseen
        what = (f"the recording began {block} blocks into its live session: replaying those {block} blocks "
                f"first (unseen) to reach its start" if run_index == 0 else
                f"part {run_index + 1} of the recording begins {block} blocks into a stream whose state was not "
                f"kept: replaying those {block} blocks first (unseen) to reach it")
        timed = WARMUP_BLOCKS + MEASURE_BLOCKS
        if 0 < block <= timed:
            say(what)
        t0 = time.perf_counter()
        with tqdm(total=block, unit="block", desc="catch up", file=sys.stderr, disable=None if block else True,
                  leave=False) as bar:
            for b in range(block):
                if b == WARMUP_BLOCKS:
                    t1 = time.perf_counter()
                self.pipe.next_frames()
                self._apply(lineage, b + 1)
                self._keep(lineage, b + 1)
                bar.update(1)
                if b + 1 == timed and block > timed:
                    now = time.perf_counter()
                    per_block = (now - t1) / MEASURE_BLOCKS
                    say(f"{what}, {about(now - t0 + per_block * (block - timed))} ({per_block:.2f} s a block)")

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
        self.saved = done

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
        self.saved = done
        log.info("resuming %s at block %d of %d", self.output, done, self.plan.blocks)
        return builder, done


def _stem(path: Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)
