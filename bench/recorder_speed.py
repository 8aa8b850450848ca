"""What the live recorder costs: CPU time per frame of `FragmentedVideoWriter.write`.

    python -m bench.recorder_speed [--seconds 4] [--json FILE]

For the tiny preset's 320x192 and LongLive's full 832x480, at 16 fps, it records `--seconds`
of video into a temporary folder and prints, per resolution: frames timed, process CPU time
per frame (`time.process_time`: every thread of the process, x264's included), wall time per
frame, the share of one core that recording at 16 fps takes, and the output's size in MB per
second of video. The recorder's settings are its defaults (crf 20, preset veryfast, a
keyframe every 0.5 s, zerolatency).

The frames are synthetic but shaped like generated video rather than like noise: smooth
moving colour gradients, a few shapes sliding across them, and mild per-pixel noise (sigma
about 2 levels), since the encoder's cost depends on the content and pure random noise
would make it spend far more than on real frames. They are made before timing starts;
the first 16 frames of each run are written untimed (encoder start-up).
Needs PyAV (the CPU machines have it; the GPU machines do not).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = ((320, 192), (832, 480))
FPS = 16
WARMUP = 16
CYCLE = 48          # distinct frames made per size (3 s at 16 fps), then repeated


def synthetic_frames(width: int, height: int, n: int = CYCLE, seed: int = 0) -> np.ndarray:
    """[n, height, width, 3] uint8: moving gradients + moving shapes + mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y /= height
    x /= width
    out = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        s = t / FPS
        r = 0.5 + 0.35 * np.sin(2 * np.pi * (x * 1.3 + 0.11 * s)) * np.cos(2 * np.pi * (y * 0.7 - 0.05 * s))
        g = 0.5 + 0.35 * np.sin(2 * np.pi * (y * 1.1 + x * 0.4 + 0.07 * s))
        b = 0.45 + 0.3 * np.cos(2 * np.pi * (x * 0.6 - y * 0.9 - 0.09 * s))
        img = np.stack([r, g, b], -1)
        # a disc drifting left to right, a square crossing diagonally
        cx, cy, rad = (0.15 + 0.7 * (s / 3)) % 1.0, 0.5 + 0.2 * np.sin(s), 0.12
        disc = ((x - cx) * width / height) ** 2 + (y - cy) ** 2 < rad ** 2
        img[disc] = (0.95, 0.8, 0.3)
        sx, sy = (0.8 - 0.5 * s / 3) % 1.0, (0.2 + 0.5 * s / 3) % 1.0
        square = (abs(x - sx) < 0.06) & (abs(y - sy) < 0.1)
        img[square] = (0.2, 0.3, 0.9)
        img = img * 255 + rng.normal(0, 2, img.shape)
        out[t] = img.clip(0, 255).astype(np.uint8)
    return out


def measure(width: int, height: int, seconds: float, folder: Path) -> dict:
    from studio.videofile import FragmentedVideoWriter

    frames = synthetic_frames(width, height)
    count = max(1, round(seconds * FPS))
    path = folder / f"rec_{width}x{height}.mp4"
    writer = FragmentedVideoWriter(path, width, height, FPS)
    try:
        for i in range(WARMUP):
            writer.write(frames[i % CYCLE][None])
        cpu = wall = 0.0
        for i in range(WARMUP, WARMUP + count):
            frame = frames[i % CYCLE][None]
            c0, w0 = time.process_time(), time.perf_counter()
            writer.write(frame)
            cpu += time.process_time() - c0
            wall += time.perf_counter() - w0
        writer.close()
    finally:
        writer.abort()
    total = WARMUP + count
    mb_per_s = path.stat().st_size / 1e6 / (total / FPS)
    return {"width": width, "height": height, "fps": FPS, "frames": count,
            "cpu_ms_per_frame": 1000 * cpu / count, "wall_ms_per_frame": 1000 * wall / count,
            "core_share_at_fps": cpu / count * FPS, "output_mb_per_s": mb_per_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.recorder_speed", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=4.0, help="seconds of video timed per resolution (default 4)")
    p.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="recorder_speed.") as tmp:
        rows = [measure(w, h, args.seconds, Path(tmp)) for w, h in SIZES]
    print(f"{'resolution':>10} {'frames':>6} {'CPU ms/frame':>12} {'wall ms/frame':>13} "
          f"{'core @16fps':>11} {'MB/s of video':>13}")
    for r in rows:
        print(f"{r['width']}x{r['height']:<6} {r['frames']:6d} {r['cpu_ms_per_frame']:12.2f} "
              f"{r['wall_ms_per_frame']:13.2f} {100 * r['core_share_at_fps']:10.1f}% {r['output_mb_per_s']:13.3f}")
    if args.json:
        info = {"cpus": os.cpu_count(), "seconds": args.seconds, "rows": rows}
        args.json.write_text(json.dumps(info, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
