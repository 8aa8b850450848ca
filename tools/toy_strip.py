"""A strip of frames from the toy world's model, for people to look at (docs/toy_strip.png).

    .venv/bin/python -m tools.toy_strip [--weights DIR] [--out docs/toy_strip.png]

Each row is one stream of the product's pipeline (the `toy` preset, its committed weights or
`--weights`), seed 1: the frame at 0.5 s, 1.5 s, 2.5 s and 3.5 s. The last two rows switch
prompt after 3 s (the product's KV re-cache) and show 3.5 s, 4.5 s, 5.5 s and 6.5 s, the
first after the switch. The prompts are printed, one line a row, for the page that shows it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import av
import numpy as np

ROWS = (
    ("a red ball moving to the right over green grass", None),
    ("Blue triangle. Night sky. It drifts upward.", None),
    ("a small yellow square falling, the ocean", None),
    ("over sand: a big purple box, sinking", None),
    ("a white ball bouncing on the snow", None),
    ("a green ball moving to the left over the sand", "a green ball moving to the left in the ocean"),
    ("a big orange square, still, on green grass", "a big blue square, still, on green grass"),
)
SECONDS = (0.5, 1.5, 2.5, 3.5)
SWITCH_BLOCK = 4          # 9 + 3 * 12 = 45 frames: the switch comes after 2.8 s


def frames_of(pipe, prompt: str, then: str | None, seed: int, seconds: tuple[float, ...]) -> list[np.ndarray]:
    pipe.start(prompt, seed)
    video: list[np.ndarray] = []
    last = max(seconds)
    while len(video) < int(last * pipe.fps) + 1:
        if then is not None and pipe.generator.block == SWITCH_BLOCK:
            pipe.switch_prompt(then)
        video.extend(pipe.next_frames().frames)
    return [video[int(s * pipe.fps)] for s in seconds]


def save_png(image: np.ndarray, path: Path) -> None:
    h, w = image.shape[:2]
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = w, h, "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.toy_strip", description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None, help="a folder of trained toy weights (default: the committed ones)")
    p.add_argument("--out", type=Path, default=Path("docs/toy_strip.png"), help="the PNG to write")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    from streaming.config import load_config
    from streaming.pipeline import VideoPipeline

    pipe = VideoPipeline.from_config(load_config("toy"), weights=args.weights)
    rows = []
    for prompt, then in ROWS:
        seconds = SECONDS if then is None else tuple(s + 3.0 for s in SECONDS)
        row = frames_of(pipe, prompt, then, args.seed, seconds)
        gap = np.full((row[0].shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([x for f in row for x in (f, gap)][:-1], 1))
        print(prompt if then is None else f"{prompt} -> (after 3 s) {then}")
    gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    save_png(np.concatenate([x for r in rows for x in (r, gap)][:-1], 0), args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
