"""The frame bus: sequence numbers, the playback clock, latest-frame reads, bounded memory."""

from __future__ import annotations

import asyncio
import collections
import math
import sys
import threading
import time
from fractions import Fraction

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from server.framebus import CLOCK_RATE, FrameBus
from server.media.track import BusVideoTrack


class FakeClock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def block(n: int, start: int = 0, h: int = 4, w: int = 6) -> np.ndarray:
    """n frames whose every pixel holds the frame's number (mod 256), so reads are checkable."""
    return np.stack([np.full((h, w, 3), (start + i) % 256, np.uint8) for i in range(n)])


def make(fps: float = 16, capacity: int = 48) -> tuple[FrameBus, FakeClock]:
    clock = FakeClock()
    return FrameBus(fps, capacity, clock=clock), clock


def test_sequence_numbers_and_pts_continue_across_blocks():
    bus, _ = make()
    assert bus.publish(block(9), block=0, prompt="a") == 0
    assert bus.publish(block(12, 9), block=1, prompt="b") == 9
    frames = bus.frames()
    assert [f.seq for f in frames] == list(range(21))
    assert [f.pts for f in frames] == [s * CLOCK_RATE // 16 for s in range(21)]   # 5625 per frame at 16 fps
    assert frames[8].block == 0 and frames[9].block == 1 and frames[9].prompt == "b"
    assert bus.next_seq == 21
    assert frames[20].time == pytest.approx(20 / 16)


def test_published_frames_are_private_read_only_copies():
    bus, _ = make()
    src = block(3)
    bus.publish(src)
    src[:] = 77                                   # the producer reuses its buffer
    frames = bus.frames()
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 1, 2]
    with pytest.raises(ValueError):
        frames[0].image[0, 0, 0] = 1


def test_bad_frame_shape_is_refused():
    bus, _ = make()
    with pytest.raises(ValueError):
        bus.publish(np.zeros((2, 4, 4), np.uint8))   # 2 frames of [4, 4] (no channels)


def test_playhead_advances_at_fps_and_holds_the_newest_frame_when_starved():
    bus, clock = make(fps=16)
    assert bus.current() is None and bus.playhead() == -1
    bus.publish(block(12))
    assert bus.current().seq == 0
    clock.advance(5.5 / 16)
    assert bus.playhead() == 5
    assert int(bus.current().image[0, 0, 0]) == 5
    clock.advance(10)                              # far past the end: hold the last frame
    assert bus.playhead() == 11
    assert bus.ahead() == 0
    # new frames after a stall start now, from their first frame (none are skipped)
    bus.publish(block(12, 12))
    assert bus.playhead() == 12
    clock.advance(3 / 16)
    assert bus.playhead() == 15


def test_frames_published_before_playback_reaches_them_play_seamlessly():
    bus, clock = make(fps=16)
    bus.publish(block(12))
    clock.advance(6 / 16)
    bus.publish(block(12, 12))                     # arrives while frame 6 is on air
    assert bus.playhead() == 6
    clock.advance(10 / 16)
    assert bus.playhead() == 16


def test_ahead_and_time_until_ahead():
    bus, clock = make(fps=16)
    bus.publish(block(24))
    assert bus.ahead() == pytest.approx(24)
    assert bus.time_until_ahead(12) == pytest.approx(12 / 16)
    clock.advance(12 / 16)
    assert bus.time_until_ahead(12) == 0
    bus.pause()
    assert bus.time_until_ahead(4) == math.inf
    assert bus.time_until_ahead(20) == 0


def test_pause_freezes_the_frame_on_air_and_resume_continues_from_it():
    bus, clock = make(fps=16)
    bus.publish(block(24))
    clock.advance(4.5 / 16)
    bus.pause()
    assert bus.paused
    clock.advance(30)
    assert bus.playhead() == 4
    bus.pause()                                     # idempotent
    bus.resume()
    assert bus.playhead() == 4
    clock.advance(1 / 16)
    assert bus.playhead() == 5
    bus.resume()                                    # idempotent
    assert not bus.paused


def test_ring_is_bounded_and_evicts_the_oldest():
    bus, clock = make(fps=16, capacity=30)
    frame_bytes = 4 * 6 * 3
    for i in range(20):
        bus.publish(block(12, 12 * i), block=i)
        clock.advance(12 / 16)
    frames = bus.frames()
    assert len(frames) == 30
    assert bus.memory_bytes() == 30 * frame_bytes
    assert frames[0].seq == 240 - 30 and frames[-1].seq == 239
    assert bus.get(0) is None and bus.get(239).seq == 239 and bus.get(240) is None


def test_latest_frame_reads_let_a_slow_reader_skip_without_affecting_a_fast_one():
    bus, clock = make(fps=16)
    bus.publish(block(48))
    fast, slow = [], []
    for tick in range(40):
        fast.append(bus.current().seq)             # reads every frame period
        if tick % 5 == 0:
            slow.append(bus.current().seq)         # reads every fifth
        clock.advance(1 / 16)
    assert fast == list(range(40))                  # the fast reader missed nothing
    assert slow == list(range(0, 40, 5))            # the slow one got the newest frame each time
    assert len(bus.frames()) == 48                  # and nothing was queued for either of them


class _SlowRing(collections.deque):
    """The bus's ring, but every read yields the interpreter first: a reader that is not
    protected by the bus's lock is then all but sure to see the writer move the ring under it."""

    def __getitem__(self, i):
        time.sleep(0)
        return super().__getitem__(i)


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _race(locked: bool) -> list:
    """One writer publishing blocks, two readers asking for frames by seq and for the frame on
    air; returns every inconsistency the readers saw (a frame other than the one asked for, a
    frame whose pixels are not its own, the playhead going back, an exception)."""
    bus = FrameBus(1000, capacity=24)
    bus._ring = _SlowRing(maxlen=bus.capacity)
    if not locked:
        bus._lock = _NoLock()          # the deliberately broken variant
    errors: list = []
    done = threading.Event()

    def reader() -> None:
        last = -1
        try:
            while not done.is_set():
                newest = bus.next_seq - 1
                for seq in (newest, newest - 5, newest - 11):
                    f = bus.get(seq)
                    if f is not None and (f.seq != seq or int(f.image[0, 0, 0]) != seq % 256):
                        errors.append(("get", seq, f.seq))
                f = bus.current()
                if f is not None:
                    if f.seq < last or int(f.image[0, 0, 0]) != f.seq % 256:
                        errors.append(("current", last, f.seq))
                    last = f.seq
        except Exception as e:  # an unprotected ring can also raise (index out of range)
            errors.append(("raised", repr(e)))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)        # switch threads often: races show up in a few hundred blocks
    try:
        for th in threads:
            th.start()
        for i in range(300):
            bus.publish(block(12, 12 * i))
            time.sleep(0)
    finally:
        done.set()
        for th in threads:
            th.join()
        sys.setswitchinterval(interval)
    assert bus.next_seq == 3600
    return errors


def test_concurrent_publish_and_read_are_consistent():
    assert _race(locked=True) == []


def test_the_concurrency_check_catches_a_bus_without_its_lock():
    """The same check against the bus with its lock removed: it must see the race, or the test
    above would pass whatever the bus did."""
    assert _race(locked=False)


def test_invalid_construction():
    with pytest.raises(ValueError):
        FrameBus(0)
    with pytest.raises(ValueError):
        FrameBus(16, capacity=0)


# -- the reader every viewer gets: server.media.track.BusVideoTrack ------------------------------------------------
def test_viewer_tracks_read_latest_frames_each_at_its_own_pace():
    async def main():
        bus, clock = make(fps=16)
        early = BusVideoTrack(bus, size=(6, 4), clock=clock)
        black = await early.recv()                  # before the first block: black, at the stream's size
        assert (black.width, black.height) == (6, 4) and not black.to_ndarray(format="rgb24").any()
        early.stop()
        with pytest.raises(MediaStreamError):
            await early.recv()

        bus.publish(block(48))
        fast = BusVideoTrack(bus, size=(6, 4), clock=clock)
        slow = BusVideoTrack(bus, size=(6, 4), clock=clock)
        got_fast, got_slow = [], []
        for tick in range(40):
            f = await fast.recv()
            got_fast.append((f.pts, int(f.to_ndarray(format="rgb24")[0, 0, 0])))
            if tick % 5 == 0:                       # this viewer's encoder only keeps up with 1 frame in 5
                s = await slow.recv()
                got_slow.append((s.pts, int(s.to_ndarray(format="rgb24")[0, 0, 0])))
            clock.advance(1 / 16)
        return fast, slow, got_fast, got_slow

    fast, slow, got_fast, got_slow = asyncio.run(main())
    # the fast viewer got every frame, stamped on the 90 kHz clock at 16 fps
    assert got_fast == [(i * 5625, i) for i in range(40)]
    assert (fast.sent, fast.skipped, fast.repeated) == (40, 0, 0)
    # the slow one got the newest frame each time, its clock jumping with it; the fast one never noticed
    assert got_slow == [(i * 5625, i) for i in range(0, 40, 5)]
    assert slow.skipped == 7 * 4 and slow.sent == 8


def test_a_paused_stream_repeats_the_frame_on_air():
    async def main():
        bus, clock = make(fps=16)
        bus.publish(block(24))
        track = BusVideoTrack(bus, size=(6, 4), clock=clock)
        clock.advance(3 / 16)
        bus.pause()
        frames = []
        for _ in range(5):
            frames.append(await track.recv())
            clock.advance(1 / 16)
        return track, frames

    track, frames = asyncio.run(main())
    assert [int(f.to_ndarray(format="rgb24")[0, 0, 0]) for f in frames] == [3] * 5
    assert [f.pts for f in frames] == [i * 5625 for i in range(5)]      # time goes on, the picture holds
    assert frames[0].time_base == Fraction(1, 90000)
    assert track.repeated == 4
