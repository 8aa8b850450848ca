"""The prompt encoder thread: text embeddings made off the generation thread, newest first.

A new prompt's text encoding (UMT5: seconds on a CPU, a large upload when the encoder is
offloaded) must not stall the stream, so the engine hands it to this thread and keeps
generating under the old prompt until the embedding is ready. Only the newest request
matters: a request still waiting when a newer one arrives is cancelled unencoded.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    embedding: Any
    encode_ms: float



class PromptEncoderWorker:
    """One thread that encodes prompts off the generation thread; the newest request wins.

    `request(text)` returns a `Future` of an `Encoded` and cancels every request still
    waiting (one being encoded runs to the end). `prepare(text)` (an armed cue) is encoded
    when no request waits, and neither cancels nor is cancelled by requests. `setup` runs first on the thread (the CUDA
    device binding); `on_done` after each encoding (the engine wakes its worker)."""

    def __init__(self, encode: Callable[[str], Any], *, setup: Callable[[], None] | None = None,
                 on_done: Callable[[], None] | None = None, name: str = "longlive-encoder"):
        self._encode, self._setup, self._on_done, self.name = encode, setup, on_done, name
        self._cond = threading.Condition()
        self._queue: collections.deque[tuple[Future, Any]] = collections.deque()
        self._prepared: collections.deque[tuple[Future, Any]] = collections.deque()
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def request(self, text: str) -> Future:
        job: Future = Future()
        with self._cond:
            if self._closed:
                job.set_exception(RuntimeError("the prompt encoder has stopped"))
                return job
            for waiting, _ in self._queue:
                waiting.cancel()
            self._queue.clear()
            self._queue.append((job, text))
            self._cond.notify_all()
        return job

    def prepare(self, text: Any) -> Future:
        """Encode `text` when the encoder has nothing newer to do (arming a cue)."""
        job: Future = Future()
        with self._cond:
            if self._closed:
                job.set_exception(RuntimeError("the prompt encoder has stopped"))
                return job
            self._prepared.append((job, text))
            self._cond.notify_all()
        return job

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is waiting or being encoded; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._prepared and not self._busy, timeout)

    def close(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._closed = True
            for waiting, _ in [*self._queue, *self._prepared]:
                waiting.cancel()
            self._queue.clear()
            self._prepared.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        if self._setup is not None:
            try:
                self._setup()
            except Exception:  # encoding may still work on the default device; say why it may not
                log.exception("the encoder thread could not bind its device")
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._prepared or self._closed)
                if self._closed:
                    return
                job, text = (self._queue or self._prepared).popleft()
                if not job.set_running_or_notify_cancel():
                    continue
                self._busy = True
            t0 = time.perf_counter()
            try:
                job.set_result(Encoded(self._encode(text), (time.perf_counter() - t0) * 1e3))
            except Exception as e:  # the engine reports it for that prompt's id
                job.set_exception(e)
            with self._cond:
                self._busy = False
                self._cond.notify_all()
            if self._on_done is not None:
                self._on_done()
