"""Does the toy world's model do what its words say?  `python -m bench.toy_eval`

The method (every figure from generated pixels, through `bench.toy_measure`):

- Prompts: scenes the model never saw in training (`training.clips.EVAL_SCENES`, a fixed tenth
  of all scenes), each said by a caption drawn afresh (forms, synonyms, made-up words), with a
  noise seed of its own. Each runs as a stream of the product's own pipeline.
- Attributes: frames from the second block on (3.6 s of video; every second frame) are
  measured: the object is the pixels far from the setting's colour; its colour is the nearest
  hue (or white/black by chroma) of its interior's mean, its shape the class of its fill ratio
  (area over bounding box: a ball ~0.79, a square 1, a triangle 0.5), the setting the nearest
  setting colour of the frame's median. Each is the majority over the frames, right when it
  is the word's.
- Motion: the centroid's track over 3 s (48 frames), unwrapped on the frame's torus (the world
  wraps objects round the edges): moving words are right when the larger of the net x and y
  moves is the word's axis and sign and at least 5 % of the width; still when the net move is
  under 5 % of the width; bouncing when the net move is under 5 % of the width and the height
  varies by at least 12 pixels.
- Switches: a stream runs 4 blocks under scene A, then switches (the product's re-cache) to
  scene B, A with one attribute changed (not to or from bouncing, whose lift the world itself
  drops at once), for 2 more blocks. The new attribute shows when the second block after the
  switch measures as B says (motion: over both blocks after it); the jump is the centroid's
  move from the last frame before the switch to the first after it, right when under 10 % of
  the width.
- A long stream (`--long-minutes`): one prompt for that long; the object's area, interior
  saturation and edge contrast (`toy_measure.quality`) in the last minute, as a share of the
  first minute's (medians), each right when within 25 %.

Prints one line per figure with its threshold, and writes them as JSON with `--json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.toy_measure import Seen, measure, quality
from training.captions import caption
from training.clips import EVAL_SCENES, switched
from training.world import HEIGHT, WIDTH, Scene

THRESHOLDS = {"colour": 0.9, "setting": 0.9, "shape": 0.8, "motion": 0.9, "switch_shows": 0.9,
              "switch_jump": 0.9, "long_area": 0.25, "long_saturation": 0.25, "long_edge": 0.25}
STILL_SHARE = 0.05          # of the width over 3 s
BOUNCE_PX = 12.0
JUMP_SHARE = 0.10


@dataclass
class Tally:
    right: int = 0
    total: int = 0
    misses: list[str] = field(default_factory=list)

    def add(self, ok: bool, what: str) -> None:
        self.total += 1
        self.right += bool(ok)
        if not ok and len(self.misses) < 12:
            self.misses.append(what)

    @property
    def share(self) -> float:
        return self.right / self.total if self.total else 0.0


def majority(values: list) -> object:
    values = [v for v in values if v is not None]
    return Counter(values).most_common(1)[0][0] if values else None


def net_move(seen: list[Seen]) -> tuple[float, float, float]:
    """(dx, dy, height range) of the object's track, unwrapped on the torus; frames where it is
    not found are skipped."""
    dx = dy = 0.0
    ys = []
    last = None
    for s in seen:
        if not s.found:
            continue
        if last is not None:
            dx += (s.x - last.x + WIDTH / 2) % WIDTH - WIDTH / 2
            dy += (s.y - last.y + HEIGHT / 2) % HEIGHT - HEIGHT / 2
        ys.append(dy)
        last = s
    return dx, dy, (max(ys) - min(ys)) if ys else 0.0


def motion_of(seen: list[Seen], seconds: float) -> str | None:
    if sum(s.found for s in seen) < len(seen) // 2:
        return None
    dx, dy, lift = net_move(seen)
    small = STILL_SHARE * WIDTH * seconds / 3.0
    if max(abs(dx), abs(dy)) < small:
        return "bouncing" if lift >= BOUNCE_PX else "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


class Streams:
    """Streams of the product's pipeline: a prompt, blocks of frames, a switch."""

    def __init__(self, weights: str | None, config: str):
        from streaming.config import load_config
        from streaming.pipeline import VideoPipeline

        self.pipe = VideoPipeline.from_config(load_config(config), weights=weights)

    def run(self, prompt: str, seed: int, blocks: int, switch_at: int | None = None,
            switch_to: str | None = None) -> list[np.ndarray]:
        """Frames of each block."""
        self.pipe.start(prompt, seed)
        out = []
        for b in range(blocks):
            if switch_at is not None and b == switch_at:
                self.pipe.switch_prompt(switch_to)
            out.append(self.pipe.next_frames().frames)
        return out


def evaluate_attributes(streams: Streams, n: int, seed: int, report) -> dict[str, Tally]:
    rng = np.random.default_rng([seed, 1])
    tallies = {k: Tally() for k in ("colour", "setting", "shape", "motion")}
    for i in range(n):
        scene = EVAL_SCENES[int(rng.integers(len(EVAL_SCENES)))]
        text = caption(scene, rng)
        blocks = streams.run(text, seed * 1000 + i, 5)
        frames = np.concatenate(blocks[1:])                    # from the second block on
        seen = [measure(f) for f in frames[::2]]
        found = [s for s in seen if s.found]
        tallies["colour"].add(majority([s.colour for s in found]) == scene.colour, f"{text!r}: {majority([s.colour for s in found])}")
        tallies["setting"].add(majority([s.setting for s in seen]) == scene.setting, f"{text!r}: {majority([s.setting for s in seen])}")
        tallies["shape"].add(majority([s.shape for s in found]) == scene.shape, f"{text!r}: {majority([s.shape for s in found])}")
        track = [measure(f) for f in frames[:48]]
        moved = motion_of(track, 3.0)
        tallies["motion"].add(moved == scene.motion, f"{text!r}: {moved}")
        report(f"prompt {i + 1}/{n}")
    return tallies


def _attribute_of(blocks: list[np.ndarray], name: str) -> object:
    frames = np.concatenate(blocks)
    if name == "motion":
        return motion_of([measure(f) for f in frames], len(frames) / 16.0)
    seen = [measure(f) for f in frames[::2]]
    if name == "setting":
        return majority([s.setting for s in seen])
    if name == "size":
        areas = [s.area for s in seen if s.found]
        return None if not areas else ("big" if np.median(areas) > 1200 else "small")
    return majority([getattr(s, name) for s in seen if s.found])


def evaluate_switches(streams: Streams, n: int, seed: int, report) -> dict[str, Tally]:
    rng = np.random.default_rng([seed, 2])
    shows, jumps = Tally(), Tally()
    pool = tuple(s for s in EVAL_SCENES if s.motion != "bouncing")
    for i in range(n):
        a = pool[int(rng.integers(len(pool)))]
        b = switched(a, rng, pool, attributes=1)
        name = next(k for k in ("colour", "shape", "motion", "setting", "size") if getattr(a, k) != getattr(b, k))
        blocks = streams.run(caption(a, rng), seed * 1000 + 500 + i, 6, switch_at=4, switch_to=caption(b, rng))
        got = _attribute_of(blocks[4:6] if name == "motion" else blocks[5:6], name)
        shows.add(got == getattr(b, name), f"{name} {getattr(a, name)} -> {getattr(b, name)}: {got}")
        before, after = measure(blocks[3][-1]), measure(blocks[4][0])
        if before.found and after.found:
            d = np.hypot((after.x - before.x + WIDTH / 2) % WIDTH - WIDTH / 2,
                         (after.y - before.y + HEIGHT / 2) % HEIGHT - HEIGHT / 2)
            jumps.add(d < JUMP_SHARE * WIDTH, f"{name} switch jumped {d:.0f} px")
        else:
            jumps.add(False, f"{name} switch: object not found around it")
        report(f"switch {i + 1}/{n}")
    return {"switch_shows": shows, "switch_jump": jumps}


def evaluate_long(streams: Streams, minutes: float, seed: int, report) -> dict[str, float]:
    rng = np.random.default_rng([seed, 3])
    scene = Scene("red", "ball", "right", "grass", "big")
    streams.pipe.start(caption(scene, rng), seed)
    per_minute = 60 * 16
    total = int(minutes * per_minute)
    first, last, made = [], [], 0
    while made < total:
        frames = streams.pipe.next_frames().frames
        for f in frames[::16]:
            q = quality(f)
            if made < per_minute:
                first.append(q)
            elif made >= total - per_minute:
                last.append(q)
        made += len(frames)
        report(f"long stream {made / per_minute:.1f}/{minutes:g} min")
    out = {}
    for key in ("area", "saturation", "edge"):
        a = np.median([getattr(q, key) for q in first if q.found] or [0.0])
        b = np.median([getattr(q, key) for q in last if q.found] or [0.0])
        out[f"long_{key}"] = float(b / a) if a else 0.0
    out["long_found_last_minute"] = float(np.mean([q.found for q in last])) if last else 0.0
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.toy_eval", description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None, help="a folder of trained toy weights (default: the committed ones)")
    p.add_argument("--config", default="toy", help="preset (default toy)")
    p.add_argument("--prompts", type=int, default=64, help="prompts for the attribute figures (default 64)")
    p.add_argument("--switches", type=int, default=32, help="switch trials (default 32)")
    p.add_argument("--long-minutes", type=float, default=0.0, help="minutes of the long stream (default 0: none)")
    p.add_argument("--seed", type=int, default=1, help="seed of the prompts, captions and noise (default 1)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    streams = Streams(args.weights, args.config)

    def report(line: str) -> None:
        print(f"\r{line} ({time.perf_counter() - t0:.0f} s)", end="", file=sys.stderr, flush=True)

    tallies = evaluate_attributes(streams, args.prompts, args.seed, report) if args.prompts else {}
    if args.switches:
        tallies.update(evaluate_switches(streams, args.switches, args.seed, report))
    figures: dict[str, dict] = {k: {"share": t.share, "right": t.right, "total": t.total, "threshold": THRESHOLDS[k],
                                    "met": t.share >= THRESHOLDS[k], "misses": t.misses} for k, t in tallies.items()}
    if args.long_minutes:
        for k, v in evaluate_long(streams, args.long_minutes, args.seed, report).items():
            limit = THRESHOLDS.get(k)
            figures[k] = {"ratio": v, "threshold": limit,
                          "met": None if limit is None else abs(v - 1.0) <= limit}
    print(file=sys.stderr)
    for k, f in figures.items():
        if "share" in f:
            print(f"{k:<16} {f['share']:6.1%} ({f['right']}/{f['total']})  needs >= {f['threshold']:.0%}  "
                  f"{'met' if f['met'] else 'NOT met'}")
        else:
            need = "" if f["threshold"] is None else f"  needs within {f['threshold']:.0%} of the first minute"
            print(f"{k:<16} {f['ratio']:6.2f}{need}  {'' if f['met'] is None else ('met' if f['met'] else 'NOT met')}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"seconds": time.perf_counter() - t0, "figures": figures}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
