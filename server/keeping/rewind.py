"""Rewind points: a snapshot of the stream at the start of each prompt segment, within a memory budget.

The engine puts one `RewindPoint` here at every segment boundary (the stream's start and
every applied prompt), holding the pipeline's snapshot (KV window, latent tail, noise,
decoder caches: `VideoPipeline.snapshot`, kept in host memory) and the lineage that led to
it. `{"type": "rewind", "segment": N}` restores point N. The shelf keeps the newest points
whose snapshots fit in `max_bytes`, dropping the oldest first; a snapshot larger than the
whole budget is not kept at all (rewind is then unavailable, and the engine says so once).
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from typing import Any

from studio.lineage import Lineage

REWIND_SHARE = 4             # by default snapshots may take a quarter of this machine's memory
MAX_POINTS = 256             # points kept, at most
LISTED = 64                  # the newest points listed in the state ...
LISTED_CHARS = 120           # ... each with at most this much of its prompt (a state message stays small)


def default_budget() -> int:
    """Bytes of host memory for snapshots when none is asked for: a quarter of the machine's
    memory (at full LongLive size a snapshot is about 3.5 GB, the tiny preset's about 9 MB)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // REWIND_SHARE
    except (ValueError, OSError, AttributeError):      # not on this platform
        return 4 << 30


@dataclass(frozen=True)
class RewindPoint:
    segment: int            # numbered from 0 over the server's life, never reused
    index: int              # blocks generated since the server started, before this point
    block: int              # the stream block the segment starts with
    prompt: str
    time: float             # Unix time the segment started
    lineage: Lineage        # of the state at this point
    embedding: Any          # the prompt's embedding (to restart the stream after a failure)
    snapshot: Any           # streaming.pipeline.PipelineSnapshot
    nbytes: int
    conditioning: Any = None    # the prompt as the pipeline takes it (str, or a streaming.blend.Blend)

    def describe(self) -> dict[str, Any]:
        prompt = self.prompt if len(self.prompt) <= LISTED_CHARS else self.prompt[:LISTED_CHARS - 1] + "…"
        return {"segment": self.segment, "block": self.block, "index": self.index, "prompt": prompt,
                "time": self.time}


class RewindShelf:
    def __init__(self, max_bytes: int | None = None, max_points: int = MAX_POINTS):
        max_bytes = default_budget() if max_bytes is None else max_bytes
        if max_bytes < 0 or max_points < 1:
            raise ValueError("the rewind budget must be at least 0 bytes and 1 point")
        self.max_bytes, self.max_points = max_bytes, max_points
        self._points: collections.OrderedDict[int, RewindPoint] = collections.OrderedDict()
        self._bytes = 0
        self._next = 0

    def next_segment(self) -> int:
        """The number the next segment gets (taken, whether or not its snapshot is kept)."""
        n, self._next = self._next, self._next + 1
        return n

    def put(self, point: RewindPoint) -> bool:
        """Keep `point`, dropping the oldest as needed; False when it alone exceeds the budget."""
        if point.nbytes > self.max_bytes:
            return False
        self._points[point.segment] = point
        self._bytes += point.nbytes
        while self._bytes > self.max_bytes or len(self._points) > self.max_points:
            _, old = self._points.popitem(last=False)
            self._bytes -= old.nbytes
        return True

    def get(self, segment: int) -> RewindPoint | None:
        return self._points.get(segment)

    def missing(self, segment: int) -> str:
        """The sentence for a rewind to a segment that is not kept."""
        if not self._points:
            return f"segment {segment} cannot be rewound to: no segment is kept (raise --rewind-memory)"
        first, last = next(iter(self._points)), next(reversed(self._points))
        if segment >= self._next:
            return f"segment {segment} does not exist yet; segments {first} to {last} can be rewound to"
        return f"segment {segment} is no longer kept (rewind memory holds segments {first} to {last})"

    def points(self) -> list[RewindPoint]:
        return list(self._points.values())

    def listed(self) -> list[dict[str, Any]]:
        """The newest points, for the state."""
        return [p.describe() for p in self.points()[-LISTED:]]

    @property
    def nbytes(self) -> int:
        return self._bytes
