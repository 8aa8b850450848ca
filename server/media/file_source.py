"""`serve --input FILE`: a video file as the live input, read with PyAV and looped.

A thread decodes the file's first video stream frame by frame and hands each frame to the
engine's `InputClock` at the file's own pace (its timestamps against the wall clock), so the
generator sees it as it would see a camera. At the end it starts again; the timestamps go on
rising across the loop (each pass adds the file's duration), so the clock sees one endless
input. Frames that more than cover twice the stream's size (`fit`) are scaled down as they
are decoded, keeping their aspect ratio: the model never uses more, and the input buffer of a
4K file would otherwise hold gigabytes. `check` opens the file and decodes one frame before anything else
starts: a missing, unreadable or video-less file is one sentence.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from streaming.errors import UserError

from .input_clock import MAX_SIDE, MIN_SIDE, InputClock, InputFrameError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


class InputFileError(UserError, ValueError):
    """A file that cannot be the input; one sentence."""


def check(path: str | Path) -> tuple[int, int, float]:
    """(width, height, frames per second) of the file's video, or InputFileError."""
    import av

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"--input {path}: no such file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputFileError(f"--input {path}: the file has no video stream")
            stream = container.streams.video[0]
            frame = next(container.decode(stream), None)
            if frame is None:
                raise InputFileError(f"--input {path}: the video has no frames")
            w, h = frame.width, frame.height
            rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
    except InputFileError:
        raise
    except (av.FFmpegError, OSError, StopIteration, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
        raise InputFileError(f"--input {path}: cannot read it as video ({why})") from None
    if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE):
        raise InputFileError(f"--input {path}: its frames are {w}x{h}, outside {MIN_SIDE}..{MAX_SIDE} pixels a side")
    return w, h, rate


class FileSource:
    def __init__(self, path: str | Path, clock: InputClock, fit: tuple[int, int] | None = None, *,
                 sleep: Callable[[float], None] = time.sleep, now: Callable[[], float] = time.monotonic):
        self.path, self.clock = Path(path), clock
        self.fit = fit                  # (width, height) of the stream: frames are kept within twice it
        self._sleep, self._now = sleep, now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.loops = 0                  # passes finished

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="longlive-input-file", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._play()
        except Exception as e:          # the stream goes on from the words; say why once
            log.error("--input %s stopped: %s", self.path, e)

    def _pixels(self, frame) -> "np.ndarray":
        """The frame as uint8 RGB [H, W, 3], scaled down (aspect kept) so that it still covers twice
        `fit` (the model crops it to its aspect, then resizes)."""
        w, h = frame.width, frame.height
        if self.fit is not None:
            scale = min(1.0, max(2 * self.fit[0] / w, 2 * self.fit[1] / h))   # still covers it after the crop
            if scale < 1.0:
                w, h = max(MIN_SIDE, round(w * scale)), max(MIN_SIDE, round(h * scale))
                return frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
        return frame.to_ndarray(format="rgb24")

    def _play(self) -> None:
        import av

        offset, started = 0.0, None
        while not self._stop.is_set():
            end = offset
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
                for i, frame in enumerate(container.decode(stream)):
                    if self._stop.is_set():
                        return
                    pts = offset + (float(frame.time) if frame.time is not None else i / rate)
                    if started is None:
                        started = self._now() - pts
                    wait = started + pts - self._now()
                    if wait > 0:
                        self._sleep(wait)
                    try:
                        self.clock.push(self._pixels(frame), pts)
                    except InputFrameError as e:
                        log.warning("--input %s: frame %d skipped: %s", self.path, i, e)
                    end = max(end, pts + 1.0 / rate)
            if end <= offset:
                raise InputFileError(f"--input {self.path}: the video has no frames")
            offset = end
            self.loops += 1
