"""A live input's frames on the stream's clock: whatever its rate and jitter, the generator gets
an even 16 fps, the newest frames, and never waits.

Sources (the page's camera, a WHIP publisher, a file, a GStreamer pipeline) `push` frames with
their own timestamps from their own threads or tasks; the frames wait in a bounded buffer
(`capacity`, the oldest dropped: the newest win). The engine's thread `take`s a block's worth
at a time, without blocking:

- Resampling by timestamps: the block's frames are read at ticks 1/fps apart on the source's
  own clock, each tick taking the newest frame at or before it: a 30 or 60 fps camera drops
  frames between ticks, a jittery or slower one holds a frame over several.
- Latency stays bounded: the ticks go on from the last block's, but when they have fallen more
  than `max_lag` seconds behind the newest frame (the generator was slower than the input, or
  the input arrived in a burst), they jump forward so the block ends at the newest frame.
- An input that stops: `take` still holds its last frame for `hold` seconds (of arrival time),
  then returns None (the stream goes on from text alone) and says so once (`pop_notice`); when
  frames arrive again, they are used again (the first block after is a new clip).

Frames are validated as they arrive (uint8 [H, W, 3], within `MIN_SIDE`..`MAX_SIDE`, finite
increasing timestamps); a bad one is refused with one sentence and changes nothing else.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

MIN_SIDE, MAX_SIDE = 16, 4096


class InputFrameError(ValueError):
    """A frame that cannot be an input frame; one sentence for the user."""


@dataclass(frozen=True)
class _Frame:
    pixels: np.ndarray
    pts: float          # the source's seconds
    arrived: float      # monotonic seconds


class InputClock:
    def __init__(self, fps: int = 16, capacity: int = 64, hold: float = 1.0, max_lag: float = 0.5,
                 clock: Callable[[], float] = time.monotonic):
        if fps <= 0 or capacity < 2 or hold < 0 or max_lag < 0:
            raise ValueError("input clock: fps and capacity must be positive (capacity at least 2), hold and "
                             "max_lag not negative")
        self.fps, self.hold, self.max_lag, self._clock = fps, hold, max_lag, clock
        self._frames: collections.deque[_Frame] = collections.deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._next_tick: float | None = None     # the source time of the next block's first tick
        self.live = False                        # the last take had frames
        self._lost = False                       # it had, then stopped
        self._notice: str | None = None
        self.dropped = 0                         # frames pushed out of the buffer unread

    def push(self, frame: np.ndarray, pts: float) -> None:
        """A source's frame (uint8 [H, W, 3]) with its timestamp in seconds."""
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            shape = getattr(frame, "shape", None)
            raise InputFrameError(f"an input frame must be uint8 [height, width, 3], not "
                                  f"{getattr(frame, 'dtype', type(frame).__name__)} {list(shape) if shape else ''}")
        h, w = frame.shape[:2]
        if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
            raise InputFrameError(f"an input frame of {w}x{h} is outside {MIN_SIDE}..{MAX_SIDE} pixels a side")
        pts = float(pts)
        if not np.isfinite(pts):
            raise InputFrameError(f"an input frame's timestamp must be a finite number of seconds, not {pts}")
        with self._lock:
            if self._frames and pts <= self._frames[-1].pts:
                raise InputFrameError(f"input frame timestamps must increase ({pts} after {self._frames[-1].pts})")
            if len(self._frames) == self._frames.maxlen:
                self.dropped += 1
            self._frames.append(_Frame(frame, pts, self._clock()))

    def take(self, count: int) -> np.ndarray | None:
        """The next block's `count` frames ([count, H, W, 3], the newest frame's size), or None
        when there is no input (none yet, or none for longer than `hold`)."""
        with self._lock:
            frames = list(self._frames)
            if not frames or self._clock() - frames[-1].arrived > self.hold:
                if self.live:
                    self.live, self._lost = False, True
                    self._notice = "the input stopped: the stream goes on from the words alone"
                self._next_tick = None
                return None
            if not self.live:
                self.live = True
                if self._lost:
                    self._notice = "the input is back"
            newest = frames[-1].pts
            step = 1.0 / self.fps
            first = self._next_tick
            if first is None or newest - (first + (count - 1) * step) > self.max_lag:
                first = newest - (count - 1) * step
            ticks = first + step * np.arange(count)
            self._next_tick = float(ticks[-1] + step)
            pts = np.array([f.pts for f in frames])
            chosen = np.clip(np.searchsorted(pts, ticks, side="right") - 1, 0, len(frames) - 1)
            size = frames[-1].pixels.shape
            picked = [frames[i].pixels if frames[i].pixels.shape == size else frames[-1].pixels for i in chosen]
            # frames before the oldest tick can never be chosen again
            while len(self._frames) > 1 and self._frames[1].pts <= ticks[-1]:
                self._frames.popleft()
            return np.stack(picked)

    def pop_notice(self) -> str | None:
        """What changed since the last call, once: the input stopped, or came back."""
        with self._lock:
            notice, self._notice = self._notice, None
            return notice

    def clear(self) -> None:
        """The source changed: forget its frames."""
        with self._lock:
            self._frames.clear()
            self._next_tick = None
