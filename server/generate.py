"""`longlive generate`: from a prompt to an MP4 file, offline, block by block.

The same pipeline as the live server (text encoder, generator, streaming VAE); frames are
encoded as they are decoded, so memory stays flat however long the video.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", required=True, help="what to generate")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the video (default 10)")
    p.add_argument("-o", "--output", type=Path, default=Path("out.mp4"), help="MP4 file to write (default out.mp4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=None, help="preset name (tiny, longlive) or YAML path; default: "
                   "longlive with --weights, else tiny")
    p.add_argument("--weights", type=Path, default=os.environ.get("LONGLIVE_WEIGHTS") or None,
                   help="weights folder (default $LONGLIVE_WEIGHTS; none: the tiny random-weight default)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default from the config)")


def run(args: argparse.Namespace) -> int:
    from streaming import load_config
    from streaming.pipeline import VideoPipeline

    from .videofile import Mp4Writer, check_writable

    if not args.seconds > 0:
        raise ValueError("--seconds must be positive")
    if not args.prompt.strip():
        raise ValueError("--prompt must not be empty")
    check_writable(args.output)
    cfg = load_config(args.config or ("longlive" if args.weights else "tiny"))
    pipe = VideoPipeline.from_config(cfg, args.weights, args.device)
    if pipe.embedded_default:
        log.warning("no weights given: rendering the tiny random-weight default (%s); pictures are abstract",
                    cfg.source)
    fps = cfg.video.fps
    total = max(1, round(args.seconds * fps))
    width, height = pipe.size
    start = time.perf_counter()
    pipe.start(args.prompt, args.seed)
    with Mp4Writer(args.output, width, height, fps) as out, \
            tqdm(total=total, unit="frame", desc="generate", file=sys.stderr, disable=None) as bar:
        while out.frames < total:
            block = pipe.next_frames()
            frames = block.frames[: total - out.frames]
            out.write(frames)
            bar.update(len(frames))
    took = time.perf_counter() - start
    print(f"wrote {args.output} ({total} frames, {total / fps:.2f} s at {fps} fps, {width}x{height}) "
          f"in {took:.1f} s ({total / took:.1f} frames/s)")
    return 0

