"""Writing frames to an H.264 video file with PyAV (MP4, MOV or Matroska, by the file's suffix).

The file is written under a hidden temporary name beside the target and renamed into place
when it is complete, so an interrupted render (an error, Ctrl-C, SIGTERM through the command
line) never leaves a truncated file under the final name, nor a temporary one behind. The
finished file gets the usual permissions (0666 less the umask), like any file the user makes.

x264's macroblock-tree rate control is turned off: with it, the same frames encoded twice
in one process gave different files here (threads or not; it goes away with mbtree off or
without x264's assembly), and a user expects the same seed to give the same video. The
cost is a little compression efficiency at the same quality.

Also here: `FragmentedVideoWriter`, the live recorder's writer, which writes fragmented MP4
in place as it goes (a crash leaves a file that plays up to its last complete fragment),
and `concat_videos`, which joins files written with the same settings without re-encoding.
"""

from __future__ import annotations

import errno
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np

from streaming.errors import UserError, one_line

# file suffix -> the container PyAV writes (all of them carry H.264)
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}


class OutputError(UserError, RuntimeError):
    """The output path cannot be written; the message is one sentence for the user."""


def check_output(path: Path) -> str:
    """Fail early (before any generation) if `path` cannot be written; returns its container."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"output {path} is a folder; give a file name such as {path / 'out.mp4'}")
    container = CONTAINERS.get(path.suffix.lower())
    if container is None:
        raise OutputError(f"cannot write {path.name}: the video is H.264, so name the file "
                          f"{' or '.join(', '.join(CONTAINERS).rsplit(', ', 1))}")
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {path}: folder {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"cannot write {path}: the file exists and is read-only")
    return container


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _Writer:
    """`with` closes the file on success and aborts it on an exception."""

    def close(self) -> object: ...

    def abort(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class VideoWriter(_Writer):
    def __init__(self, path: str | Path, width: int, height: int, fps: int, crf: int = 18):
        self.path = Path(path)
        container = check_output(self.path)
        import av  # here, not at the top: the command line runs on GPU machines without PyAV
        self._av = av
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=f"{self.path.suffix}.partial",
                                   dir=self.path.parent or ".")
        self._tmp = Path(tmp)
        try:
            os.close(fd)
            self._container = av.open(str(self._tmp), mode="w", format=container)
            self._stream = self._container.add_stream("libx264", rate=fps)
            self._stream.width, self._stream.height = width, height
            self._stream.pix_fmt = "yuv420p"
            # mbtree off: deterministic output (see the module docstring)
            self._stream.options = {"crf": str(crf), "preset": "veryfast", "x264-params": "mbtree=0"}
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        self.frames = 0
        self._closed = False

    def write(self, frames: np.ndarray) -> None:
        """frames: [N, H, W, 3] uint8 RGB."""
        for rgb in frames:
            frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.frames += 1

    def close(self) -> Path:
        """Flush, close and move the file into place."""
        if not self._closed:
            self._closed = True
            try:
                for packet in self._stream.encode():
                    self._container.mux(packet)
                self._container.close()
                os.chmod(self._tmp, 0o666 & ~_umask())
                os.replace(self._tmp, self.path)
            except BaseException:
                self._tmp.unlink(missing_ok=True)
                raise
        return self.path

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._container.close()
            finally:
                self._tmp.unlink(missing_ok=True)



class RecordingWriteError(UserError, OSError):
    """The live recording could not be written (a full disk, a lost drive, the muxer failing);
    the message is one sentence for the user."""


def _reason(exc: BaseException) -> str:
    """What went wrong, in words: an OSError's strerror ("No space left on device"), else its message."""
    reason = getattr(exc, "strerror", None) or one_line(exc)
    return " ".join(str(reason).split())


class _Sink:
    """The file object PyAV writes through, in front of the real one.

    PyAV (18.1) catches an exception raised in a Python file object's write(), stashes it in a
    thread-local and re-raises it, unchanged, from its next call that checks a libav result
    (tried: a full disk comes out of `mux` or `close` as the original OSError). By PyAV's
    source, a stash that no checked call follows waits in that thread-local and surfaces from
    whichever PyAV call checks a result next, unrelated or not, and a second stash is printed
    to stderr and dropped. So this sink never raises into PyAV: it remembers the first error,
    answers libav with a negative error code (libav then writes nothing more), and the writer
    raises the error itself after every PyAV call.
    It offers no seek/tell, so PyAV treats the output as a stream and the muxer never goes back
    to patch what it wrote (fragmented MP4 with an empty moov needs no seeking), and no
    close(): the real file is ours (or the caller's) to close.
    """

    def __init__(self, file: BinaryIO):
        self.file = file
        self.error: BaseException | None = None
        self.bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.error is not None:
            return -errno.EIO
        view = memoryview(data)
        try:
            while len(view):
                n = self.file.write(view)
                if n is None:        # a file object that does not count (all taken, as PyAV assumes)
                    break
                if n <= 0:
                    raise OSError(errno.EIO, "the file accepted no bytes")
                view = view[n:]      # a raw file may take part of it (e.g. the disk filling up)
        except Exception as exc:     # any failure of the file is the recording's failure
            self.error = exc
            return -(getattr(exc, "errno", None) or errno.EIO)
        self.bytes += len(data)
        return len(data)


class FragmentedVideoWriter(_Writer):
    """H.264 (libx264) in fragmented MP4 written in place as it goes, so a crash or kill -9
    leaves a file that plays up to its last complete fragment.

    A fragment starts at every keyframe, one every `keyframe_s` seconds exactly (no scene-cut
    keyframes); the encoder runs without B-frames or lookahead (x264's zerolatency tune), so
    each frame leaves it as it goes in and a fragment reaches the file as soon as the next
    keyframe is muxed: at most one fragment (`keyframe_s` of video) is lost to a crash. As in
    `VideoWriter`, macroblock-tree rate control is off for deterministic output.

    `target` is a path (opened here, unbuffered, and created or truncated; .mp4, .m4v or
    .mov) or a binary file object with write() (written through, flushed but not closed by
    `close`). Any failure to write raises `RecordingWriteError` from `write` or `close`, and
    every later `write` or `close` raises it again; `abort` never raises.
    """

    def __init__(self, target: str | Path | BinaryIO, width: int, height: int, fps: int, *, crf: int = 20,
                 keyframe_s: float = 0.5, preset: str = "veryfast"):
        for name, value in (("width", width), ("height", height)):
            if int(value) != value or value <= 0 or value % 2:
                raise ValueError(f"the recording's {name} must be a positive even number of pixels "
                                 f"(H.264 in yuv420p), not {value}")
        if fps <= 0 or keyframe_s <= 0:
            raise ValueError(f"the recording needs a positive frame rate and keyframe interval, "
                             f"not fps={fps}, keyframe_s={keyframe_s}")
        self.width, self.height, self.fps = int(width), int(height), int(fps)
        self.keyint = max(1, round(fps * keyframe_s))
        self.frames = 0
        self._error: RecordingWriteError | None = None
        self._closed = False
        self._own_file = None
        if isinstance(target, (str, os.PathLike)):
            self._label = f" {target}"
            fmt = check_output(Path(target))
            if fmt not in ("mp4", "mov"):
                raise OutputError(f"cannot record to {Path(target).name}: the recording is fragmented MP4, "
                                  f"so name the file .mp4, .m4v or .mov")
            import av  # here, not at the top: the command line runs on GPU machines without PyAV
            try:
                self._own_file = open(target, "wb", buffering=0)   # unbuffered: nothing waits in Python
            except OSError as exc:
                raise RecordingWriteError(f"cannot write the recording{self._label}: {_reason(exc)}") from exc
            file = self._own_file
        else:
            fmt = "mp4"
            name = getattr(target, "name", None)
            self._label = f" {name}" if isinstance(name, str) and name else ""
            import av
            file = target
        self._av = av
        self._sink = _Sink(file)
        try:
            self._container = av.open(self._sink, mode="w", format=fmt,
                                      options={"movflags": "frag_keyframe+empty_moov+default_base_moof"})
            self._stream = self._container.add_stream("libx264", rate=self.fps)
            self._stream.width, self._stream.height = self.width, self.height
            self._stream.pix_fmt = "yuv420p"
            k = self.keyint
            self._stream.options = {
                "crf": str(crf), "preset": preset, "tune": "zerolatency",
                "x264-params": f"keyint={k}:min-keyint={k}:scenecut=0:bframes=0:rc-lookahead=0:"
                               f"sync-lookahead=0:mbtree=0"}
            self._time_base = Fraction(1, self.fps)
        except BaseException:
            if self._own_file is not None:
                self._own_file.close()
            raise

    def _fail(self, exc: BaseException | None) -> RecordingWriteError:
        """Remember the first failure (the sink's own error comes first: it is the cause)."""
        if self._error is None:
            cause = self._sink.error or exc
            self._error = RecordingWriteError(f"cannot write the recording{self._label}: {_reason(cause)}")
            self._error.errno = getattr(cause, "errno", None)
            self._error.__cause__ = cause
        return self._error

    def _guarded(self, call, *args):
        """Run one PyAV call; any write failure (the sink's or libav's) becomes RecordingWriteError."""
        try:
            result = call(*args)
        except (OSError, self._av.error.FFmpegError) as exc:
            raise self._fail(exc)       # its __cause__ is the first failure, set by _fail
        if self._sink.error is not None:
            raise self._fail(None)
        return result

    def write(self, frames: np.ndarray) -> None:
        """frames: [N, H, W, 3] uint8 RGB."""
        if self._error is not None:
            raise self._error
        if self._closed:
            raise ValueError("the recording is closed")
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3) or frames.dtype != np.uint8:
            raise ValueError(f"the recorder takes [N, {self.height}, {self.width}, 3] uint8 frames, "
                             f"not {list(frames.shape)} {frames.dtype}")
        for rgb in frames:
            frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = self.frames, self._time_base
            for packet in self._guarded(self._stream.encode, frame):
                self._guarded(self._container.mux, packet)
            self.frames += 1

    def close(self) -> None:
        """Flush the encoder, finish the last fragment and close; a second call does nothing
        (or raises the recording's failure again)."""
        if self._closed:
            if self._error is not None:
                raise self._error
            return
        if self._error is not None:
            self.abort()
            raise self._error
        self._closed = True
        try:
            for packet in self._guarded(self._stream.encode):
                self._guarded(self._container.mux, packet)
            self._guarded(self._container.close)
            flush = getattr(self._sink.file, "flush", None)
            if flush is not None:
                self._guarded(flush)
        except BaseException:
            self.abort()
            raise
        if self._own_file is not None:
            file, self._own_file = self._own_file, None
            try:
                file.close()
            except OSError as exc:
                raise self._fail(exc)

    def abort(self) -> None:
        """Close without raising; the file keeps what was written (every complete fragment)."""
        self._closed = True
        try:
            self._container.close()
        except Exception:    # aborting: the failure is already known or beside the point
            pass
        if self._own_file is not None:
            file, self._own_file = self._own_file, None
            try:
                file.close()
            except OSError:
                pass



def concat_videos(parts: list[Path], output: Path) -> Path:
    """Join H.264 files written with identical settings (e.g. chunks of one render, each from
    `VideoWriter`) into `output` without re-encoding: the packets are copied, their timestamps
    moved on by the frames before them. Each part must start with a keyframe (a `VideoWriter`
    file does). The parts must agree on codec, size, pixel format, frame rate and parameter
    sets (SPS/PPS); x264's settings SEI in each part's first frame is in-band and harmless.
    The container follows `output`'s suffix; the file is written under a temporary name beside
    it and moved into place when complete, as `VideoWriter` does."""
    parts = [Path(p) for p in parts]
    if not parts:
        raise ValueError("concat_videos needs at least one part")
    output = Path(output)
    container = check_output(output)
    import av  # here, not at the top: the command line runs on GPU machines without PyAV

    def describe(stream) -> dict:
        cc = stream.codec_context
        return {"codec": cc.name, "size": (cc.width, cc.height), "pixel format": cc.pix_fmt,
                "frame rate": stream.average_rate, "parameter sets (SPS/PPS)": bytes(cc.extradata or b"")}

    def open_part(path: Path):
        try:
            inp = av.open(str(path))
        except (OSError, av.error.FFmpegError) as exc:
            raise OutputError(f"cannot read part {path}: {_reason(exc)}") from None
        if not inp.streams.video:
            inp.close()
            raise OutputError(f"part {path} has no video stream")
        return inp, inp.streams.video[0]

    first, first_stream = open_part(parts[0])
    with first:
        want = describe(first_stream)
        if not want["frame rate"]:
            raise OutputError(f"part {parts[0]} has no frame rate")
        for path in parts[1:]:
            inp, stream = open_part(path)
            with inp:
                got = describe(stream)
            for key in want:
                if got[key] != want[key]:
                    shown = (lambda v: f"{len(v)} bytes") if key.startswith("parameter") else str
                    raise OutputError(f"cannot join part {path} to {parts[0]}: its {key} differs "
                                      f"({shown(got[key])} against {shown(want[key])})")
        fps = Fraction(want["frame rate"])

        fd, tmp = tempfile.mkstemp(prefix=f".{output.stem}.", suffix=f"{output.suffix}.partial",
                                   dir=output.parent or ".")
        tmp = Path(tmp)
        try:
            os.close(fd)
            with av.open(str(tmp), mode="w", format=container) as out:
                out_stream = out.add_stream_from_template(first_stream)
                frames_before = 0
                for path in parts:
                    inp, stream = open_part(path)
                    with inp:
                        tb = stream.time_base
                        packets = [p for p in inp.demux(stream) if p.size]
                        if not packets:
                            raise OutputError(f"part {path} holds no frames")
                        if not packets[0].is_keyframe:
                            raise OutputError(f"part {path} does not start with a keyframe")
                        if any(p.pts is None for p in packets):
                            raise OutputError(f"part {path} has packets without timestamps")
                        start = min(p.pts for p in packets)
                        shift = round(Fraction(frames_before) / fps / tb) - start
                        for p in packets:
                            p.pts += shift
                            if p.dts is not None:
                                p.dts += shift
                            p.stream = out_stream
                            try:
                                out.mux(p)
                            except (OSError, av.error.FFmpegError) as exc:
                                raise OutputError(f"cannot join part {path}: {_reason(exc)}") from None
                        frames_before += len(packets)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, output)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return output
