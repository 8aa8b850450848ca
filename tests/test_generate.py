"""`longlive generate` on the tiny default: a playable MP4 with the right frames and rate."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest

from golden import REPO
from server import generate


def _args(tmp_path: Path, **over) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    generate.add_arguments(p)
    argv = ["--prompt", "a lighthouse in a storm", "--seconds", "2", "-o", str(tmp_path / "out.mp4")]
    for k, v in over.items():
        argv += [f"--{k}", str(v)]
    return p.parse_args(argv)


def _read(path: Path) -> tuple[int, float, tuple[int, int]]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [f for f in c.decode(video=0)]
        return len(frames), float(s.average_rate), (frames[0].width, frames[0].height)


def test_generate_writes_a_playable_mp4_with_the_asked_length(tmp_path):
    assert generate.run(_args(tmp_path, seconds=2.5, seed=3)) == 0
    frames, fps, size = _read(tmp_path / "out.mp4")
    assert fps == 16
    assert frames == 40          # 2.5 s at 16 fps: 9 + 12 + 12 + 7 of the fourth block
    assert size == (320, 192)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp file left


def _pixels(path: Path) -> list:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_same_seed_same_video_other_seed_other_video(tmp_path):
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        (tmp_path / name).mkdir()
        generate.run(_args(tmp_path / name, seconds=1, seed=seed))
        runs[name] = _pixels(tmp_path / name / "out.mp4")
    assert len(runs["a"]) == 16
    assert all((x == y).all() for x, y in zip(runs["a"], runs["b"]))
    assert any((x != y).any() for x, y in zip(runs["a"], runs["c"]))


def test_cli_errors_are_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cases = [
        (["-o", str(tmp_path / "missing" / "x.mp4")], "folder"),
        (["--weights", str(tmp_path / "nope")], "does not exist"),
        (["--config", "nosuch"], "no config named"),
        (["-o", str(tmp_path)], "is a folder"),
        (["--seconds", "0"], "--seconds must be positive"),
    ]
    for extra, needle in cases:
        out = subprocess.run([sys.executable, "-m", "server.cli", "generate", "--prompt", "x", "--seconds", "1", *extra],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        assert out.returncode == 2, (extra, out.stderr)
        err = out.stderr.strip()
        assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1, (extra, err)
