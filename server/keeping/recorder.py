"""Recording the live stream to disk: every generated frame, crash-safe, with its timeline.

`Recorder.start()` attaches a `BlockSink` to the engine (a bounded queue of its own: the
recorder sees every block, none skipped; if it falls behind, the blocks it lost are an
`error` event and an event in the sidecar, never a silent gap) and starts the thread
"longlive-recorder", which writes:

- `<name>.mp4`: H.264 in fragmented MP4 (`studio.videofile.FragmentedVideoWriter`), so a crash
  or `kill -9` leaves a file that plays up to its last fragment (half a second);
- `<name>.timeline.json`: the sidecar (`studio.sidecar`): the prompts as they played, seed,
  config, settings, the runs that `longlive render` replays and each block's frame hash. It is
  rewritten (new file, then rename) at every change of prompt and at least every
  `SIDECAR_EVERY_S` seconds of video, so a crash leaves a valid one.

Names are chosen here (`longlive-YYYYMMDD-HHMMSS[-N]`, created exclusively) in the
recordings folder; nothing a client sends becomes a path. A write error (a full disk
included) stops the recording with an `error` event and a `recording` event (failed); the
stream goes on. The video is then cut back to its last complete fragment (a write cut short
leaves part of one, which players and decoders choke on; cutting frees the space the sidecar
then needs), so what was recorded plays to its end. `stop()` finalises both files.
Thread-safe: `start`, `stop` and `status` may be called from the event loop, the thread does
the slow work.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from streaming.errors import UserError, one_line
from studio.sidecar import SidecarBuilder, Source, block_hash

from ..block_sink import SINK_BLOCKS, BlockSink, GeneratedBlock
from ..protocol import ErrorEvent, Event, RecordingEvent

log = logging.getLogger(__name__)

SIDECAR_EVERY_S = 1.0        # seconds of video between sidecar rewrites (besides every prompt change)
NAME = re.compile(r"^longlive-\d{8}-\d{6}(-\d{1,4})?\.(mp4|timeline\.json)$")   # what the folder serves


class RecordingError(UserError):
    """A recording cannot start (or there is none to stop); one sentence for the client."""


@dataclass
class _Take:
    name: str                   # the video's file name
    video: Path
    sidecar: Path
    started: float              # Unix time
    sink: BlockSink
    writer: Any                 # FragmentedVideoWriter
    file: Any                   # the video file it writes through (ours to close)
    builder: SidecarBuilder
    thread: threading.Thread | None = None
    error: str | None = None
    stopping: bool = False


class Recorder:
    def __init__(self, engine: Any, folder: str | Path, source: Callable[[], Source], *,
                 emit: Callable[[Event], None] | None = None, url_prefix: str = "/api/recordings/",
                 writer_factory: Callable[..., Any] | None = None, clock: Callable[[], float] = time.time,
                 sink_blocks: int = SINK_BLOCKS):
        self.engine = engine
        self.sink_blocks = sink_blocks
        self.folder = Path(folder)
        self._source = source             # the stream's source now (config, size, seed, ...)
        self.emit = emit or engine.emit
        self.url_prefix = url_prefix
        self._writer_factory = writer_factory
        self._clock = clock
        self._lock = threading.Lock()
        self._take: _Take | None = None

    # -- control (any thread) ----------------------------------------------------------------------
    @property
    def recording(self) -> bool:
        with self._lock:
            return self._take is not None and not self._take.stopping

    def start(self) -> dict[str, Any]:
        """Start a recording; RecordingError when one is running or the folder cannot be written."""
        with self._lock:
            if self._take is not None and self._take.stopping:
                raise RecordingError(f"{self._take.name} is still being finished; start again in a moment")
            if self._take is not None:
                raise RecordingError(f"already recording to {self._take.name}; stop it first")
            take = self._open()
            self._take = take
        self.engine.add_sink(take.sink)
        take.thread = threading.Thread(target=self._run, args=(take,), name="longlive-recorder", daemon=True)
        take.thread.start()
        log.info("recording to %s", take.video)
        self.emit(self._event(take, "started"))
        return self._describe(take)

    def stop(self, timeout: float = 30.0) -> dict[str, Any] | None:
        """Stop and finalise the recording (blocking: call it off the event loop); None when
        nothing was recording."""
        with self._lock:
            take = self._take
            if take is None or take.stopping:
                return None
            take.stopping = True
        self.engine.remove_sink(take.sink)
        take.sink.close()
        if take.thread is not None and take.thread is not threading.current_thread():
            take.thread.join(timeout)
        return self._describe(take)

    def status(self) -> dict[str, Any] | None:
        """The recording running (or being finished: "stopping" true), None once its files are complete."""
        with self._lock:
            take = self._take
        return None if take is None else {**self._describe(take), "stopping": take.stopping}

    def files(self) -> list[dict[str, Any]]:
        """The recordings in the folder, newest first."""
        if not self.folder.is_dir():
            return []
        out = []
        for p in sorted(self.folder.iterdir(), reverse=True):
            if self.path_of(p.name) is not None:
                out.append({"name": p.name, "bytes": p.stat().st_size, "url": self.url_prefix + p.name})
        return out

    def path_of(self, name: str) -> Path | None:
        """The file `name` in the recordings folder, if it is one of ours (else None): only a
        recording's own name matches (no folder, `..`, NUL or newline), and a link leading out of
        the folder is not followed."""
        if not NAME.fullmatch(name):
            return None
        path = self.folder / name
        try:
            inside = path.is_file() and path.resolve().is_relative_to(self.folder.resolve())
        except (OSError, ValueError, RuntimeError):     # a loop of links, a vanished folder
            return None
        return path if inside else None

    # -- the thread ------------------------------------------------------------------------------------
    def _run(self, take: _Take) -> None:
        written_at = 0.0
        events = 0
        try:
            while True:
                blk = take.sink.take(timeout=0.5)
                if blk is None:
                    if take.sink.closed:
                        break
                    continue
                self._write(take, blk)
                b = take.builder
                if len(b.events) != events or b.seconds - written_at >= SIDECAR_EVERY_S:
                    events, written_at = len(b.events), b.seconds
                    b.timeline().save(take.sidecar)
            self._lost(take, take.sink.take_dropped(), "at the end")
            take.writer.close()
            take.file.close()
            take.builder.timeline().save(take.sidecar)
        except Exception as e:             # a full disk, a write error: the stream goes on
            take.error = one_line(e)
            self.engine.remove_sink(take.sink)
            take.sink.close()
            take.writer.abort()
            _close_quietly(take.file)
            kept = trim_to_fragments(take.video)
            log.info("the recording %s keeps %s bytes of complete fragments", take.name, kept)
            try:
                take.builder.timeline().save(take.sidecar)
            except Exception as e2:        # the same disk: keep the last sidecar written
                log.debug("could not write the final sidecar: %s", e2)
            log.error("the recording %s stopped: %s", take.name, take.error)
            self.emit(ErrorEvent(message=f"the recording stopped: {take.error}"))
        finally:
            with self._lock:
                if self._take is take:
                    self._take = None
        log.info("recording %s: %d frames (%.1f s)", take.name, take.builder.frames, take.builder.seconds)
        self.emit(self._event(take, "failed" if take.error else "stopped"))

    def _write(self, take: _Take, blk: GeneratedBlock) -> None:
        self._lost(take, blk.dropped_before, f"before block {blk.index}")
        take.writer.write(blk.frames)
        take.builder.add(blk, block_hash(blk.frames))

    def _lost(self, take: _Take, blocks: int, where: str) -> None:
        """Blocks the sink dropped: an error event (the one in the sidecar comes with the next block or the end)."""
        if not blocks:
            return
        message = f"the recorder fell behind and lost {blocks} block(s) {where}; the recording has a gap there"
        log.error(message)
        self.emit(ErrorEvent(message=message))
        if where == "at the end":
            take.builder.lost(blocks)

    # -- files -----------------------------------------------------------------------------------------
    def _open(self) -> _Take:
        source = self._source()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RecordingError(f"cannot create the recordings folder {self.folder}: {e.strerror or e}") from None
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self._clock()))
        for n in range(1, 1000):
            name = f"longlive-{stamp}" + ("" if n == 1 else f"-{n}")
            video = self.folder / f"{name}.mp4"
            try:
                fd = os.open(video, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            except OSError as e:
                raise RecordingError(f"cannot write in the recordings folder {self.folder}: "
                                     f"{e.strerror or e}") from None
            break
        else:
            raise RecordingError(f"too many recordings named longlive-{stamp} in {self.folder}")
        file = os.fdopen(fd, "wb", buffering=0)   # unbuffered: each fragment reaches the file as it is made
        try:
            writer = self._make_writer(file, source)
        except BaseException:
            file.close()
            video.unlink(missing_ok=True)
            raise
        return _Take(name=video.name, video=video, sidecar=self.folder / f"{name}.timeline.json",
                     started=self._clock(), sink=BlockSink(self.sink_blocks, "recorder"), writer=writer, file=file,
                     builder=SidecarBuilder(source))

    def _make_writer(self, file: Any, source: Source) -> Any:
        if self._writer_factory is not None:
            return self._writer_factory(file, source)
        from studio.videofile import FragmentedVideoWriter
        return FragmentedVideoWriter(file, source.width, source.height, round(source.fps))

    def _describe(self, take: _Take) -> dict[str, Any]:
        return {"name": take.name, "url": self.url_prefix + take.name, "sidecar": take.sidecar.name,
                "started": take.started, "frames": take.builder.frames, "seconds": round(take.builder.seconds, 2)}

    def _event(self, take: _Take, status: str) -> RecordingEvent:
        d = self._describe(take)
        return RecordingEvent(status=status, name=d["name"], url=d["url"], sidecar=d["sidecar"], frames=d["frames"],
                              seconds=d["seconds"], error=take.error)


def _close_quietly(file: Any) -> None:
    try:
        file.close()
    except OSError as e:           # the disk that failed the recording may fail the close too
        log.debug("closing the recording: %s", e)


def trim_to_fragments(path: Path) -> int | None:
    """Cut a fragmented MP4 back to the end of its last complete top-level box, a `moof` only
    together with the box after it (its `mdat`), so a write cut short leaves a file that
    decodes to its end. Returns the size kept (None when the file cannot be read or cut)."""
    try:
        with open(path, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            good = offset = 0
            moof = False                 # a moof whose mdat has not been seen complete
            while offset + 8 <= size:
                f.seek(offset)
                head = f.read(16)
                n, kind = struct.unpack(">I4s", head[:8])
                if n == 1:               # a 64-bit size follows
                    if len(head) < 16:
                        break
                    n = struct.unpack(">Q", head[8:16])[0]
                if n < 8 or offset + n > size:     # 0 ("to the end"), nonsense, or cut short
                    break
                offset += n
                if kind == b"moof":
                    moof = True
                    continue
                moof, good = False, offset
            if good < size:
                f.truncate(good)
            return good
    except OSError as e:
        log.warning("could not cut the recording %s back to its complete fragments: %s", path.name, e)
        return None
