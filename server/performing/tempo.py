"""Tempo: where the beats and bars fall, from a BPM, tap tempo or Ableton Link.

A `TempoClock` maps the engine's clock (seconds, `time.monotonic` unless a test injects
one) to beats: `beat_at(t) = (t - origin) * bpm / 60`, beat 0 a downbeat, `beats_per_bar`
beats to a bar. Quantised cues ask it for the next beat or bar (`next_beat`, `next_bar`: the
first one at or after a time). Changing the BPM keeps the beat now where it is (no jump).

Tap tempo (`tap`): taps a steady interval apart set the BPM, the median of the last
`TAP_KEEP` intervals; the first tap of a run is a downbeat and every tap lands on a beat. A
pause longer than `TAP_RESET_S` starts a new run. A tap may say when it happened on the
tapper's own clock (the page sends its input event's time): two taps of one tapper are then
measured on that clock, so a network or an event loop that delays one tap more than the next
does not bend the tempo; taps without it (OSC, HTTP) are measured when they arrive.

Ableton Link (`LinkTempo`, with the optional `aalink` package): the clock follows the
session's tempo and beat, read a few times a second on the event loop; the BPM set here
is proposed to the session. Without aalink, one notice and the internal clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

TAP_KEEP = 4            # intervals a tap tempo is the median of
TAP_RESET_S = 2.0       # a gap longer than this starts a new tap run
LINK_POLL_S = 0.25      # how often the clock is brought in line with a Link session
MIN_BPM, MAX_BPM = 20.0, 300.0


class TempoClock:
    def __init__(self, bpm: float = 120.0, beats_per_bar: int = 4, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._bpm = float(bpm)
        self._beats_per_bar = int(beats_per_bar)
        self._origin = clock()          # clock time of beat 0
        self._taps: list[_Tap] = []     # the run's latest taps (the last TAP_KEEP intervals)
        self._run_taps = 0               # taps in the run: its first is beat 0, every tap a beat on
        self.source = "internal"        # internal | link

    # -- reading (any thread) ------------------------------------------------------------------
    @property
    def bpm(self) -> float:
        with self._lock:
            return self._bpm

    @property
    def beats_per_bar(self) -> int:
        with self._lock:
            return self._beats_per_bar

    def beat_at(self, t: float) -> float:
        with self._lock:
            return (t - self._origin) * self._bpm / 60.0

    def time_of_beat(self, beat: float) -> float:
        with self._lock:
            return self._origin + beat * 60.0 / self._bpm

    def next_beat(self, t: float) -> float:
        """Clock time of the first beat at or after `t`."""
        return self.time_of_beat(math.ceil(self.beat_at(t) - 1e-9))

    def next_bar(self, t: float) -> float:
        """Clock time of the first downbeat at or after `t`."""
        n = self.beats_per_bar
        return self.time_of_beat(math.ceil(self.beat_at(t) / n - 1e-9) * n)

    def next(self, t: float, quantize: str) -> float:
        """When a change quantised to `quantize` (none | beat | bar) is due, asked at `t`."""
        if quantize == "beat":
            return self.next_beat(t)
        if quantize == "bar":
            return self.next_bar(t)
        return t

    def state(self) -> dict[str, Any]:
        now = self.clock()
        beat = self.beat_at(now)
        with self._lock:
            return {"bpm": round(self._bpm, 3), "beats_per_bar": self._beats_per_bar, "source": self.source,
                    "beat": round(beat, 3), "bar_beat": int(math.floor(beat)) % self._beats_per_bar + 1,
                    "taps": self._run_taps}

    # -- changing ----------------------------------------------------------------------------------
    def set(self, bpm: float, beats_per_bar: int | None = None) -> None:
        """A new tempo from now on; the beat now stays where it is."""
        now = self.clock()
        with self._lock:
            beat = (now - self._origin) * self._bpm / 60.0
            self._bpm = min(MAX_BPM, max(MIN_BPM, float(bpm)))
            if beats_per_bar is not None:
                self._beats_per_bar = int(beats_per_bar)
            self._origin = now - beat * 60.0 / self._bpm

    def align(self, beat: float, at: float, bpm: float | None = None) -> None:
        """Beat `beat` falls at clock time `at` (and the tempo is `bpm`): how Link steers the clock."""
        with self._lock:
            if bpm is not None:
                self._bpm = min(MAX_BPM, max(MIN_BPM, float(bpm)))
            self._origin = at - beat * 60.0 / self._bpm

    def tap(self, at: float | None = None, tapper: object = None) -> bool:
        """A tap now. `at`: when it happened on `tapper`'s own clock (seconds, any origin); the
        interval from the tapper's previous tap is measured on that clock when both carry one.
        True when it set the tempo (the second tap of a run on)."""
        now = self.clock()
        with self._lock:
            if self._taps and now - self._taps[-1].arrived > TAP_RESET_S:
                self._taps, self._run_taps = [], 0
            self._taps = (self._taps + [_Tap(now, at, tapper)])[-(TAP_KEEP + 1):]
            self._run_taps += 1
            taps = list(self._taps)
            if len(taps) < 2:
                self._origin = now          # the first tap of a run is a downbeat
                return False
            interval = statistics.median(b.since(a) for a, b in zip(taps, taps[1:]))
            if interval <= 0:
                return False
            self._bpm = min(MAX_BPM, max(MIN_BPM, 60.0 / interval))
            # the run's first tap stays a downbeat: the taps are beats 0, 1, 2 ... of it
            self._origin = now - (self._run_taps - 1) * 60.0 / self._bpm
            return True


class _Tap:
    """One tap: when it arrived (this clock), and when it happened on its tapper's clock, if said."""

    __slots__ = ("arrived", "at", "tapper")

    def __init__(self, arrived: float, at: float | None, tapper: object):
        self.arrived, self.at, self.tapper = arrived, at, tapper

    def since(self, before: "_Tap") -> float:
        """Seconds from `before` to this tap: on the tapper's clock when both taps are the same
        tapper's and say when they happened (and that span could be a run's), else on arrival."""
        if self.tapper is not None and self.tapper is before.tapper and self.at is not None and before.at is not None:
            span = self.at - before.at
            if 0 < span <= TAP_RESET_S:
                return span
        return self.arrived - before.arrived


class LinkTempo:
    """Keeps a `TempoClock` in line with an Ableton Link session (aalink on the event loop)."""

    def __init__(self, tempo: TempoClock, link: Any):
        self.tempo, self.link = tempo, link
        self._task: asyncio.Task | None = None

    @classmethod
    def open(cls, tempo: TempoClock, loop: asyncio.AbstractEventLoop) -> tuple["LinkTempo | None", str | None]:
        """A running Link session, or None and the notice saying why the internal clock leads."""
        try:
            from aalink import Link
        except ImportError:
            return None, "Ableton Link needs the aalink package (pip install aalink); using the internal tempo"
        try:
            link = Link(tempo.bpm, loop)
            link.quantum = tempo.beats_per_bar
            link.enabled = True
        except Exception as e:         # a platform where Link cannot open its sockets
            return None, f"Ableton Link could not start ({type(e).__name__}); using the internal tempo"
        tempo.source = "link"
        return cls(tempo, link), None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="longlive-link")

    def propose(self, bpm: float) -> None:
        """A tempo asked for here goes to the whole session."""
        self.link.tempo = float(bpm)

    async def _follow(self) -> None:
        while True:
            self.sync()
            await asyncio.sleep(LINK_POLL_S)

    def sync(self) -> None:
        """Read the session's beat and tempo now and align the clock to them."""
        now = self.tempo.clock()
        self.tempo.align(float(self.link.beat), now, float(self.link.tempo))

    def peers(self) -> int:
        return int(getattr(self.link, "num_peers", 0))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        try:
            self.link.enabled = False
        except Exception:
            pass
        self.tempo.source = "internal"
