"""The frame bus: a bounded ring of the newest frames and the stream's playback clock.

The engine thread publishes each generated block here; readers (each viewer's video
track, later the recorder and other sinks) read it independently. Every frame gets a
sequence number (`seq`, counting from 0 over the life of the server, across seed restarts)
and a presentation time on the 90 kHz clock (`pts = seq * 90000 / fps`).

The playback clock says which frame is "on air" now (the playhead). It advances at the
stream's fps while there are frames; when playback catches up with generation it holds
the newest frame (a stall) and restarts the moment the next block arrives. While paused it
stands still, so every viewer holds the same frame. The engine asks the bus how long it may
wait before it must start the next block (`time_until_ahead`), which is how it generates
just in time: never more than `lead_blocks` blocks ahead of the playhead.

Latest-frame semantics: a reader asks for `current()` whenever it is ready for a frame; a
reader that comes late simply gets a newer frame and skips the ones in between, for itself
only. Nothing is queued per reader, so memory is the ring (`capacity` frames) and nothing
else. Thread-safe: the engine thread writes, the asyncio thread reads, under one lock.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

log = logging.getLogger(__name__)

CLOCK_RATE = 90_000  # RTP video clock (Hz)


@dataclass(frozen=True)
class BusFrame:
    seq: int                # position in the stream of frames, from 0, never reused
    pts: int                # presentation time on the 90 kHz clock
    image: np.ndarray       # [H, W, 3] uint8, read-only, owned by this frame
    block: int              # generator block the frame came from
    prompt: str             # the prompt the block was generated under

    @property
    def time(self) -> float:
        """Presentation time in seconds."""
        return self.pts / CLOCK_RATE


class FrameBus:
    def __init__(self, fps: float, capacity: int = 48, clock: Callable[[], float] = time.monotonic):
        if fps <= 0:
            raise ValueError("fps must be positive")
        if capacity < 1:
            raise ValueError("capacity must be at least one frame")
        self.fps = float(fps)
        self.capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._ring: collections.deque[BusFrame] = collections.deque(maxlen=capacity)
        self._next_seq = 0
        # playback clock: position(t) = anchor_pos + (t - anchor_t) * fps, in frames (seq units)
        self._anchor_pos = 0.0
        self._anchor_t = clock()
        self._paused = False
        self._paused_pos = 0.0

    # -- writing (engine thread) -------------------------------------------------------
    def publish(self, frames: np.ndarray | Iterable[np.ndarray], *, block: int = 0, prompt: str = "") -> int:
        """Append a block of frames [N, H, W, 3] uint8; returns the seq of its first frame."""
        images = []
        for img in frames:
            img = np.array(img, dtype=np.uint8, copy=True, order="C")
            if img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"frames must be [H, W, 3] uint8, got shape {list(img.shape)}")
            img.flags.writeable = False
            images.append(img)
        with self._lock:
            now = self._clock()
            first = self._next_seq
            if self._position(now) >= first:
                # playback had caught up with generation (or nothing was published yet):
                # start the new frames now instead of skipping the ones "missed" while stalled
                self._reanchor(first, now)
            for img in images:
                seq = self._next_seq
                self._ring.append(BusFrame(seq, self.pts_of(seq), img, block, prompt))
                self._next_seq += 1
        return first

    # -- reading (any thread) ------------------------------------------------------------
    def current(self) -> BusFrame | None:
        """The frame on air now (None before the first publish)."""
        with self._lock:
            return self._frame(self._playhead(self._clock()))

    def get(self, seq: int) -> BusFrame | None:
        """Frame `seq` if it is still in the ring."""
        with self._lock:
            return self._frame(seq)

    def playhead(self) -> int:
        """Seq of the frame on air now, -1 before the first publish."""
        with self._lock:
            return self._playhead(self._clock())

    @property
    def next_seq(self) -> int:
        """Seq the next published frame will get (= frames published so far)."""
        with self._lock:
            return self._next_seq

    def ahead(self) -> float:
        """Frames published but not yet played, counting the rest of the frame on air."""
        with self._lock:
            return max(0.0, self._next_seq - self._position(self._clock()))

    def time_until_ahead(self, frames: float) -> float:
        """Seconds until at most `frames` published frames are left to play (0 if already
        so; inf while paused and above it)."""
        with self._lock:
            now = self._clock()
            excess = self._next_seq - self._position(now) - frames
            if excess <= 0:
                return 0.0
            if self._paused:
                return math.inf
            return excess / self.fps

    def time_until(self, seq: int) -> float:
        """Seconds until frame `seq` goes on air, if it is published by then (0 when it is on
        air or past; inf while paused)."""
        with self._lock:
            wait = (seq - self._position(self._clock())) / self.fps
            if wait <= 0:
                return 0.0
            return math.inf if self._paused else wait

    def frames(self) -> list[BusFrame]:
        """The ring, oldest first (a copy of the list; the frames themselves are shared)."""
        with self._lock:
            return list(self._ring)

    def memory_bytes(self) -> int:
        with self._lock:
            return sum(f.image.nbytes for f in self._ring)

    def pts_of(self, seq: int) -> int:
        return round(seq * CLOCK_RATE / self.fps)

    # -- playback control -----------------------------------------------------------------
    @property
    def paused(self) -> bool:
        with self._lock:
            return self._paused

    def pause(self) -> None:
        """Freeze the playhead on the frame on air (idempotent)."""
        with self._lock:
            if not self._paused:
                now = self._clock()
                self._paused_pos = min(self._position(now), max(self._next_seq - 1, 0) + 0.999)
                self._paused = True

    def resume(self) -> None:
        with self._lock:
            if self._paused:
                self._paused = False
                self._reanchor(self._paused_pos, self._clock())

    # -- internals (lock held) --------------------------------------------------------------
    def _position(self, now: float) -> float:
        if self._paused:
            return self._paused_pos
        return self._anchor_pos + (now - self._anchor_t) * self.fps

    def _reanchor(self, pos: float, now: float) -> None:
        self._anchor_pos, self._anchor_t = float(pos), now
        if self._paused:
            self._paused_pos = float(pos)

    def _playhead(self, now: float) -> int:
        if self._next_seq == 0:
            return -1
        return max(0, min(int(math.floor(self._position(now))), self._next_seq - 1))

    def _frame(self, seq: int) -> BusFrame | None:
        if not self._ring or seq < self._ring[0].seq or seq > self._ring[-1].seq:
            return None
        return self._ring[seq - self._ring[0].seq]
