"""A viewer's video track: reads the frame bus at its own pace, latest frame first.

One `BusVideoTrack` per viewer (aiortc asks it for a frame with `recv()` whenever the
viewer's encoder is ready). It ticks on its own 90 kHz clock at the stream's fps and hands
out whatever frame is on air at that tick: a viewer whose encoder falls behind skips
frames, for itself only, and never queues any; a paused or stalled stream repeats the
frame on air, so the browser keeps a live picture. Per viewer it keeps one clock and a
few counters, nothing else.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from typing import Callable

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from .framebus import CLOCK_RATE, FrameBus

log = logging.getLogger(__name__)

TIME_BASE = fractions.Fraction(1, CLOCK_RATE)


class BusVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, bus: FrameBus, size: tuple[int, int], clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.bus = bus
        self.fps = bus.fps
        self._clock = clock
        self._size = size                 # (width, height), for the black frame before the first block
        self._start: float | None = None
        self._tick = 0
        self.sent = 0                      # frames handed to the encoder
        self.skipped = 0                   # bus frames this viewer never got (it came late)
        self.repeated = 0                  # ticks that re-sent the frame on air (pause, stall)
        self.last_seq = -1

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._wait_for_tick()
        if self.readyState != "live":
            raise MediaStreamError
        frame = self.bus.current()
        if frame is None:
            width, height = self._size
            image = np.zeros((height, width, 3), np.uint8)
        else:
            if frame.seq == self.last_seq:
                self.repeated += 1
            elif self.last_seq >= 0 and frame.seq > self.last_seq + 1:
                self.skipped += frame.seq - self.last_seq - 1
            self.last_seq = frame.seq
            image = frame.image
        out = VideoFrame.from_ndarray(image, format="rgb24")
        out.pts = round(self._tick * CLOCK_RATE / self.fps)
        out.time_base = TIME_BASE
        self.sent += 1
        return out

    async def _wait_for_tick(self) -> None:
        now = self._clock()
        if self._start is None:
            self._start, self._tick = now, 0
            return
        self._tick += 1
        due = self._start + self._tick / self.fps
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > 1.0 / self.fps:
            # this viewer is late (slow encoder or network): jump its clock to now; the
            # frames in between are skipped for it alone
            self._tick = int((now - self._start) * self.fps)
