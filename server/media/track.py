"""A reader of the frame bus at the stream's fps, latest frame first, as video frames.

The shared encoder (`stream_encoder.StreamEncoder`) reads the bus through one of these and
encodes what it hands out once for every viewer; the WHIP publisher and any other consumer
that wants paced frames can use one too (`recv()` whenever it is ready for a frame). It ticks on its own 90 kHz clock at the stream's fps and at
each tick hands out the next frame in order, as long as that stays within one frame of the
frame on air; otherwise the frame on air. So a viewer whose encoder falls behind skips
frames, for itself only, and never queues any; a paused or stalled stream repeats the
frame on air, so the browser keeps a live picture; and the track's ticks, which are not in
step with the playhead's (both run at the stream's fps, with their own phase and a few ms of
timer jitter), cost no frames: a tick just before the playhead moves on takes the next frame
a little early instead of repeating one frame and skipping the next. Per reader it keeps
one clock and a few counters, nothing else:

- `sent`: frames handed to the encoder, one per tick, repeats included (so it grows at the
  stream's fps even when the picture is frozen);
- `delivered`: distinct new bus frames handed to the encoder (what the viewer actually sees
  move); `sent - delivered` = `repeated` + the black frames before the first block;
- `repeated`: ticks that re-sent the frame on air (pause, stall);
- `skipped`: bus frames this viewer never got because it came late.
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

from ..framebus import CLOCK_RATE, FrameBus

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
        self.sent = 0                      # frames handed to the encoder, repeats included
        self.delivered = 0                 # distinct new bus frames handed to the encoder
        self.skipped = 0                   # bus frames this viewer never got (it came late)
        self.repeated = 0                  # ticks that re-sent the frame on air (pause, stall)
        self.last_seq = -1

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._wait_for_tick()
        if self.readyState != "live":
            raise MediaStreamError
        frame = self._choose()
        if frame is None:
            width, height = self._size
            image = np.zeros((height, width, 3), np.uint8)
        else:
            if frame.seq == self.last_seq:
                self.repeated += 1
            else:
                self.delivered += 1
                if self.last_seq >= 0 and frame.seq > self.last_seq + 1:
                    self.skipped += frame.seq - self.last_seq - 1
            self.last_seq = frame.seq
            image = frame.image
        out = VideoFrame.from_ndarray(image, format="rgb24")
        out.pts = round(self._tick * CLOCK_RATE / self.fps)
        out.time_base = TIME_BASE
        self.sent += 1
        return out

    def _choose(self):
        """The frame for this tick (None before the first block)."""
        on_air = self.bus.current()
        if on_air is None or self.last_seq < 0:
            return on_air
        held = self.bus.get(self.last_seq) or on_air
        if self.bus.paused:              # every viewer holds the frame on air (none goes back to it)
            return on_air if on_air.seq > self.last_seq else held
        want = self.last_seq + 1
        if want < on_air.seq - 1:        # more than a frame late: catch up, skipping the frames in between
            return on_air
        if want > on_air.seq + 1:        # already a frame ahead of the playhead: hold
            return held
        return self.bus.get(want) or held    # the next frame; a stall (not generated yet) holds the last

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
