"""A live input on the stream's clock: resampled to 16 fps by its timestamps (drop or hold),
latency bounded, a bounded buffer where the newest win, a stop held then let go with one
notice, and bad frames refused."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.media.input_clock import InputClock, InputFrameError


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _frame(n: int) -> np.ndarray:
    f = np.zeros((16, 16, 3), np.uint8)
    f[0, 0, 0], f[0, 0, 1] = n % 256, n // 256          # the frame's number in its first pixel
    return f


def _numbers(frames: np.ndarray) -> list[int]:
    return [int(f[0, 0, 0]) + 256 * int(f[0, 0, 1]) for f in frames]


def _feed(clock: InputClock, numbers, fps: float, start: float = 0.0) -> None:
    for n in numbers:
        clock.push(_frame(n), start + n / fps)


@pytest.mark.parametrize("fps", [60, 30, 24])
def test_a_faster_source_is_dropped_to_16_fps_by_its_timestamps(fps):
    """Each tick (1/16 s apart, ending at the newest frame) takes the newest frame at or before it."""
    ic = InputClock(capacity=400, clock=Clock())
    _feed(ic, range(2 * fps), fps)
    newest = (2 * fps - 1) / fps
    expected = [math.floor(round((newest - (11 - k) / 16) * fps, 9)) for k in range(12)]
    assert _numbers(ic.take(12)) == expected


def test_a_slower_source_is_held():
    ic = InputClock(capacity=400, clock=Clock())
    _feed(ic, range(16), 8)                               # 8 fps: each frame shown on two ticks
    assert _numbers(ic.take(12)) == [9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15]   # ends at the newest


def test_blocks_follow_each_other_on_the_clock():
    """The next block's ticks go on 1/16 s after the last block's, though the input has run a
    quarter of a second ahead (within max_lag): no frame skipped, none repeated."""
    ic = InputClock(capacity=400, max_lag=0.5, clock=Clock())
    _feed(ic, range(12), 16)
    assert _numbers(ic.take(12)) == list(range(12))
    _feed(ic, range(12, 28), 16)
    assert _numbers(ic.take(12)) == list(range(12, 24))


def test_latency_stays_bounded_when_the_input_runs_ahead():
    """Ticks more than max_lag behind the newest frame jump forward to end at it."""
    ic = InputClock(capacity=400, max_lag=0.5, clock=Clock())
    _feed(ic, range(12), 16)
    ic.take(12)
    _feed(ic, range(12, 60), 16)                           # 3 s of input arrived at once
    assert _numbers(ic.take(12)) == list(range(48, 60))


def test_the_buffer_is_bounded_and_the_newest_win():
    ic = InputClock(capacity=8, clock=Clock())
    _feed(ic, range(20), 16)
    assert ic.dropped == 12
    assert _numbers(ic.take(4)) == [16, 17, 18, 19]


def test_an_input_that_stops_is_held_then_let_go_with_one_notice_and_comes_back():
    t = Clock()
    ic = InputClock(hold=1.0, clock=t)
    assert ic.take(12) is None and ic.pop_notice() is None      # no input yet: nothing to say
    _feed(ic, range(12), 16)
    assert ic.take(12) is not None
    t.now += 0.9
    assert _numbers(ic.take(4)) == [11, 11, 11, 11]               # held
    t.now += 0.2
    assert ic.take(12) is None
    assert ic.pop_notice() == "the input stopped: the stream goes on from the words alone"
    assert ic.take(12) is None and ic.pop_notice() is None      # said once
    _feed(ic, range(100, 112), 16)
    assert _numbers(ic.take(12)) == list(range(100, 112))
    assert ic.pop_notice() == "the input is back"


@pytest.mark.parametrize("frame, pts, words", [
    (np.zeros((16, 16, 3), np.float32), 0.0, "must be uint8"),
    (np.zeros((16, 16), np.uint8), 0.0, "must be uint8"),
    (np.zeros((8, 16, 3), np.uint8), 0.0, "outside 16..4096"),
    (np.zeros((16, 5000, 3), np.uint8), 0.0, "outside 16..4096"),
    (np.zeros((16, 16, 3), np.uint8), float("nan"), "finite"),
    (np.zeros((16, 16, 3), np.uint8), 1.0, "must increase"),
])
def test_a_bad_frame_is_refused_and_changes_nothing(frame, pts, words):
    ic = InputClock(clock=Clock())
    ic.push(_frame(7), 1.0)
    with pytest.raises(InputFrameError, match=words):
        ic.push(frame, pts)
    assert _numbers(ic.take(2)) == [7, 7]
