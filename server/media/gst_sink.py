"""`longlive serve --gst-sink "PIPELINE"`: every generated frame into a GStreamer pipeline.

The sink is a `BlockSink` consumer like the recorder (server/keeping/recorder.py): the engine hands it
every block it generates through a bounded queue of its own (it never waits for the sink; a
block the queue has no room for is dropped, counted and reported as an `error` event), and
the sink feeds the frames, in order, to an `appsrc` in front of the user's pipeline:

    appsrc name=longlive format=time is-live=true do-timestamp=false block=true
           min-latency=0 max-latency=-1 max-bytes=(4 frames)
           caps=video/x-raw,format=RGB,width=W,height=H,framerate=FPS,pixel-aspect-ratio=1/1
      ! videoconvert ! PIPELINE

`videoconvert !` is inserted unless PIPELINE already starts with a converter (`videoconvert`,
`videoconvertscale`, `autovideoconvert`), so an encoder or a caps filter may come first.
Timestamps come from the frame sequence, not the clock: frame n has PTS n/fps and duration
1/fps (exact, in nanoseconds), so a file has the stream's timing whatever the machine does;
the pipeline goes to PLAYING when the first frame arrives, so live sinks see the frames on
time. A block lost to a full queue is not a gap in the timestamps (the next buffer is marked
DISCONT); a pause of the stream is not one either (nothing is generated meanwhile).

Two threads, never the engine's nor the event loop: "longlive-gst-sink" takes blocks and
pushes frames (`appsrc` blocks it when the pipeline is slow: that is what fills the queue),
"longlive-gst-bus" watches the pipeline's bus. An ERROR message stops the sink (the pipeline
goes to NULL, the sink leaves the engine) with one `error` event and one log line; the stream
goes on. `stop()` drains the queue, sends EOS and waits for it to reach the sinks, so files
are finalised (mp4mux writes its index at EOS), then sets the pipeline to NULL.

GStreamer is imported only here and only when a sink is made: `check()` and `GstSink` raise
`GstUnavailable` (one sentence naming what to install) without PyGObject or GStreamer, and
`GstPipelineError` (one sentence) for a pipeline GStreamer cannot parse. See docs/GSTREAMER.md.
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction
from typing import Any, Callable

import numpy as np

from streaming.errors import UserError, one_line

from ..block_sink import SINK_BLOCKS, BlockSink, GeneratedBlock
from ..protocol import ErrorEvent, Event

log = logging.getLogger(__name__)

SOURCE_NAME = "longlive"        # the appsrc's name in the pipeline (reserved)
CONVERTERS = ("videoconvert", "videoconvertscale", "autovideoconvert")   # a pipeline starting so gets none added
APPSRC_FRAMES = 4               # frames the appsrc holds before a push waits (the BlockSink is the real queue)
EOS_TIMEOUT_S = 10.0            # for the EOS to reach every sink at stop
BUS_POLL_S = 0.1
MAX_DETAIL = 200                # characters of GStreamer's debug text in an error event
INSTALL = ("run `make gstreamer`, or install Debian's gstreamer1.0-plugins-base, gstreamer1.0-plugins-good, "
           "gir1.2-gstreamer-1.0 and gir1.2-gst-plugins-base-1.0 and `pip install \"PyGObject<3.51\"`")


class GstUnavailable(UserError):
    """PyGObject or GStreamer is missing: one sentence naming what to install."""


class GstPipelineError(UserError):
    """The --gst-sink pipeline is not one GStreamer can build."""


def gst() -> tuple[Any, Any]:
    """(Gst, GstApp), initialised; GstUnavailable when PyGObject or GStreamer is missing."""
    try:
        import gi
    except ImportError:
        raise GstUnavailable("--gst-sink needs PyGObject (the Python module gi), which is not installed: "
                             f"{INSTALL}") from None
    try:
        gi.require_version("Gst", "1.0")
        gi.require_version("GstApp", "1.0")
        from gi.repository import Gst, GstApp
    except (ImportError, ValueError):
        raise GstUnavailable("--gst-sink needs GStreamer and its GObject bindings, which are not installed: "
                             f"{INSTALL}") from None
    if not Gst.is_initialized():
        Gst.init(None)
    missing = [name for name in ("appsrc", "videoconvert") if Gst.ElementFactory.find(name) is None]
    if missing:
        raise GstUnavailable(f"--gst-sink needs GStreamer's {' and '.join(missing)} "
                             f"(gstreamer1.0-plugins-base), which is not installed: {INSTALL}")
    return Gst, GstApp


def launch_line(pipeline: str, width: int | None = None, height: int | None = None, fps: float | None = None) -> str:
    """The whole pipeline: our appsrc (caps from the stream), a converter unless the user's
    pipeline starts with one, then the user's pipeline. Without a size, the appsrc has no caps
    (for `check`, before the model says what the stream is)."""
    user = (pipeline or "").strip()
    if not user:
        raise GstPipelineError('--gst-sink needs a pipeline, e.g. "x264enc ! mp4mux ! filesink location=out.mp4"')
    # min-latency 0 (the default, -1, makes live sinks warn "please add queues"); max unbounded:
    # the frames wait in the sink's queue as long as it takes
    src = (f"appsrc name={SOURCE_NAME} format=time is-live=true do-timestamp=false block=true"
           " min-latency=0 max-latency=-1")
    if width is not None and height is not None and fps is not None:
        rate = Fraction(fps).limit_denominator(1001)
        src += (f" max-bytes={APPSRC_FRAMES * width * height * 3}"
                f" caps=video/x-raw,format=RGB,width={width},height={height},"
                f"framerate={rate.numerator}/{rate.denominator},pixel-aspect-ratio=1/1")
    first = user.split("!", 1)[0].split()
    converter = "" if first and first[0] in CONVERTERS else "videoconvert ! "
    return f"{src} ! {converter}{user}"


def parse(pipeline: str, width: int | None = None, height: int | None = None, fps: float | None = None) -> Any:
    """The Gst.Pipeline for `pipeline` (not started); GstUnavailable, or GstPipelineError in one sentence."""
    Gst, _ = gst()
    from gi.repository import GLib

    line = launch_line(pipeline, width, height, fps)
    if re.search(rf"\bname\s*=\s*[\"']?{SOURCE_NAME}[\"']?(\s|!|$)", pipeline):
        raise GstPipelineError(f"the --gst-sink pipeline cannot name an element {SOURCE_NAME!r}: "
                               "that is the appsrc the frames come from")
    try:
        built = Gst.parse_launch_full(line, None, Gst.ParseFlags.FATAL_ERRORS)
    except GLib.Error as e:
        raise GstPipelineError(f"the --gst-sink pipeline is not one GStreamer can build: {one_line(e.message)} "
                               f"(in {pipeline.strip()!r})") from None
    if not isinstance(built, Gst.Pipeline):          # one element: parse_launch gives it bare
        raise GstPipelineError(f"the --gst-sink pipeline is not one GStreamer can build (in {pipeline.strip()!r})")
    return built


def check(pipeline: str) -> None:
    """Fail early (before the model loads): GStreamer is there and `pipeline` parses."""
    Gst, _ = gst()
    parse(pipeline).set_state(Gst.State.NULL)


class GstSink:
    """Every generated frame, in order, into `appsrc ! [videoconvert !] PIPELINE`.

    `start()` and `stop()` may be called from any thread (stop blocks: call it off the event
    loop); `stats()` any time. Errors are `error` events through `emit` (the engine's by
    default); the stream never stops for the sink."""

    def __init__(self, engine: Any, pipeline: str, *, emit: Callable[[Event], None] | None = None,
                 sink_blocks: int = SINK_BLOCKS, eos_timeout_s: float = EOS_TIMEOUT_S):
        self.engine = engine
        self.user_pipeline = pipeline.strip()
        width, height = engine.pipe.size
        self.size = (int(width), int(height))
        self.fps = Fraction(float(engine.pipe.fps)).limit_denominator(1001)
        self.description = launch_line(pipeline, *self.size, float(self.fps))
        self.emit = emit or engine.emit
        self.eos_timeout_s = eos_timeout_s
        self._Gst, _ = gst()
        self._pipeline = parse(pipeline, *self.size, float(self.fps))
        self._src = self._pipeline.get_by_name(SOURCE_NAME)
        self.sink = BlockSink(sink_blocks)
        self._lock = threading.Lock()
        self._started = False
        self._playing = False
        self._error: str | None = None
        self._failed = threading.Event()
        self._eos = threading.Event()
        self._bus_done = threading.Event()
        self._thread: threading.Thread | None = None
        self._bus_thread: threading.Thread | None = None
        self.frames = 0                # frames pushed
        self.blocks = 0                # blocks pushed
        self.lost_blocks = 0           # blocks the queue dropped (reported)
        self._discont = False          # the next buffer follows a loss

    # -- control (any thread) -------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._started:
                raise RuntimeError("the GStreamer sink is already started")
            self._started = True
        self.engine.add_sink(self.sink)
        self._bus_thread = threading.Thread(target=self._watch_bus, name="longlive-gst-bus", daemon=True)
        self._thread = threading.Thread(target=self._run, name="longlive-gst-sink", daemon=True)
        self._bus_thread.start()
        self._thread.start()
        log.info("GStreamer sink: %s", self.description)

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """Drain, EOS (files are finalised), NULL. Blocking; the sink's stats."""
        with self._lock:
            started = self._started
        if not started:
            self._pipeline.set_state(self._Gst.State.NULL)
            return self.stats()
        self.engine.remove_sink(self.sink)
        self.sink.close()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():          # the pipeline will not take the frames: flush it
                log.warning("the GStreamer sink did not finish within %.0f s; stopping its pipeline", timeout)
                self._pipeline.set_state(self._Gst.State.NULL)
                thread.join(5.0)
        return self.stats()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._failed.is_set()

    @property
    def error(self) -> str | None:
        return self._error

    def stats(self) -> dict[str, Any]:
        return {"pipeline": self.user_pipeline, "running": self.running, "frames": self.frames,
                "blocks": self.blocks, "lost_blocks": self.lost_blocks, "error": self._error}

    # -- the pushing thread --------------------------------------------------------------------------------
    def _run(self) -> None:
        Gst = self._Gst
        try:
            if self._pipeline.set_state(Gst.State.PAUSED) == Gst.StateChangeReturn.FAILURE:
                self._fail_soon("the pipeline could not start")
            while not self._failed.is_set():
                blk = self.sink.take(timeout=0.5)
                if blk is None:
                    if self.sink.closed:
                        break
                    continue
                self._push_block(blk)
            if not self._failed.is_set():
                self._lost(self.sink.take_dropped(), "at the end")
                self._finish()
        except Exception as e:             # a bug or a frame of the wrong shape: the stream goes on
            self._fail(one_line(e))
        finally:
            self._pipeline.set_state(Gst.State.NULL)
            self._bus_done.set()
            if self._bus_thread is not None:
                self._bus_thread.join(5.0)
            log.info("GStreamer sink: %d frames in %d blocks%s", self.frames, self.blocks,
                     f" (stopped: {self._error})" if self._error else "")

    def _push_block(self, blk: GeneratedBlock) -> None:
        Gst = self._Gst
        self._lost(blk.dropped_before, f"before block {blk.index}")
        frames = blk.frames
        width, height = self.size
        if frames.ndim != 4 or frames.shape[1:] != (height, width, 3) or frames.dtype != np.uint8:
            raise ValueError(f"a block of frames {tuple(frames.shape)} {frames.dtype} does not fit the sink's "
                             f"{width}x{height} RGB")
        if not self._playing:              # the clock starts with the first frame: live sinks get it on time
            self._playing = True
            if self._pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
                self._fail_soon("the pipeline could not start playing")
                return
        for frame in frames:
            if self._failed.is_set():
                return
            buf = Gst.Buffer.new_wrapped(_rgb_bytes(frame))
            start, end = self._pts(self.frames), self._pts(self.frames + 1)
            buf.pts, buf.dts, buf.duration = start, start, end - start
            buf.offset = self.frames
            if self._discont:
                buf.set_flags(Gst.BufferFlags.DISCONT)
                self._discont = False
            flow = self._src.push_buffer(buf)
            if flow != Gst.FlowReturn.OK:
                if not self._failed.is_set():   # FLUSHING after an error or a forced stop: said there
                    self._fail_soon(f"the pipeline refused a frame ({flow.value_nick})")
                return
            self.frames += 1
        self.blocks += 1

    def _pts(self, n: int) -> int:
        return n * self._Gst.SECOND * self.fps.denominator // self.fps.numerator

    def _finish(self) -> None:
        """EOS through the pipeline, so muxers write their index, files are whole."""
        if not self._playing:              # nothing was pushed: no file to finalise
            return
        self._src.end_of_stream()
        if not self._eos.wait(self.eos_timeout_s) and not self._failed.is_set():
            log.warning("the GStreamer pipeline did not finish (EOS) within %.0f s; its output may be incomplete",
                        self.eos_timeout_s)

    def _lost(self, blocks: int, where: str) -> None:
        if not blocks:
            return
        self.lost_blocks += blocks
        self._discont = True
        message = (f"the GStreamer sink fell behind and lost {blocks} block(s) {where}; its output has a gap there")
        log.error(message)
        self.emit(ErrorEvent(message=message))

    # -- the bus thread -------------------------------------------------------------------------------------
    def _watch_bus(self) -> None:
        Gst = self._Gst
        bus = self._pipeline.get_bus()
        kinds = Gst.MessageType.ERROR | Gst.MessageType.EOS | Gst.MessageType.WARNING
        while not self._bus_done.is_set():
            msg = bus.timed_pop_filtered(int(BUS_POLL_S * Gst.SECOND), kinds)
            if msg is None:
                continue
            if msg.type == Gst.MessageType.EOS:
                self._eos.set()
            elif msg.type == Gst.MessageType.ERROR:
                err, debug = msg.parse_error()
                self._fail(f"{msg.src.get_name() if msg.src else 'pipeline'}: {_reason(err.message, debug)}")
            elif msg.type == Gst.MessageType.WARNING:
                warning, _debug = msg.parse_warning()
                log.warning("GStreamer sink: %s: %s", msg.src.get_name() if msg.src else "pipeline",
                            one_line(warning.message))

    def _fail_soon(self, reason: str) -> None:
        """A failure seen by the pushing thread: the bus usually has the reason; wait for it briefly."""
        if not self._failed.wait(1.0):
            self._fail(reason)

    def _fail(self, reason: str) -> None:
        """Stop the sink for good (first failure only): out of the engine, pipeline to NULL, one event."""
        with self._lock:
            if self._failed.is_set():
                return
            self._error = reason
            self._failed.set()
        self.engine.remove_sink(self.sink)
        self.sink.close()
        self._pipeline.set_state(self._Gst.State.NULL)    # unblocks a push waiting on the appsrc
        message = f"the GStreamer sink stopped: {reason}; the stream goes on without it"
        log.error(message)
        self.emit(ErrorEvent(message=message))


def _reason(message: str, debug: str | None) -> str:
    """GStreamer's error message, with the last line of its debug text when that says more
    ("Internal data stream error." (streaming stopped, reason not-negotiated (-4)))."""
    text = one_line(message or "error")
    detail = (debug or "").strip().splitlines()[-1:] or [""]
    detail = detail[0].strip()[:MAX_DETAIL]
    return f"{text.rstrip('.')} ({detail})" if detail and detail not in text and not detail.endswith(":") else text


def _rgb_bytes(frame: np.ndarray) -> bytes:
    """One frame as GStreamer lays out RGB: each row padded to a multiple of 4 bytes."""
    height, width, _ = frame.shape
    row = width * 3
    stride = (row + 3) & ~3
    if stride == row:
        return np.ascontiguousarray(frame).tobytes()
    padded = np.zeros((height, stride), np.uint8)
    padded[:, :row] = frame.reshape(height, row)
    return padded.tobytes()
