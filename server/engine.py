"""The engine: the one worker thread that owns the video pipeline.

Nothing else touches the pipeline (or torch). Commands from the control protocol reach the
worker through a thread-safe queue (`submit`) and are applied at block boundaries, i.e.
between two `next_frames()` calls:

- prompt: `pipe.switch_prompt(text)` (text encoding and KV re-cache happen in there); the
  next block is generated under it and a `prompt_applied` event goes out. Several prompts
  queued within one block: the last one wins, the others are reported as superseded.
- seed: the stream restarts (`pipe.start`) with the new seed and the current prompt (the
  latest one asked for) at the next boundary; frames already generated still play first.
- pause / resume: the playback clock freezes / continues at once (every viewer holds the
  frame on air); the worker generates nothing while paused.

The worker generates just in time: it starts the next block only when at most
`lead_blocks` blocks (counted in frames of the last block) are left to play, so a prompt
switch reaches the screen within about `lead_blocks + 1` blocks.

Events (prompt applied, state changes, errors) are handed to subscribers on their own
asyncio loops with `loop.call_soon_threadsafe`; the worker never blocks on a listener.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from streaming.errors import one_line

from .framebus import FrameBus
from .protocol import (Command, ErrorEvent, Event, PauseCommand, PromptApplied, PromptCommand, ResumeCommand,
                       SeedCommand, StateEvent)

log = logging.getLogger(__name__)

HISTORY = 50          # applied prompts kept for the state (new clients see the recent list)
MAX_WAIT_S = 0.5      # the worker re-checks the clock at least this often


class Pipeline(Protocol):
    """What the engine needs of `streaming.pipeline.VideoPipeline` (tests pass a fake)."""

    fps: int
    size: tuple[int, int]
    embedded_default: bool

    def start(self, prompt: str, seed: int = 0) -> None: ...
    def switch_prompt(self, prompt: str) -> None: ...
    def next_frames(self) -> Any: ...        # FrameBlock: frames, block, prompt, dit_ms, decode_ms


@dataclass
class BlockTiming:
    block: int = -1
    frames: int = 0
    dit_ms: float = 0.0
    decode_ms: float = 0.0

    @property
    def block_ms(self) -> float:
        return self.dit_ms + self.decode_ms

    @property
    def gen_fps(self) -> float:
        return self.frames / (self.block_ms / 1e3) if self.block_ms > 0 else 0.0


@dataclass
class _PendingPrompt:
    command: PromptCommand
    received: float            # monotonic


@dataclass
class _Listener:
    callback: Callable[[Event], None]
    loop: asyncio.AbstractEventLoop


@dataclass
class EngineState:
    prompt: str
    seed: int
    paused: bool
    running: bool
    failed: str | None
    blocks: int
    history: list[dict[str, Any]] = field(default_factory=list)


class Engine:
    def __init__(self, pipe: Pipeline, *, prompt: str = "", seed: int = 0, lead_blocks: int = 1,
                 ring_frames: int | None = None, clock: Callable[[], float] = time.monotonic):
        if lead_blocks < 1:
            raise ValueError("lead_blocks must be at least 1")
        self.pipe = pipe
        self.lead_blocks = lead_blocks
        video_frames_per_block = 4 * _latent_frames_per_block(pipe)
        # room for the block on air, `lead_blocks` blocks ahead and one block being replaced
        self.bus = FrameBus(pipe.fps, capacity=ring_frames or (lead_blocks + 2) * video_frames_per_block, clock=clock)
        self._clock = clock
        self._prompt = prompt          # the prompt asked for last (applies at the next block)
        self._seed = seed
        self._cond = threading.Condition()
        self._commands: collections.deque[tuple[Command, float]] = collections.deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._listeners: list[_Listener] = []
        self._listeners_lock = threading.Lock()
        self._pending: list[_PendingPrompt] = []
        self._history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY)
        self._timing = BlockTiming()
        self._last_block_video_frames = 0
        self._blocks = 0               # blocks generated since the server started
        self._failed: str | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the engine is already started")
        self._thread = threading.Thread(target=self._run, name="longlive-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker after the block in progress (blocking; call it off the event loop)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the engine thread did not stop within %.0f s", timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- commands (any thread) -------------------------------------------------------------------
    def submit(self, command: Command) -> None:
        """Queue a command for the next block boundary (pause/resume act on playback at once)."""
        if isinstance(command, PauseCommand):
            self.bus.pause()
        elif isinstance(command, ResumeCommand):
            self.bus.resume()
        with self._cond:
            self._commands.append((command, self._clock()))
            self._cond.notify_all()

    # -- events -----------------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[Event], None], loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """Call `callback(event)` on `loop` for every event; returns the unsubscribe function."""
        listener = _Listener(callback, loop)
        with self._listeners_lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._listeners_lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return unsubscribe

    def _emit(self, event: Event) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener.loop.call_soon_threadsafe(listener.callback, event)
            except RuntimeError:       # that loop is closed: its owner is gone
                with self._listeners_lock:
                    if listener in self._listeners:
                        self._listeners.remove(listener)

    # -- state (any thread) --------------------------------------------------------------------------
    def state(self) -> EngineState:
        with self._cond:
            return EngineState(prompt=self._prompt, seed=self._seed, paused=self.bus.paused, running=self.running,
                               failed=self._failed, blocks=self._blocks, history=list(self._history))

    def timing(self) -> BlockTiming:
        with self._cond:
            t = self._timing
            return BlockTiming(t.block, t.frames, t.dit_ms, t.decode_ms)

    # -- the worker ----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.begin()
            while True:
                wait = self.step()
                with self._cond:
                    if self._stopping:
                        break
                    if wait > 0 and not self._commands:
                        self._cond.wait(min(wait, MAX_WAIT_S))
        except Exception as e:  # the stream cannot go on; say so to every client and stop
            log.exception("the generator failed")
            with self._cond:
                self._failed = f"{type(e).__name__}: {one_line(e)}"
            self._emit(ErrorEvent(message=f"the generator stopped: {self._failed}"))
            self._emit(StateEvent(state={"failed": self._failed}))
        finally:
            log.info("engine stopped after %d blocks", self._blocks)

    def begin(self) -> None:
        """Start the first stream (the worker does this; tests driving `step` call it once)."""
        with self._cond:
            prompt, seed = self._prompt, self._seed
        self.pipe.start(prompt, seed)
        log.info("stream started: seed %d, prompt %r", seed, prompt)

    def step(self) -> float:
        """One turn of the worker at a block boundary: apply the queued commands, then generate
        a block if playback needs one. Returns 0 after a block, else the seconds to wait.
        (The worker thread loops on it; tests call it directly with a fake clock.)"""
        self._apply_commands()
        if self.bus.paused:
            return MAX_WAIT_S
        wait = self.bus.time_until_ahead(self.lead_blocks * self._last_block_video_frames)
        if wait > 0:
            return wait
        self._generate_block()
        return 0.0

    def _apply_commands(self) -> None:
        """At a block boundary: apply everything queued, in order. Prompts only record what
        was asked; the switch (text encoding, cross-attention K/V) is done once, for the last
        of them, after the queue is drained."""
        changed = False
        switch: PromptCommand | None = None
        with self._cond:
            running = self._prompt          # what the pipeline runs under now
        first_pending = len(self._pending)
        while True:
            with self._cond:
                if not self._commands:
                    break
                command, received = self._commands.popleft()
            if isinstance(command, PromptCommand):
                with self._cond:
                    self._prompt = command.text
                self._pending.append(_PendingPrompt(command, received))
                switch = command
                continue
            try:
                changed |= self._apply(command)
                if isinstance(command, SeedCommand):
                    switch = None          # the restart already runs under the latest prompt
                    with self._cond:
                        running = self._prompt
                    first_pending = len(self._pending)
            except Exception as e:   # a command the pipeline refuses must not end the stream
                log.exception("could not apply %r", command)
                self._emit(ErrorEvent(id=command.id, message=f"could not apply {command.TYPE}: {one_line(e)}"))
        if switch is not None:
            try:
                self.pipe.switch_prompt(switch.text)
            except Exception as e:   # the stream goes on under the prompt it had
                log.exception("could not switch to %r", switch.text)
                with self._cond:
                    self._prompt = running
                del self._pending[first_pending:]
                self._emit(ErrorEvent(id=switch.id, message=f"could not apply prompt: {one_line(e)}"))
        if changed:
            self._emit(StateEvent(state=self._state_delta()))

    def _apply(self, command: Command) -> bool:
        """Apply one non-prompt command; True if clients should hear the new state."""
        if isinstance(command, SeedCommand):
            with self._cond:
                prompt = self._prompt
            self.pipe.start(prompt, command.seed)
            with self._cond:
                self._seed = command.seed
            log.info("stream restarted: seed %d, prompt %r", command.seed, prompt)
            return True
        if isinstance(command, (PauseCommand, ResumeCommand)):
            return True                  # playback already acted in submit(); tell every client
        log.warning("engine ignores command %r", command)
        return False

    def _generate_block(self) -> None:
        blk = self.pipe.next_frames()
        frames = np.asarray(blk.frames)
        first_seq = self.bus.publish(frames, block=blk.block, prompt=blk.prompt)
        done = self._clock()
        with self._cond:
            self._timing = BlockTiming(blk.block, len(frames), float(blk.dit_ms), float(blk.decode_ms))
            self._last_block_video_frames = len(frames)
            self._blocks += 1
            pending, self._pending = self._pending, []
        if pending:
            self._prompt_applied(pending, blk, first_seq, done)

    def _prompt_applied(self, pending: list[_PendingPrompt], blk: Any, first_seq: int, done: float) -> None:
        last = pending[-1]
        playhead = self.bus.playhead()
        plays_in = max(0.0, (first_seq - playhead) / self.bus.fps) if playhead >= 0 else 0.0
        event = PromptApplied(id=last.command.id, text=blk.prompt, block=int(blk.block), frame=first_seq,
                              latency_ms=round((done - last.received) * 1e3, 1), plays_in_ms=round(plays_in * 1e3, 1),
                              time=time.time(), superseded=[p.command.id for p in pending[:-1]])
        with self._cond:
            self._history.append({"id": event.id, "text": event.text, "block": event.block, "frame": event.frame,
                                  "latency_ms": event.latency_ms, "time": event.time})
        log.info("prompt applied at block %d (%.0f ms): %r", event.block, event.latency_ms, event.text)
        self._emit(event)

    def _state_delta(self) -> dict[str, Any]:
        s = self.state()
        return {"prompt": s.prompt, "seed": s.seed, "paused": s.paused}


def _latent_frames_per_block(pipe: Any) -> int:
    """Latent frames per block from the pipeline's config (3 when it has none)."""
    try:
        return int(pipe.cfg.latent_frames_per_block)
    except AttributeError:
        return 3
