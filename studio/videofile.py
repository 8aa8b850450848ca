"""Writing frames to an H.264 video file with PyAV (MP4, MOV or Matroska, by the file's suffix).

The file is written under a hidden temporary name beside the target and renamed into place
when it is complete, so an interrupted render (an error, Ctrl-C, SIGTERM through the command
line) never leaves a truncated file under the final name, nor a temporary one behind. The
finished file gets the usual permissions (0666 less the umask), like any file the user makes.

x264's macroblock-tree rate control is turned off: with it, the same frames encoded twice
in one process gave different files here (threads or not; it goes away with mbtree off or
without x264's assembly), and a user expects the same seed to give the same video. The
cost is a little compression efficiency at the same quality.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from streaming.errors import UserError

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


class VideoWriter:
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

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
