"""studio/videofile.py beyond `longlive generate`: the live recorder's fragmented MP4 (real video,
written as it goes, readable after kill -9, write errors as one sentence) and joining parts."""

from __future__ import annotations

import errno
import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from golden import REPO
from streaming.errors import UserError
from studio.videofile import (FragmentedVideoWriter, OutputError, RecordingWriteError, VideoWriter,
                              concat_videos)

W, H, FPS = 64, 48, 16
KEYINT = 8          # 16 fps x the default keyframe_s of 0.5 s


def moving(n: int, start: int = 0, *, seed: int = 0, width: int = W, height: int = H) -> np.ndarray:
    """n frames [n, H, W, 3] of a smooth pattern moving a few pixels a frame, plus a bright square
    sliding across; `seed` changes the colours and the square's row."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((n, height, width, 3), np.uint8)
    for i, t in enumerate(range(start, start + n)):
        r = 128 + 100 * np.sin((x + 2 * t) / 9 + seed)
        g = 128 + 100 * np.cos((y - t) / 7 + 2 * seed)
        b = 128 + 100 * np.sin((x + y + 3 * t) / 13 - seed)
        frame = np.stack([r, g, b], -1)
        top, left = (5 + 7 * seed) % (height - 12), (3 * t) % (width - 12)
        frame[top:top + 12, left:left + 12] = 240
        out[i] = frame.clip(0, 255).astype(np.uint8)
    return out


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


# ---- FragmentedVideoWriter -------------------------------------------------------------------------------


def test_the_recording_is_real_video_with_a_keyframe_every_half_second(tmp_path):
    frames = moving(40)
    w = FragmentedVideoWriter(tmp_path / "rec.mp4", W, H, FPS)
    w.write(frames[:15])
    w.write(frames[15:])
    assert w.frames == 40
    w.close()
    w.close()                                   # idempotent
    with av.open(str(tmp_path / "rec.mp4")) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.average_rate == FPS
        packets = [p for p in c.demux(s) if p.size]
    keys = [i for i, p in enumerate(packets) if p.is_keyframe]
    assert keys == list(range(0, 40, KEYINT))   # exactly every 0.5 s, no scene-cut keyframes
    assert [p.pts for p in packets] == sorted(p.pts for p in packets)    # no B-frames: no reordering
    got = decode(tmp_path / "rec.mp4")
    assert len(got) == 40 and got[0].shape == (H, W, 3)
    err = np.abs(np.stack(got).astype(np.int16) - frames.astype(np.int16)).mean()
    assert err < 6, err


def test_each_fragment_is_in_the_file_once_the_next_keyframe_is_written(tmp_path):
    """Read while still being written (as after a crash), the file holds every frame before the
    last keyframe written so far, and grows at each keyframe."""
    path = tmp_path / "rec.mp4"
    frames = moving(30)
    w = FragmentedVideoWriter(path, W, H, FPS)
    sizes = []
    for n in range(1, 31):
        w.write(frames[n - 1:n])
        sizes.append(path.stat().st_size)
        if n in (8, 9, 16, 17, 25, 30):
            snapshot = tmp_path / f"at{n}.mp4"
            shutil.copyfile(path, snapshot)
            assert len(decode(snapshot)) == KEYINT * ((n - 1) // KEYINT), n
    for n in (9, 17, 25):                       # the n-th frame is a keyframe: the fragment before it lands
        assert sizes[n - 1] > sizes[n - 2], sizes
    w.close()
    assert len(decode(path)) == 30


CHILD = """
import sys
from studio.videofile import FragmentedVideoWriter
from test_videofile import moving, W, H, FPS
w = FragmentedVideoWriter(sys.argv[1], W, H, FPS)
while True:
    w.write(moving(1, w.frames))
    print(w.frames, flush=True)
    sys.stdin.readline()        # the parent says when to go on, so it knows exactly what was written
"""


def test_a_recording_killed_with_sigkill_plays_up_to_its_last_fragment(tmp_path):
    path = tmp_path / "killed.mp4"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=REPO, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while True:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            written = int(line)
            if written >= 50:
                break
            proc.stdin.write("\n")
            proc.stdin.flush()
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert written == 50
    got = decode(path)
    assert written - KEYINT - 1 <= len(got) <= written
    err = np.abs(np.stack(got).astype(np.int16) - moving(len(got)).astype(np.int16)).mean()
    assert err < 6, err


class FillingDisk:
    """A file object that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, room: int):
        self.room, self.data = room, bytearray()

    def write(self, b) -> int:
        if len(self.data) + len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.data += b
        return len(b)


def _assert_one_sentence(exc: BaseException) -> None:
    assert isinstance(exc, RecordingWriteError) and isinstance(exc, OSError) and isinstance(exc, UserError)
    msg = str(exc)
    assert "No space left on device" in msg and len(msg.splitlines()) == 1 and msg.startswith("cannot write"), msg
    assert exc.errno == errno.ENOSPC


def test_a_full_disk_while_writing_is_one_sentence_and_sticks(tmp_path):
    disk = FillingDisk(3000)                    # the header and the first fragment fit, not much more
    w = FragmentedVideoWriter(disk, W, H, FPS)
    with pytest.raises(RecordingWriteError) as caught:
        for t in range(200):
            w.write(moving(1, t))
    _assert_one_sentence(caught.value)
    assert KEYINT <= w.frames < 200
    with pytest.raises(RecordingWriteError) as again:
        w.write(moving(1))
    assert str(again.value) == str(caught.value)
    with pytest.raises(RecordingWriteError):
        w.close()
    w.abort()                                   # never raises
    assert len(disk.data) <= 3000


def test_a_full_disk_at_close_is_one_sentence(tmp_path):
    frames = moving(20)
    counted = FillingDisk(10**9)
    w = FragmentedVideoWriter(counted, W, H, FPS)
    w.write(frames)
    before_close = len(counted.data)            # the last fragment (frames 16-19) is still to come
    w.close()
    assert len(counted.data) > before_close
    disk = FillingDisk(before_close)
    w = FragmentedVideoWriter(disk, W, H, FPS)
    w.write(frames)
    with pytest.raises(RecordingWriteError) as caught:
        w.close()
    _assert_one_sentence(caught.value)


def test_a_file_object_is_written_through_without_seeking(tmp_path):
    """Through a plain write-only object (no seek, no tell) the bytes are a playable file; a
    file object given to the recorder is left open for its owner."""
    sink = FillingDisk(10**9)
    w = FragmentedVideoWriter(sink, W, H, FPS)
    w.write(moving(12))
    w.close()
    (tmp_path / "through.mp4").write_bytes(bytes(sink.data))
    assert len(decode(tmp_path / "through.mp4")) == 12
    memory = io.BytesIO()
    w = FragmentedVideoWriter(memory, W, H, FPS)
    w.write(moving(12))
    w.close()
    assert not memory.closed and memory.getvalue() == bytes(sink.data)    # the same frames, the same bytes


@pytest.mark.parametrize("width, height", [(65, 48), (64, 47)])
def test_odd_sizes_are_refused_in_one_sentence(tmp_path, width, height):
    with pytest.raises(ValueError) as caught:
        FragmentedVideoWriter(tmp_path / "odd.mp4", width, height, FPS)
    assert "even" in str(caught.value) and len(str(caught.value).splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


# ---- concat_videos ---------------------------------------------------------------------------------------


def _parts(folder: Path, counts=(10, 7, 12), sizes=None) -> list[Path]:
    paths = []
    for i, n in enumerate(counts):
        w, h = (sizes or {}).get(i, (W, H))
        path = folder / f"part{i}.mp4"
        with VideoWriter(path, w, h, FPS) as vw:
            vw.write(moving(n, seed=i, width=w, height=h))
        paths.append(path)
    return paths


@pytest.mark.parametrize("name, container", [("all.mp4", "mp4"), ("all.mkv", "matroska")])
def test_concat_decodes_to_exactly_the_parts_one_after_another(tmp_path, name, container):
    parts = _parts(tmp_path)
    expected = [frame for part in parts for frame in decode(part)]
    assert len(expected) == 29
    out = tmp_path / name
    assert concat_videos(parts, out) == out
    got = decode(out)
    assert len(got) == 29
    for i, (a, b) in enumerate(zip(got, expected)):
        assert np.array_equal(a, b), i
    with av.open(str(out)) as c:
        assert container in c.format.name
        s = c.streams.video[0]
        pts = [p.pts for p in c.demux(s) if p.size]
    assert len(set(pts)) == 29                  # time runs on: no two frames at one time
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, *(p.name for p in parts)])


def test_concat_refuses_a_part_of_another_size(tmp_path):
    parts = _parts(tmp_path, counts=(5, 5), sizes={1: (80, 48)})
    with pytest.raises(OutputError) as caught:
        concat_videos(parts, tmp_path / "all.mp4")
    assert "part1.mp4" in str(caught.value) and "size" in str(caught.value)
    assert not (tmp_path / "all.mp4").exists()


def test_concat_refuses_a_part_with_other_parameter_sets(tmp_path):
    """Same codec, size and rate, but encoded otherwise (CAVLC instead of CABAC): other SPS/PPS."""
    parts = _parts(tmp_path, counts=(5,))
    other = tmp_path / "other.mp4"
    with av.open(str(other), mode="w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"crf": "18", "preset": "veryfast", "x264-params": "mbtree=0:cabac=0"}
        for rgb in moving(5):
            c.mux(s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        c.mux(s.encode())
    with pytest.raises(OutputError) as caught:
        concat_videos([parts[0], other], tmp_path / "all.mp4")
    assert "other.mp4" in str(caught.value) and "SPS/PPS" in str(caught.value)
    assert not (tmp_path / "all.mp4").exists()


def test_concat_of_nothing_is_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        concat_videos([], tmp_path / "all.mp4")
    assert list(tmp_path.iterdir()) == []
