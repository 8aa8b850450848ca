"""`longlive generate` on the tiny default: a playable MP4 with the right frames and rate."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from golden import REPO
from longlive import cli
from studio import generate


def _args(tmp_path: Path, **over) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cli.add_generate_arguments(p)
    argv = ["--prompt", "a lighthouse in a storm", "--seconds", "2", "-o", str(tmp_path / "out.mp4")]
    for k, v in over.items():
        argv += [f"--{k}", str(v)]
    return p.parse_args(argv)


def _read(path: Path) -> tuple[int, float, tuple[int, int]]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [f for f in c.decode(video=0)]
        return len(frames), float(s.average_rate), (frames[0].width, frames[0].height)


@pytest.mark.slow
def test_generate_writes_a_playable_mp4_with_the_asked_length(tmp_path):
    assert generate.run(_args(tmp_path, seconds=2.5, seed=3)) == 0
    frames, fps, size = _read(tmp_path / "out.mp4")
    assert fps == 16
    assert frames == 40          # 2.5 s at 16 fps: 9 + 12 + 12 + 7 of the fourth block
    assert size == (320, 192)
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out.mp4").stat().st_mode & 0o777 == 0o666 & ~umask   # like any file the user makes


def test_the_container_follows_the_suffix(tmp_path):
    generate.run(_args(tmp_path, seconds=0.5, output=tmp_path / "clip.mkv"))
    with av.open(str(tmp_path / "clip.mkv")) as c:
        assert "matroska" in c.format.name and c.streams.video[0].codec_context.name == "h264"


def _pixels(path: Path) -> list:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.mark.slow
def test_same_seed_same_video_other_seed_other_video(tmp_path):
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        (tmp_path / name).mkdir()
        generate.run(_args(tmp_path / name, seconds=1, seed=seed))
        runs[name] = _pixels(tmp_path / name / "out.mp4")
    assert len(runs["a"]) == 16
    assert all((x == y).all() for x, y in zip(runs["a"], runs["b"]))
    assert any((x != y).any() for x, y in zip(runs["a"], runs["c"]))


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cases = [
        (["-o", str(tmp_path / "missing" / "x.mp4")], "folder"),
        (["--weights", str(tmp_path / "nope")], "does not exist"),
        (["--config", "nosuch"], "no config named"),
        (["-o", str(tmp_path)], "is a folder"),
        (["--seconds", "0"], "--seconds: 0 is out of range"),
        (["-o", str(tmp_path / "fox.avi")], "name the file .mp4, .m4v, .mov or .mkv"),
        (["--device", "cuda"], "torch sees no CUDA GPU"),
        (["--device", "bogus"], "unknown device 'bogus'"),
    ]
    for extra, needle in cases:
        out = subprocess.run([sys.executable, "-m", "longlive", "generate", "--prompt", "x", "--seconds", "1", *extra],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        assert out.returncode == 2, (extra, out.stderr)
        err = out.stderr.strip()
        assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1, (extra, err)


def _as_a_service_starts_it() -> None:
    """In the child before exec: SIGTERM and SIGINT neither blocked nor ignored, as a service manager
    or a terminal starts a program (a test run may inherit them blocked or ignored: a background job)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigterm_leaves_no_file_behind(tmp_path):
    """Killed politely mid-render (SIGTERM, as a service manager does), the command removes its
    temporary file and writes no output: nothing half-written is left in the folder."""
    proc = subprocess.Popen([sys.executable, "-m", "longlive", "generate", "--prompt", "x", "--seconds", "600",
                             "-o", str(tmp_path / "long.mp4")], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "LONGLIVE_WEIGHTS": ""},
                            preexec_fn=_as_a_service_starts_it)
    deadline = time.monotonic() + 300           # (starting takes seconds, many more on a loaded machine)
    while not list(tmp_path.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.iterdir()), "the render never started writing"
    # how the child holds SIGTERM (blocked / ignored / caught masks), for the message if it is not obeyed
    masks = [line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
             if line.startswith(("SigBlk", "SigIgn", "SigCgt"))]
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()                              # not left rendering beside the rest of the suite
        _, err = proc.communicate()
        pytest.fail(f"SIGTERM not obeyed within 120 s; the child's signal masks {masks}, its stderr {err!r}")
    assert proc.returncode == 143, (err, masks)
    assert list(tmp_path.iterdir()) == [] and "Traceback" not in err, err
