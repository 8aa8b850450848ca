"""`longlive generate`: from a prompt to a video file, offline, block by block.

The same pipeline as the live server (text encoder, generator, streaming VAE) with no
event loop; frames are encoded as they are decoded, so memory stays flat however long the
video. The file appears under its name only when it is complete (see `videofile`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from tqdm import tqdm

from streaming.errors import UserError

log = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    from streaming.config import choose_preset, load_config
    from streaming.pipeline import VideoPipeline

    from . import stopping
    from .videofile import VideoWriter, check_output

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.prompt.strip():
        raise UserError("--prompt must not be empty")
    check_output(args.output)                  # before the slow part: a bad path fails at once
    cfg = load_config(choose_preset(args.config, args.weights))
    pipe = VideoPipeline.from_config(cfg, args.weights, args.device)
    if pipe.embedded_default:
        log.warning("no weights given: rendering %s", cfg.about or cfg.source)
    fps = cfg.video.fps
    total = max(1, round(args.seconds * fps))
    width, height = pipe.size
    start = time.perf_counter()
    pipe.start(args.prompt, args.seed)
    with VideoWriter(args.output, width, height, fps) as out, \
            tqdm(total=total, unit="frame", desc="generate", file=sys.stderr, disable=None) as bar:
        while out.frames < total:
            stopping.check()
            block = pipe.next_frames()
            frames = block.frames[: total - out.frames]
            out.write(frames)
            bar.update(len(frames))
    took = time.perf_counter() - start
    print(f"wrote {args.output} ({total} frames, {total / fps:.2f} s at {fps} fps, {width}x{height}) "
          f"in {took:.1f} s ({total / took:.1f} frames/s)")
    return 0
