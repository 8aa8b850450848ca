"""A sink that must see every generated block (the recorder): a bounded queue of its own.

The frame bus has latest-frame semantics, right for viewers (a slow one skips frames for
itself) and wrong for a recorder, which must keep every frame. So the engine also hands
each block it generates to every attached `BlockSink`: `offer` never blocks the engine; when
the sink's queue is full the block is dropped and counted, and the consumer learns of it
with the next block it takes (`GeneratedBlock.dropped_before`), so it can report the loss
instead of skipping silently.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

import numpy as np

from studio.lineage import Lineage

SINK_BLOCKS = 16   # blocks one sink may fall behind (about 12 s at 16 fps) before blocks are dropped


@dataclass(frozen=True)
class GeneratedBlock:
    frames: np.ndarray          # [N, H, W, 3] uint8, read-only
    index: int                  # blocks generated since the server started (0, 1, ...)
    block: int                  # the block's index in its stream
    prompt: str                 # the prompt it was generated under
    lineage: Lineage            # how the stream came to this block (see studio.lineage)
    cause: str | None = None    # why the stream jumped before this block ("rewind to segment 2", "seed 7", ...)
    dropped_before: int = 0     # blocks this sink lost just before this one


class BlockSink:
    def __init__(self, capacity: int = SINK_BLOCKS, name: str = "sink"):
        self.name = name           # what metrics call it (recorder, gstreamer, ...)
        if capacity < 1:
            raise ValueError("a block sink holds at least one block")
        self.capacity = capacity
        self._queue: collections.deque[GeneratedBlock] = collections.deque()
        self._cond = threading.Condition()
        self._dropped = 0          # since the last block taken
        self.dropped_total = 0
        self.closed = False

    def offer(self, block: GeneratedBlock) -> bool:
        """Queue `block` (engine thread; never blocks). False when it was dropped."""
        with self._cond:
            if self.closed:
                return False
            if len(self._queue) >= self.capacity:
                self._dropped += 1
                self.dropped_total += 1
                return False
            if self._dropped:
                block = GeneratedBlock(block.frames, block.index, block.block, block.prompt, block.lineage,
                                       block.cause, self._dropped)
                self._dropped = 0
            self._queue.append(block)
            self._cond.notify_all()
            return True

    def take(self, timeout: float | None = None) -> GeneratedBlock | None:
        """The oldest queued block, waiting up to `timeout` s; None on timeout or once closed and empty."""
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self.closed, timeout)
            return self._queue.popleft() if self._queue else None

    def take_dropped(self) -> int:
        """Blocks dropped since the last block taken (and forget them): the loss at the end."""
        with self._cond:
            n, self._dropped = self._dropped, 0
            return n

    def close(self) -> None:
        """No more blocks; `take` returns what is queued, then None."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)
