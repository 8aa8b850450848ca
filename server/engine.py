"""The engine: the one worker thread that owns the video pipeline, supervised.

Nothing else generates with the pipeline. Commands from the control protocol reach the
worker through a bounded, thread-safe queue (`submit`) and are applied at block boundaries,
i.e. between two `next_frames()` calls:

- prompt: the text is encoded off the generation thread, by the engine's encoder thread
  (`prompt_encoder.PromptEncoderWorker`, thread "longlive-encoder", calling `pipe.encode`). The stream keeps
  playing under the old prompt until the embedding is ready; at the next boundary after
  that, `pipe.switch_prompt(text, embedding)` re-caches the cross-attention K/V, the next
  block is generated under it and a `prompt_applied` event goes out. The last prompt wins:
  a prompt still waiting for the encoder when a newer one arrives is never encoded; of
  several prompts ready at one boundary only the newest is applied. Every prompt replaced
  that way is listed in the `superseded` ids of the `prompt_applied` that replaced it (at
  most `MAX_SUPERSEDED`, the newest). A prompt that fails to encode is an `error` event
  with its command id; the stream and the state's `prompt` stay on the old prompt.
- seed: the stream restarts (`pipe.start`) with the new seed under the current prompt (a
  prompt queued before the seed whose embedding is ready counts as current) at the next
  boundary; frames already generated still play first.
- pause / resume: the playback clock freezes / continues at once (every viewer holds the
  frame on air); the worker generates nothing while paused.

The worker generates just in time: it starts the next block only when at most
`lead_blocks` blocks (counted in frames of the last block) are left to play, so a prompt
switch reaches the screen within about `lead_blocks + 1` blocks of its embedding being ready.

Supervision. States (`EngineState.status`, the state map's `engine`): `running`,
`restarting`, `stopped`. Any exception while starting the stream, applying a command or
generating a block (a CUDA out-of-memory included) is one `error` event (one line, the
offending command's id when a command caused it), then the state `restarting`: after a
back-off (`backoff_s` doubling per failure in a row, at most `backoff_max_s`: by default 0.5,
1, 2 and 4 s before the 2nd to 5th attempts, never more than 8 s) the stream starts again
from a clean state (`pipe.start`) with the same prompt and seed, and the state goes back to
`running` once a block has been generated. After `max_failures` (5) failures in a row (no
block generated in between) the engine stops for good: an `error` saying so, the state
`stopped` with `failed` set, and every command that was still waiting gets an error. While
it is restarting or stopped, `submit` refuses every command with `CommandRefused` (the
control hub answers it as an `error` with the command's id, never an ack); so it does when
`COMMAND_QUEUE` (64) commands are already waiting, and for a rewind to a segment the rewind
shelf does not keep (checked again when it is applied: in between, the shelf can drop that
segment to make room for a new one, and then that rewind's `error` comes after its ack).
A prompt's encoding failing is not a failure of the stream: only that prompt's `error`.
Commands queued before a failure are still applied after the restart; the command being
applied when it failed is not retried.
A prompt is being applied until its first block is generated: the pipeline re-caches the
window under it in that block, so a failure there (an out-of-memory in the re-cache) is that
prompt's: the `error` carries its id and the stream restarts under the prompt it had.

Devices. On `cuda:N` the engine thread and the encoder thread each make device N their
current CUDA device (`bind_device`) before touching the pipeline, so Triton launches, CUDA
events and the caching allocator follow the pipeline's GPU: one engine per GPU works on a
multi-GPU machine.

Events (prompt applied, state changes, errors) are handed to subscribers on their own
asyncio loops with `loop.call_soon_threadsafe`; the worker never blocks on a listener.
The state stays small: the prompt history it carries is bounded in entries (`HISTORY`)
and in characters (`HISTORY_CHARS`), error texts in `MAX_ERROR_CHARS`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from streaming.blend import Blend, TransitionSpec
from streaming.errors import UserError, one_line
from streaming.noise import SEED_MAX
from studio.lineage import Lineage
from studio.timeline import BlockClock, Timeline

from .block_sink import BlockSink, GeneratedBlock
from .framebus import FrameBus
from .prompt_encoder import Encoded, PromptEncoderWorker
from .protocol import (Command, ErrorEvent, Event, Notice, PauseCommand, PromptApplied, PromptCommand, RequestIdValue,
                       ResumeCommand, RewindCommand, SeedCommand, StateEvent, TimelineCommand)
from .keeping.rewind import RewindPoint, RewindShelf

log = logging.getLogger(__name__)

HISTORY = 50             # applied prompts kept for the state (new clients see the recent list) ...
HISTORY_CHARS = 16_000   # ... as many of the newest as fit in this many characters of prompt text
MAX_WAIT_S = 0.5         # the worker re-checks the clock at least this often
COMMAND_QUEUE = 64       # commands waiting for the next block boundary; more are refused
MAX_SUPERSEDED = 32      # ids listed in one prompt_applied.superseded (the newest)
MAX_ERROR_CHARS = 300    # one error text in an event or the state
MAX_FAILURES = 5         # failures in a row before the engine stops for good
BACKOFF_S = 0.5          # wait before the first restart, doubling per failure in a row ...
BACKOFF_MAX_S = 8.0      # ... up to this

RUNNING, RESTARTING, STOPPED = "running", "restarting", "stopped"


class Pipeline(Protocol):
    """What the engine needs of `streaming.pipeline.VideoPipeline` (tests pass a fake)."""

    fps: int
    size: tuple[int, int]
    embedded_default: bool
    device: Any                             # torch.device (cuda:N binds the engine's threads to GPU N)

    def encode(self, prompt: str) -> Any: ...    # thread-safe; called on the encoder thread
    def start(self, prompt: str, seed: int = 0, embedding: Any = None) -> None: ...
    def switch_prompt(self, prompt: str, embedding: Any = None) -> None: ...
    def next_frames(self) -> Any: ...        # FrameBlock: frames, block, prompt, dit_ms, decode_ms
    # optional, for rewind: snapshot(device) -> snapshot with .nbytes, restore(snapshot), reseed_noise(seed)


class CommandRefused(UserError):
    """`submit` did not queue the command; `str(err)` is the sentence for the client.
    `conflict` False: the engine cannot take commands now (it is down, or its queue is full),
    the same command may be taken later. True: what the command asks for is not there (a
    rewind to a segment that is not kept), so asking again is refused again."""

    def __init__(self, message: str, conflict: bool = False):
        super().__init__(message)
        self.conflict = conflict


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
class _Queued:
    command: Command
    received: float                          # engine clock
    job: Future | None = None                # the encoding of a prompt command
    due: float | None = None                 # engine clock: not on screen before this (a quantised cue)
    cue: tuple[int, str] | None = None       # (cue number, quantize) of a fired cue


@dataclass
class _PendingPrompt:
    command: PromptCommand
    received: float
    job: Future
    superseded: list[RequestIdValue] = field(default_factory=list)   # ids this prompt replaced
    due: float | None = None
    cue: tuple[int, str] | None = None
    transition: TransitionSpec | None = None     # as applied (a timeline's segment brings its own)
    revert: tuple[Any, Any] | None = None        # (conditioning, embedding) before this switch: a failure goes back

    @property
    def encoded(self) -> Encoded:
        return self.job.result()


@dataclass
class _TimelinePlay:
    """A timeline playing live: its prompts by the stream block they take effect at."""

    timeline: Timeline
    entries: collections.deque[tuple[int, str | Blend, TransitionSpec | None]]   # (stream block, prompt, transition)
    end_block: int                                  # the stream block after its last segment
    command: TimelineCommand
    job: tuple[str, Future] | None = None           # the next entry's encoding


@dataclass
class _Listener:
    callback: Callable[[Event], None]
    loop: asyncio.AbstractEventLoop


@dataclass
class EngineState:
    prompt: str                  # the prompt the stream runs under (or switches to at the next block)
    seed: int
    paused: bool
    running: bool                # the worker thread is alive
    failed: str | None           # why the engine stopped for good
    blocks: int
    status: str = RUNNING        # running | restarting | stopped
    restarts: int = 0            # restarts after failures since the server started
    pending_prompt: str | None = None   # the newest prompt asked for whose embedding is not applied yet
    history: list[dict[str, Any]] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)   # the kept rewind points, oldest first
    timeline: dict[str, Any] | None = None    # the timeline playing, if any
    transition: dict[str, Any] | None = None  # a glide in progress: to, step, blocks, method
    last_fire: dict[str, Any] | None = None   # the last fired cue: cue, quantize, due_in_ms, offset_ms


def cuda_index(pipe: Any) -> int | None:
    """N when the pipeline runs on cuda:N, else None."""
    dev = getattr(pipe, "device", None)
    if getattr(dev, "type", None) == "cuda" and getattr(dev, "index", None) is not None:
        return int(dev.index)
    return None


def bind_device(pipe: Any) -> None:
    """Make the pipeline's GPU the calling thread's current CUDA device (a no-op off cuda:N).
    The current device is per thread, so each thread that runs the pipeline calls this."""
    index = cuda_index(pipe)
    if index is not None:
        import torch
        torch.cuda.set_device(index)
        log.info("thread %s uses cuda:%d", threading.current_thread().name, index)


class Engine:
    def __init__(self, pipe: Pipeline, *, prompt: str = "", seed: int = 0, lead_blocks: int = 1,
                 ring_frames: int | None = None, clock: Callable[[], float] = time.monotonic,
                 queue_size: int = COMMAND_QUEUE, max_failures: int = MAX_FAILURES, backoff_s: float = BACKOFF_S,
                 backoff_max_s: float = BACKOFF_MAX_S, sleep: Callable[[float], None] | None = None,
                 rewind_bytes: int | None = None):
        if lead_blocks < 1:
            raise ValueError("lead_blocks must be at least 1")
        if queue_size < 1 or max_failures < 1:
            raise ValueError("queue_size and max_failures must be at least 1")
        self.pipe = pipe
        self.lead_blocks = lead_blocks
        self.queue_size = queue_size
        self.max_failures = max_failures
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        video_frames_per_block = 4 * _latent_frames_per_block(pipe)
        # room for the block on air, `lead_blocks` blocks ahead and one block being replaced
        self.bus = FrameBus(pipe.fps, capacity=ring_frames or (lead_blocks + 2) * video_frames_per_block, clock=clock)
        self._clock = clock
        self._sleep = sleep or self._wait_unless_stopping
        self._prompt = prompt          # what the stream runs under (or switches to at the next block): its label
        self._conditioning: str | Blend = prompt   # ... as the pipeline takes it
        self._embedding: Any = None    # its embedding (None: encode it when the stream starts)
        self._seed = seed
        self._cond = threading.Condition()
        self._commands: collections.deque[_Queued] = collections.deque()
        self._kick = False             # an encoding finished: the worker should look at once
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._listeners: list[_Listener] = []
        self._listeners_lock = threading.Lock()
        self.encoder = PromptEncoderWorker(pipe.encode, setup=lambda: bind_device(pipe), on_done=self._wake)
        self._asked: list[_PendingPrompt] = []      # prompts drained from the queue, embedding not applied
        self._newest: tuple[Future, str] | None = None   # the newest prompt asked for, until applied or failed
        self._carry: collections.deque[RequestIdValue] = collections.deque(maxlen=MAX_SUPERSEDED)
        self._switched: _PendingPrompt | None = None     # applied to the pipeline, awaiting its first block
        self._history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY)
        self._timing = BlockTiming()
        self._last_block_video_frames = 0
        self._blocks = 0               # blocks generated since the server started
        self._status = RUNNING
        self._failed: str | None = None
        self._failures = 0             # failures in a row (reset by a generated block)
        self._restarts = 0
        self._applying: Command | None = None   # the command being applied (for the failure's id)
        # what the stream is: its lineage, the next stream block, and why it last jumped
        self._lineage: Lineage | None = None
        self._stream_block = 0
        self._cause: str | None = "start"
        self._new_segment = False      # the next block begins a prompt segment (a rewind point)
        self.rewind = RewindShelf(rewind_bytes)
        self._rewind_said = False      # told the log once that snapshots do not fit the budget
        self._sinks: list[BlockSink] = []
        self._dropped_by: dict[str, int] = {}      # blocks lost by sinks already removed, by name
        self._timeline: _TimelinePlay | None = None
        self._glide: dict[str, Any] | None = None       # the transition in progress (state)
        self._last_fire: dict[str, Any] | None = None
        self._clock_of_blocks = BlockClock(pipe.fps, _latent_frames_per_block(pipe))
        # live input (video-to-video): its frames on the stream's clock, and how strongly the words
        # reshape them (server.media.input_clock; None: text alone)
        self.input: Any = None
        self.input_strength = 0.7

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the engine is already started")
        self._thread = threading.Thread(target=self.run, name="longlive-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker after the block in progress (blocking; call it off the event loop)."""
        with self._cond:
            self._stopping = True
            self._status = STOPPED
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the engine thread did not stop within %.0f s", timeout)
        self.encoder.close(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- commands (any thread) -------------------------------------------------------------------
    def clock(self) -> float:
        """The engine's clock (what `due` times are on)."""
        return self._clock()

    def submit(self, command: Command, *, ready: Future | None = None, due: float | None = None,
               cue: tuple[int, str] | None = None) -> None:
        """Queue a command for the next block boundary (pause/resume act on playback at once;
        a prompt starts encoding at once, unless `ready` is its encoding already under way or
        done: an armed cue). A prompt with `due` (engine clock) switches at the first block that
        reaches the screen at or after that time (a cue quantised to the beat). Raises
        `CommandRefused` when the engine is not running, when the command names what is not
        there (a rewind to a segment the shelf does not keep: `conflict`), or when `queue_size`
        commands are already waiting."""
        with self._cond:
            if self._thread is not None and self._thread.ident is not None and not self._thread.is_alive():
                self._status = STOPPED     # the worker is gone (it cannot be, short of a bug): say so
            if self._status != RUNNING:
                raise CommandRefused(self._refusal(command))
            if isinstance(command, RewindCommand) and self.rewind.get(command.segment) is None:
                # known now, so refused now (never an ack, then an error); `_rewind` checks again
                # at the boundary: the shelf may drop the segment for a new one before then
                raise CommandRefused(self.rewind.missing(command.segment), conflict=True)
            if len(self._commands) >= self.queue_size:
                raise CommandRefused(f"the engine already has {len(self._commands)} commands waiting; "
                                     f"{command.TYPE} was refused, try again")
            if isinstance(command, PauseCommand):
                self.bus.pause()
            elif isinstance(command, ResumeCommand):
                self.bus.resume()
            job = None
            if isinstance(command, PromptCommand):
                job = ready if ready is not None else self.encoder.request(_conditioning(command))
                self._newest = (job, command.label)
            self._commands.append(_Queued(command, self._clock(), job, due, cue))
            self._cond.notify_all()

    def _refusal(self, command: Command) -> str:
        if self._status == RESTARTING:
            return f"the generator is restarting after a failure; {command.TYPE} was not applied, try again shortly"
        why = f" ({self._failed})" if self._failed else ""
        return f"the generator has stopped{why}; {command.TYPE} was not applied"

    def _wake(self) -> None:
        with self._cond:
            self._kick = True
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

    def emit(self, event: Event) -> None:
        """Hand `event` to every subscriber on its loop (any thread; never blocks)."""
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener.loop.call_soon_threadsafe(listener.callback, event)
            except RuntimeError:       # that loop is closed: its owner is gone
                with self._listeners_lock:
                    if listener in self._listeners:
                        self._listeners.remove(listener)

    # -- sinks that must see every block (any thread) ----------------------------------------------
    def add_sink(self, sink: BlockSink) -> None:
        with self._cond:
            self._sinks.append(sink)

    def remove_sink(self, sink: BlockSink) -> None:
        with self._cond:
            if sink in self._sinks:
                self._sinks.remove(sink)
                self._dropped_by[sink.name] = self._dropped_by.get(sink.name, 0) + sink.dropped_total

    def dropped_blocks(self) -> dict[str, int]:
        """Blocks each kind of sink has lost since the server started (sinks gone included)."""
        with self._cond:
            out = dict(self._dropped_by)
            for sink in self._sinks:
                out[sink.name] = out.get(sink.name, 0) + sink.dropped_total
        return out

    # -- state (any thread) --------------------------------------------------------------------------
    def state(self) -> EngineState:
        with self._cond:
            return EngineState(prompt=self._prompt, seed=self._seed, paused=self.bus.paused, running=self.running,
                               failed=self._failed, blocks=self._blocks, status=self._status,
                               restarts=self._restarts, pending_prompt=self._newest[1] if self._newest else None,
                               history=_bounded_history(self._history),
                               segments=self.rewind.listed(),
                               timeline=self._timeline_state(),
                               transition=dict(self._glide) if self._glide else None,
                               last_fire=dict(self._last_fire) if self._last_fire else None)

    def _timeline_state(self) -> dict[str, Any] | None:
        play = self._timeline
        if play is None:
            return None
        return {"segments": len(play.timeline.segments), "left": len(play.entries),
                "duration": play.timeline.duration, "end_block": play.end_block}

    def timing(self) -> BlockTiming:
        with self._cond:
            t = self._timing
            return BlockTiming(t.block, t.frames, t.dit_ms, t.decode_ms)

    # -- the worker and its supervisor ------------------------------------------------------------
    def run(self) -> None:
        """The worker thread: serve the stream; after a failure, back off and start again from
        a clean state, until stopped or `max_failures` failures in a row."""
        try:
            fresh = True
            while True:
                try:
                    self._serve(fresh)
                    return
                except Exception as e:
                    fresh = False
                    if not self._recover(e):
                        return
        finally:
            log.info("engine stopped after %d blocks", self._blocks)

    def _serve(self, fresh: bool) -> None:
        bind_device(self.pipe)         # before anything touches the GPU on this thread
        if fresh:
            self.begin()
        else:
            self._restart()
        while True:
            wait = self.step()
            with self._cond:
                if self._stopping:
                    return
                if wait > 0 and not self._commands and not self._kick:
                    self._cond.wait(min(wait, MAX_WAIT_S))

    def begin(self) -> None:
        """Start the first stream (the worker does this; tests driving `step` call it once)."""
        self.encoder.start()
        self._start_stream()
        with self._cond:
            log.info("stream started: seed %d, prompt %r", self._seed, self._prompt)

    def _restart(self) -> None:
        """A clean stream with the same prompt and seed, after a failure."""
        if self._timeline is not None:
            self._stop_timeline(None, "the generator restarted after a failure")
        self._start_stream()
        with self._cond:
            self._restarts += 1
            log.info("stream restarted after a failure: seed %d, prompt %r", self._seed, self._prompt)

    def _start_stream(self) -> None:
        with self._cond:
            prompt, seed, embedding = self._conditioning, self._seed, self._embedding
        if embedding is None:          # the first stream: its prompt has not been encoded yet
            embedding = self.pipe.encode(prompt)
            with self._cond:
                self._embedding = embedding
        self.pipe.start(prompt, seed, embedding)
        self._began(prompt, seed, "start" if self._blocks == 0 else "restart after a failure")

    def _began(self, prompt: str | Blend, seed: int, cause: str) -> None:
        """The pipeline started a new stream: a new lineage from block 0, a new segment."""
        self._lineage, self._stream_block = Lineage(prompt, seed), 0
        self._cause, self._new_segment = cause, True
        self._glide = None

    def _recover(self, exc: Exception) -> bool:
        """One failure: tell every client, then back off (True: start again) or give up (False)."""
        command, self._applying = self._applying, None
        switched = self._switched
        if command is None and switched is not None and switched.revert is not None:
            # the first block under a new prompt failed (its re-cache): that prompt's failure, not retried
            command, self._switched = switched.command, None
            with self._cond:
                self._set_prompt(*switched.revert)
        what = f"{type(exc).__name__}: {one_line(exc)}"[:MAX_ERROR_CHARS]
        rid = command.id if command is not None else None
        with self._cond:
            self._failures += 1
            failures, stopping = self._failures, self._stopping
        log.error("the generator failed (%d in a row): %s", failures, what, exc_info=exc)
        if stopping:
            return False
        if failures >= self.max_failures:
            with self._cond:
                self._status, self._failed = STOPPED, what
            self.emit(ErrorEvent(id=rid, message=f"the generator stopped after {failures} failures in a row: {what}"))
            self.emit(StateEvent(state=self._state_delta()))
            self._drop_waiting("the generator stopped")
            return False
        delay = min(self.backoff_max_s, self.backoff_s * 2 ** (failures - 1))
        with self._cond:
            if self._stopping:
                return False
            self._status = RESTARTING
        self.emit(ErrorEvent(id=rid, message=f"the generator failed ({what}); restarting in {delay:g} s "
                                                f"(failure {failures} of {self.max_failures})"))
        self.emit(StateEvent(state=self._state_delta()))
        self._sleep(delay)
        with self._cond:
            return not self._stopping

    def _wait_unless_stopping(self, seconds: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._stopping, seconds)

    def _drop_waiting(self, why: str) -> None:
        """The engine stopped for good: every command still waiting gets an error."""
        with self._cond:
            queued, self._commands = list(self._commands), collections.deque()
            self._newest = None
        dropped = [q.command for q in queued] + [p.command for p in self._asked]
        if self._switched is not None:
            dropped.append(self._switched.command)
        self._asked, self._switched = [], None
        for command in dropped:
            self.emit(ErrorEvent(id=command.id, message=f"{command.TYPE} was not applied: {why}"))

    # -- one turn at a block boundary ------------------------------------------------------------------
    def step(self) -> float:
        """One turn of the worker at a block boundary: apply the queued commands and any prompt
        whose embedding is ready, then generate a block if playback needs one. Returns 0 after
        a block, else the seconds to wait. (The worker thread loops on it; tests call it
        directly with a fake clock.) Raises whatever the pipeline raises."""
        self._apply_commands()
        if self.bus.paused:
            return MAX_WAIT_S
        wait = self.bus.time_until_ahead(self.lead_blocks * self._last_block_video_frames)
        if wait > 0:
            return wait
        if self._timeline_boundary():   # a timeline's switch is applied just before its block, so stop wins
            self.emit(StateEvent(state=self._state_delta()))
        self._generate_block()
        return 0.0

    def _apply_commands(self) -> None:
        """At a block boundary: apply everything queued, in order, then switch to the newest
        prompt whose embedding is ready (if any)."""
        changed = False
        while True:
            with self._cond:
                self._kick = False
                if not self._commands:
                    break
                item = self._commands.popleft()
            command = item.command
            if isinstance(command, PromptCommand):
                assert item.job is not None
                self._asked.append(_PendingPrompt(command, item.received, item.job, due=item.due, cue=item.cue))
                continue
            self._applying = command
            if isinstance(command, SeedCommand):
                self._reseed(command)
                changed = True
            elif isinstance(command, RewindCommand):
                changed = self._rewind(command) or changed
            elif isinstance(command, TimelineCommand):
                self._play_timeline(command)
                changed = True
            elif isinstance(command, (PauseCommand, ResumeCommand)):
                changed = True             # playback already acted in submit(); tell every client
            else:
                log.warning("engine ignores command %r", command)
            self._applying = None
        ready = self._take_ready()
        if ready is not None:
            if self._timeline is not None:
                self._stop_timeline(ready.command.id, "a prompt was sent")
                changed = True
            self._applying = ready.command
            ready.transition = ready.command.transition
            try:
                self._switch(_conditioning(ready.command), ready.encoded.embedding, ready.transition)
            except Exception:          # the supervisor restarts under the old prompt
                self._forget(ready.job)
                raise
            self._applying = None
            self._switched_to(ready)
        if changed:
            self.emit(StateEvent(state=self._state_delta()))

    def _reseed(self, command: SeedCommand) -> None:
        """A new stream with the seed, under the newest ready prompt (else the current one)."""
        if self._timeline is not None:
            self._stop_timeline(command.id, "the seed changed")
        ready = self._take_ready()
        with self._cond:
            prompt, embedding = self._conditioning, self._embedding
        if ready is not None:
            prompt, embedding = _conditioning(ready.command), ready.encoded.embedding
        try:
            self.pipe.start(prompt, command.seed, embedding)
        except Exception:              # the supervisor restarts with the old seed and prompt
            if ready is not None:
                self._forget(ready.job)
            raise
        with self._cond:
            self._seed = command.seed
            self._set_prompt(prompt, embedding)
        self._began(prompt, command.seed, f"seed {command.seed}")
        if ready is not None:
            self._switched_to(ready, at_start=True)
        log.info("stream restarted: seed %d, prompt %r", command.seed, prompt)

    # -- rewind ----------------------------------------------------------------------------------------
    def _rewind(self, command: RewindCommand) -> bool:
        """Back to the start of a kept segment (an error event, nothing else, when it is not kept:
        `submit` refused it if it was not kept then, so this is a segment dropped since, to make
        room for a newer one)."""
        with self._cond:
            point = self.rewind.get(command.segment)
            missing = None if point is not None else self.rewind.missing(command.segment)
        if point is None:
            self.emit(ErrorEvent(id=command.id, message=missing))
            return False
        if self._switched is not None:     # applied while paused, never shown: the rewind undoes it
            self.emit(ErrorEvent(id=self._switched.command.id,
                                 message="the prompt was undone by a rewind before it showed"))
            self._switched = None
        if self._timeline is not None:
            self._stop_timeline(command.id, f"the stream was rewound to segment {command.segment}")
        self.pipe.restore(point.snapshot)
        lineage = point.lineage
        if command.fresh:
            seed = secrets.randbelow(SEED_MAX + 1)
            self.pipe.reseed_noise(seed)
            lineage = lineage.with_noise(point.block, seed)
        with self._cond:
            self._set_prompt(point.conditioning if point.conditioning is not None else point.prompt, point.embedding)
        self._glide = None
        self._lineage, self._stream_block = lineage, point.block
        self._cause = f"rewind to segment {point.segment}" + (" with fresh noise" if command.fresh else "")
        log.info("%s (block %d): %r", self._cause, point.block, point.prompt)
        return True

    def _keep_point(self) -> None:
        """A rewind point at this boundary: the first block of a new segment comes next."""
        self._new_segment = False
        snapshot = getattr(self.pipe, "snapshot", None)
        if snapshot is None or self.rewind.max_bytes == 0:
            return
        snap = snapshot("cpu")
        with self._cond:
            point = RewindPoint(segment=self.rewind.next_segment(), index=self._blocks, block=self._stream_block,
                                prompt=self._prompt, time=time.time(), lineage=self._lineage,
                                embedding=self._embedding, snapshot=snap, nbytes=int(getattr(snap, "nbytes", 0)),
                                conditioning=self._conditioning)
            kept = self.rewind.put(point)
        if kept:
            self.emit(StateEvent(state=self._state_delta()))     # every client's segment list
        elif not self._rewind_said:
            self._rewind_said = True
            log.warning("a rewind snapshot takes %.0f MiB, more than the rewind memory (%.0f MiB): rewind is off",
                        point.nbytes / 2**20, self.rewind.max_bytes / 2**20)

    # -- timelines played live -------------------------------------------------------------------------
    def _play_timeline(self, command: TimelineCommand) -> None:
        """Stop the timeline playing (timeline null), or start one: a new stream under its first
        prompt (its seed, else the current one), switching at its segments' blocks."""
        if self._timeline is not None:
            self._stop_timeline(command.id, "another timeline was asked for" if command.timeline else "")
        timeline = command.timeline
        if timeline is None:
            return
        entries = collections.deque((block, seg.blend(), seg.transition_spec())
                                    for block, seg in timeline.schedule(self._clock_of_blocks))
        _, first, _ = entries.popleft()
        with self._cond:
            seed = self._seed if timeline.settings.seed is None else timeline.settings.seed
        embedding = self.pipe.encode(first)
        self.pipe.start(first, seed, embedding)
        with self._cond:
            self._set_prompt(first, embedding)
            self._seed = seed
        self._began(first, seed, "timeline")
        end = self._clock_of_blocks.blocks_for(timeline.duration)
        self._timeline = _TimelinePlay(timeline, entries, end, command)
        for note in timeline.notes:          # what of the file is not used (another pipeline's settings), once
            self.emit(Notice(id=command.id, message=f"timeline: {note}"))
        log.info("playing a timeline of %d segments (%.1f s) from seed %d", len(timeline.segments),
                 timeline.duration, seed)

    def _timeline_boundary(self) -> bool:
        """At a boundary: switch to the timeline's prompt due at the next block, ask for the
        encoding of the one after, or finish. True when the state changed."""
        play = self._timeline
        if play is None:
            return False
        if self._stream_block >= play.end_block:
            self._stop_timeline(play.command.id, None)
            return True
        switched = False
        if play.entries and play.entries[0][0] <= self._stream_block:
            _, text, transition = play.entries.popleft()
            job = play.job[1] if play.job and play.job[0] == text else None
            play.job = None
            embedding = None
            if job is not None and not job.cancelled():
                try:
                    embedding = job.result(timeout=60).embedding
                except Exception:          # encode it here instead, and let that fail loudly
                    embedding = None
            if embedding is None:
                embedding = self.pipe.encode(text)
            self._switch(text, embedding, transition)
            with self._cond:
                self._set_prompt(text, embedding)
            self._lineage = _with_prompt(self._lineage, self._stream_block, text, transition)
            self._new_segment = True
            done: Future = Future()
            done.set_result(Encoded(embedding, 0.0))
            # its first block gets a prompt_applied, like a sent prompt (with the timeline command's id)
            sent = PromptCommand(text=text, id=play.command.id) if isinstance(text, str) else \
                PromptCommand(prompts=text, id=play.command.id)
            self._switched = _PendingPrompt(sent, self._clock(), done, transition=transition)
            switched = True
        if play.entries and play.job is None and not self._asked and self._newest is None:
            text = play.entries[0][1]  # type: ignore[assignment]     # encoded ahead (never while a sent prompt waits: the newest request wins)
            play.job = (text, self.encoder.request(text))
        return switched

    def _stop_timeline(self, rid: RequestIdValue, why: str | None) -> None:
        """`why`: None when it played to its end, "" when asked to stop, else the reason."""
        self._timeline = None
        message = ("the timeline finished" if why is None else "the timeline stopped" + (f" ({why})" if why else "")) \
            + "; back to manual control"
        log.info(message)
        self.emit(Notice(id=rid, message=message))

    def _take_ready(self) -> _PendingPrompt | None:
        """The newest asked-for prompt whose embedding is ready, with the ids it replaces;
        failed encodings become errors for their ids; prompts still encoding stay asked."""
        newest = None
        on_air = self._next_on_air()
        for i, p in enumerate(self._asked):
            if p.job.done() and not p.job.cancelled() and p.job.exception() is None and \
                    (p.due is None or on_air >= p.due):
                newest = i
        keep: list[_PendingPrompt] = []
        found: _PendingPrompt | None = None
        for i, p in enumerate(self._asked):
            if p.job.done() and not p.job.cancelled() and p.job.exception() is not None:
                self._prompt_failed(p)
            elif p.job.cancelled() or (newest is not None and i < newest):
                p.job.cancel()             # overtaken by a newer prompt: never applied
                self._carry.extend(p.superseded)
                self._carry.append(p.command.id)
            elif i == newest:
                found = p
                found.superseded = list(self._carry)
                self._carry.clear()
            else:
                keep.append(p)             # still encoding (or not due yet), newer than any ready one
        self._asked = keep
        return found

    def _next_on_air(self) -> float:
        """Engine-clock time the next block's first frame will reach the screen: when the
        playhead gets there, or, if generation is behind, when the block can be made."""
        if self.bus.paused:
            return -math.inf           # a quantised cue waits for playback to resume
        block_s = self._timing.block_ms / 1e3
        return self._clock() + max(self.bus.time_until(self.bus.next_seq), block_s)

    def _switch(self, prompt: str | Blend, embedding: Any, transition: TransitionSpec | None) -> None:
        """A cut, or a glide when the transition lasts more than one block."""
        if transition is not None and transition.blocks > 1:
            self.pipe.switch_prompt(prompt, embedding, transition=transition)
        else:
            self.pipe.switch_prompt(prompt, embedding)

    def _set_prompt(self, prompt: str | Blend, embedding: Any) -> None:
        """The stream runs under `prompt` from now on (call with the lock held)."""
        self._conditioning, self._embedding = prompt, embedding
        self._prompt = prompt.label if isinstance(prompt, Blend) else prompt

    def _prompt_failed(self, p: _PendingPrompt) -> None:
        err = p.job.exception()
        log.warning("could not encode %r: %s", p.command.label, err)
        self._forget(p.job)
        message = f"could not encode the prompt: {one_line(err)}"[:MAX_ERROR_CHARS]
        self.emit(ErrorEvent(id=p.command.id, message=message))

    def _forget(self, job: Future) -> None:
        """The prompt of `job` will not be applied: it is no longer pending."""
        with self._cond:
            if self._newest is not None and self._newest[0] is job:
                self._newest = None

    def _switched_to(self, p: _PendingPrompt, at_start: bool = False) -> None:
        """The pipeline now runs under `p` (from its next block; `at_start`: it was started under it)."""
        prompt = _conditioning(p.command)
        with self._cond:
            if not at_start:           # what a failure of its first block goes back to (the first switch's)
                first = self._switched.revert if self._switched is not None else None
                p.revert = first if first is not None else (self._conditioning, self._embedding)
            self._set_prompt(prompt, p.encoded.embedding)
            if self._newest is not None and self._newest[0] is p.job:
                self._newest = None
        if at_start:
            self._lineage = Lineage(prompt, self._lineage.seed)
        else:
            self._lineage = _with_prompt(self._lineage, self._stream_block, prompt, p.transition)
        self._new_segment = True
        if self._switched is not None:     # switched twice before a block: the first never showed
            p.superseded = ([*self._switched.superseded, self._switched.command.id] + p.superseded)
        p.superseded = p.superseded[-MAX_SUPERSEDED:]
        self._switched = p

    def _generate_block(self) -> None:
        if self._new_segment:
            self._keep_point()
        blk = self._next_frames()
        frames = np.asarray(blk.frames)
        first_seq = self.bus.publish(frames, block=blk.block, prompt=blk.prompt)
        done = self._clock()
        frames.flags.writeable = False
        item = GeneratedBlock(frames, self._blocks, int(blk.block), blk.prompt, self._lineage, self._cause)
        self._cause, self._stream_block = None, int(blk.block) + 1
        with self._cond:
            sinks = list(self._sinks)
        for sink in sinks:
            sink.offer(item)
        with self._cond:
            self._timing = BlockTiming(blk.block, len(frames), float(blk.dit_ms), float(blk.decode_ms))
            self._last_block_video_frames = len(frames)
            self._blocks += 1
            self._failures = 0
            recovered = self._status == RESTARTING
            if recovered:
                self._status = RUNNING
        if recovered:
            log.info("the generator is running again")
            self.emit(StateEvent(state=self._state_delta()))
        switched, self._switched = self._switched, None
        if switched is not None:
            self._prompt_applied(switched, blk, first_seq, done)
        self._track_glide(blk, switched)

    def _next_frames(self) -> Any:
        """The pipeline's next block: from the input's frames for it when an input is live."""
        if self.input is None:
            return self.pipe.next_frames()
        frames = self.input.take(self.pipe.input_frames_wanted)
        notice = self.input.pop_notice()
        if notice is not None:
            log.info("%s", notice)
            self.emit(Notice(message=notice))
        if frames is None:
            return self.pipe.next_frames()
        return self.pipe.next_frames(frames, self.input_strength)

    def _track_glide(self, blk: Any, switched: _PendingPrompt | None) -> None:
        """The state's `transition`: set while a glide is under way, a state event per block of it."""
        step = getattr(blk, "transition", None)
        before = self._glide
        if step is not None and step[0] < step[1]:
            method = switched.transition.method if switched is not None and switched.transition else \
                (before or {}).get("method", "linear")
            glide = {"to": blk.prompt, "step": int(step[0]), "blocks": int(step[1]), "method": method}
        else:
            glide = None
        with self._cond:
            self._glide = glide
        if glide is not None or before is not None:
            self.emit(StateEvent(state=self._state_delta()))

    def _prompt_applied(self, p: _PendingPrompt, blk: Any, first_seq: int, done: float) -> None:
        playhead = self.bus.playhead()
        plays_in = max(0.0, (first_seq - playhead) / self.bus.fps) if playhead >= 0 else 0.0
        offset_ms = None
        if p.due is not None:          # how far from its beat the change reaches the screen
            on_air = done + self.bus.time_until(first_seq)
            offset_ms = round((on_air - p.due) * 1e3, 1)
        if p.cue is not None:
            with self._cond:
                self._last_fire = {"cue": p.cue[0], "quantize": p.cue[1], "block": int(blk.block),
                                   "offset_ms": offset_ms}
        t = p.transition
        event = PromptApplied(id=p.command.id, text=blk.prompt, block=int(blk.block), frame=first_seq,
                              latency_ms=round((done - p.received) * 1e3, 1), plays_in_ms=round(plays_in * 1e3, 1),
                              time=time.time(), superseded=list(p.superseded),
                              encode_ms=round(p.encoded.encode_ms, 1),
                              transition=None if t is None or t.blocks <= 1 else {"blocks": t.blocks,
                                                                                   "method": t.method},
                              cue=None if p.cue is None else p.cue[0], offset_ms=offset_ms,
                              recache_ms=round(float(getattr(blk, "recache_ms", 0.0)), 2))
        with self._cond:
            self._history.append({"id": event.id, "text": event.text, "block": event.block, "frame": event.frame,
                                  "latency_ms": event.latency_ms, "time": event.time})
        log.info("prompt applied at block %d (%.0f ms): %r", event.block, event.latency_ms, event.text)
        self.emit(event)

    def _state_delta(self) -> dict[str, Any]:
        s = self.state()
        return {"prompt": s.prompt, "seed": s.seed, "paused": s.paused, "engine": s.status, "failed": s.failed,
                "restarts": s.restarts, "segments": s.segments, "timeline": s.timeline,
                "transition": s.transition, "last_fire": s.last_fire}


def _conditioning(command: PromptCommand) -> str | Blend:
    """What the pipeline takes for a prompt command: the text, or the blend."""
    return command.prompts if command.prompts is not None else (command.text or "")


def _with_prompt(lineage: Lineage, block: int, prompt: str | Blend, transition: TransitionSpec | None) -> Lineage:
    return lineage.with_prompt(block, prompt, transition) if transition is not None and transition.blocks > 1 \
        else lineage.with_prompt(block, prompt)


def _bounded_history(history: collections.deque[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest entries whose prompt texts fit in HISTORY_CHARS (at least the newest), oldest first."""
    out: list[dict[str, Any]] = []
    chars = 0
    for entry in reversed(history):
        chars += len(entry["text"])
        if out and chars > HISTORY_CHARS:
            break
        out.append(entry)
    return out[::-1]


def _latent_frames_per_block(pipe: Any) -> int:
    """Latent frames per block from the pipeline's config (3 when it has none)."""
    try:
        return int(pipe.cfg.latent_frames_per_block)
    except AttributeError:
        return 3
