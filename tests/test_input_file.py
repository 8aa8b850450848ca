"""`serve --input FILE`: a video file, checked before anything starts, read with PyAV at its own
pace and looped (timestamps rising across the loop), into the engine's input clock."""

from __future__ import annotations

import threading
import time

import av
import numpy as np
import pytest

from server.media.file_source import FileSource, InputFileError, check
from server.media.input_clock import InputClock

FRAMES, RATE = 12, 12


def _video(path, frames: int = FRAMES, width: int = 64, height: int = 48) -> None:
    with av.open(str(path), "w") as out:
        s = out.add_stream("mjpeg", rate=RATE)
        s.width, s.height, s.pix_fmt = width, height, "yuvj420p"
        for n in range(frames):
            img = np.zeros((height, width, 3), np.uint8)
            img[:, : 4 + 5 * n] = 255                  # a bar that grows frame by frame
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


class Recording(InputClock):
    def __init__(self):
        super().__init__(capacity=400)
        self.seen: list[tuple[float, int]] = []
        self.enough = threading.Event()

    def push(self, frame, pts):
        super().push(frame, pts)
        self.seen.append((pts, int((frame[24] > 128).all(axis=1).sum())))    # the bar's width
        if len(self.seen) >= 2 * FRAMES + 3:
            self.enough.set()


def test_the_file_loops_with_rising_timestamps(tmp_path):
    path = tmp_path / "clip.mkv"
    _video(path)
    assert check(path)[:2] == (64, 48)
    clock = Recording()
    src = FileSource(path, clock, sleep=lambda s: None)     # no pacing: as fast as it decodes
    src.start()
    try:
        assert clock.enough.wait(60), clock.seen
    finally:
        src.stop()
    pts = [p for p, _ in clock.seen]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    assert pts[FRAMES] == pytest.approx(FRAMES / RATE, abs=1.5e-3)        # the second pass goes on
    widths = [w for _, w in clock.seen]
    assert widths[FRAMES:2 * FRAMES] == widths[:FRAMES]                   # ... with the same pictures
    assert widths[0] < widths[FRAMES - 1]


def test_the_file_is_paced_by_its_own_timestamps(tmp_path):
    """Each frame waits for its time on the wall clock (a fake clock here: the waits asked for)."""
    path = tmp_path / "clip.mkv"
    _video(path)
    now = [0.0]
    waits = []

    def sleep(s):
        waits.append(s)
        now[0] += s

    clock = Recording()
    src = FileSource(path, clock, sleep=sleep, now=lambda: now[0])
    src.start()
    try:
        assert clock.enough.wait(60)
    finally:
        src.stop()
    assert waits[:5] == pytest.approx([1 / RATE] * 5, abs=1.5e-3)     # mkv keeps milliseconds


@pytest.mark.parametrize("content, words", [(None, "no such file"), (b"not a video at all", "cannot read it as video")])
def test_a_file_that_cannot_be_the_input_is_one_sentence(tmp_path, content, words):
    path = tmp_path / "input.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputFileError, match=words) as err:
        check(path)
    assert "\n" not in str(err.value)


def test_an_audio_only_file_has_no_video(tmp_path):
    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as out:
        s = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            out.mux(p)
        for p in s.encode():
            out.mux(p)
    with pytest.raises(InputFileError, match="no video stream"):
        check(path)


def test_serve_with_an_unreadable_input_says_so_in_one_line_before_loading(tmp_path):
    import subprocess
    import sys

    from golden import REPO

    import socket

    with socket.socket() as probe:                      # a free port (serve binds before it checks)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "junk.mp4"
    path.write_bytes(b"junk")
    done = subprocess.run([sys.executable, "-m", "longlive", "serve", "--input", str(path), "--port", str(port),
                           "--host", "127.0.0.1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == f"longlive: --input {path}: cannot read it as video (Invalid data found when " \
                                  "processing input)"


class Sizes(InputClock):
    def __init__(self):
        super().__init__(capacity=400)
        self.shapes: list[tuple[int, ...]] = []
        self.got = threading.Event()

    def push(self, frame, pts):
        super().push(frame, pts)
        self.shapes.append(frame.shape)
        if len(self.shapes) >= 3:
            self.got.set()


@pytest.mark.parametrize("fit, shape", [((16, 16), (32, 43, 3)), ((320, 192), (96, 128, 3))])
def test_frames_are_kept_within_twice_the_streams_size(tmp_path, fit, shape):
    """A 128x96 file for a 16x16 stream comes in at 43x32 (aspect kept); for a bigger stream, as it is."""
    path = tmp_path / "clip.mkv"
    _video(path, width=128, height=96)
    clock = Sizes()
    src = FileSource(path, clock, fit=fit, sleep=lambda s: None)
    src.start()
    try:
        assert clock.got.wait(60)
    finally:
        src.stop()
    assert set(clock.shapes) == {shape}
