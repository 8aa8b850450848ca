"""The engine, driven with a fake pipeline (same API, no torch) and a fake clock.

No test asserts how long anything took: time is the injected clock (`FakeClock`) and the
supervisor's back-off is an injected `sleep`; real-time waits are deadlines only (`until`),
which fail a hung test instead of measuring it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest

from server import engine as engine_mod
from server.engine import (COMMAND_QUEUE, HISTORY_CHARS, MAX_ERROR_CHARS, MAX_SUPERSEDED, CommandRefused, Engine,
                           cuda_index)
from streaming.blend import Blend
from server.protocol import (ErrorEvent, PauseCommand, PromptApplied, PromptCommand, ResumeCommand, SeedCommand,
                             StateEvent)
from test_framebus import FakeClock

DEADLINE_S = 60.0      # a wait that takes longer than this is a hung test (never a timing assertion)


@dataclass
class FakeBlock:
    frames: np.ndarray
    block: int
    prompt: str
    dit_ms: float
    decode_ms: float
    transition: tuple[int, int] | None = None


def label(prompt: Any) -> str:
    return prompt.label if isinstance(prompt, Blend) else prompt


@dataclass
class FakePipeline:
    """VideoPipeline's API: first block 9 frames, then 12; each frame's pixels encode (seed, frame).

    `fail(attempt)` may return an exception for the attempt-th `next_frames` call (counted
    over the pipeline's life) to raise; `gates[prompt]` holds `encode(prompt)` until set."""

    fps: int = 16
    size: tuple[int, int] = (16, 8)
    embedded_default: bool = True
    device: Any = None
    block_s: float = 0.0                        # real time one block takes
    calls: list[str] = field(default_factory=list)
    during_block: Callable[[], None] | None = None   # called in the middle of next_frames
    fail: Callable[[int], BaseException | None] | None = None
    bad_seeds: set[int] = field(default_factory=set)  # start() raises for these
    gates: dict[str, threading.Event] = field(default_factory=dict)
    encoded: list[str] = field(default_factory=list)  # prompts encoded, in order
    encode_threads: dict[str, str] = field(default_factory=dict)
    cfg: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(name="fake", latent_frames_per_block=3))

    def __post_init__(self) -> None:
        self.prompt, self.seed, self._pending, self.block, self.frames_out = "", 0, None, 0, 0
        self.attempts = 0
        self._glide: tuple[int, int] | None = None     # (blocks done, blocks) of a transition

    def encode(self, prompt: Any) -> tuple[str, Any]:
        self.encoded.append(label(prompt))
        self.encode_threads[label(prompt)] = threading.current_thread().name
        gate = self.gates.get(label(prompt))
        if gate is not None:
            assert gate.wait(DEADLINE_S), f"encode({prompt!r}) was never released"
        if label(prompt).startswith("boom"):
            raise ValueError(("cannot encode this prompt " + "x" * 5000 if prompt == "boom-long"
                              else "cannot encode this prompt") + "\ndetails")
        return ("embedding", prompt)

    def start(self, prompt: Any, seed: int = 0, embedding: Any = None) -> None:
        assert embedding == ("embedding", prompt), "the engine starts a stream with its prompt's embedding"
        self.calls.append(f"start:{label(prompt)}:{seed}")
        if seed in self.bad_seeds:
            raise RuntimeError(f"seed {seed} breaks the generator")
        self.prompt, self.seed, self._pending, self.block, self.frames_out = label(prompt), seed, None, 0, 0
        self._glide = None

    def switch_prompt(self, prompt: Any, embedding: Any = None, transition: Any = None) -> None:
        assert embedding == ("embedding", prompt), "the engine switches with the prompt's ready embedding"
        glide = f":glide {transition.blocks} {transition.method}" if transition is not None else ""
        self.calls.append(f"switch:{label(prompt)}{glide}")
        self._pending = label(prompt)
        self._glide = (0, transition.blocks) if transition is not None and transition.blocks > 1 else None

    def next_frames(self) -> FakeBlock:
        self.attempts += 1
        exc = self.fail(self.attempts) if self.fail else None
        if exc is not None:
            self.calls.append(f"fail:{self.attempts}")
            raise exc
        if self._pending is not None:
            self.prompt, self._pending = self._pending, None
        step = None
        if self._glide is not None:
            self._glide = (self._glide[0] + 1, self._glide[1])
            step = self._glide
            if step[0] >= step[1]:
                self._glide = None
        self.calls.append(f"block:{self.block}:{self.prompt}")
        if self.during_block:
            self.during_block()
        if self.block_s:
            time.sleep(self.block_s)
        n = 9 if self.block == 0 else 12
        w, h = self.size
        frames = np.zeros((n, h, w, 3), np.uint8)
        for i in range(n):
            frames[i, ..., 0] = self.seed % 256
            frames[i, ..., 1] = (self.frames_out + i) % 256
        out = FakeBlock(frames, self.block, self.prompt, 3.0, 1.0, step)
        self.block += 1
        self.frames_out += n
        return out


def oom(attempt: int) -> BaseException:
    import torch   # torch.cuda.OutOfMemoryError exists (and can be raised) without a GPU
    return torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB (attempt {attempt})\n"
                                       "GPU 0 has a total capacity of 79.10 GiB ...")


_ENGINES: list[Engine] = []


@pytest.fixture(autouse=True)
def _stop_engines():
    yield
    while _ENGINES:
        _ENGINES.pop().stop(timeout=DEADLINE_S)


def new_engine(pipe: FakePipeline, **kw) -> Engine:
    engine = Engine(pipe, **kw)
    _ENGINES.append(engine)
    return engine


def make_engine(**kw) -> tuple[Engine, FakePipeline, FakeClock]:
    pipe = FakePipeline(**{k: v for k, v in kw.items() if k in ("block_s",)})
    clock = FakeClock()
    engine = new_engine(pipe, prompt="first", seed=7, clock=clock,
                        **{k: v for k, v in kw.items() if k in ("lead_blocks", "ring_frames", "queue_size")})
    engine.begin()
    return engine, pipe, clock


def run_until_idle(engine: Engine) -> int:
    """Step until the engine wants to wait; returns the blocks generated."""
    blocks = 0
    while engine.step() == 0:
        blocks += 1
        assert blocks < 100
    return blocks


def settle(engine: Engine) -> None:
    """Wait (with a deadline) until the encoder thread has nothing left to encode."""
    assert engine.encoder.wait_idle(DEADLINE_S), "the encoder thread hung"


def blocks_called(pipe: FakePipeline) -> list[str]:
    return [c for c in pipe.calls if c.startswith("block:")]


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


async def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def states(events: list) -> list[str]:
    return [e.state["engine"] for e in events if isinstance(e, StateEvent) and "engine" in e.state]


def errors(events: list) -> list[ErrorEvent]:
    return [e for e in events if isinstance(e, ErrorEvent)]


# -- just in time --------------------------------------------------------------------------------------
def test_generates_just_in_time_at_most_lead_blocks_ahead():
    engine, pipe, clock = make_engine(lead_blocks=1)
    assert run_until_idle(engine) == 2                 # 9 + 12 frames: the block on air and one ahead
    bus = engine.bus
    assert bus.next_seq == 21
    wait = engine.step()
    assert wait == pytest.approx((21 - 12) / 16)       # until only one block is left to play
    clock.advance(wait / 2)
    assert engine.step() > 0 and bus.next_seq == 21    # not yet
    clock.advance(wait / 2)
    assert run_until_idle(engine) == 1 and bus.next_seq == 33
    # over a minute of playback the lead never exceeds the block on air + lead_blocks
    for _ in range(16 * 60):
        clock.advance(1 / 16)
        run_until_idle(engine)
        assert bus.ahead() <= 12 * 2
        assert bus.ahead() > 0                          # and playback never starves
    assert len(bus.frames()) <= engine.bus.capacity


def test_lead_blocks_two_keeps_more_ahead():
    engine, _, clock = make_engine(lead_blocks=2)
    run_until_idle(engine)
    assert engine.bus.next_seq == 9 + 12 + 12
    for _ in range(200):
        clock.advance(1 / 16)
        run_until_idle(engine)
        assert 12 < engine.bus.ahead() <= 12 * 3


def test_worker_thread_follows_the_injected_clock_and_stops_cleanly():
    """The real worker thread, on a fake clock: while the clock stands still it generates
    the block on air and one ahead and nothing more; when the clock moves it generates again."""
    pipe, clock = FakePipeline(), FakeClock()
    engine = new_engine(pipe, prompt="x", lead_blocks=1, clock=clock)
    waits: list[float] = []
    inner = engine.step

    def step() -> float:
        w = inner()
        waits.append(w)
        return w
    engine.step = step                                  # type: ignore[method-assign]
    engine.start()
    with pytest.raises(RuntimeError):
        engine.start()
    wait_until(lambda: waits and waits[-1] > 0, "the worker to go idle")
    idle_turns = len(waits)
    wait_until(lambda: len(waits) > idle_turns + 1, "the worker to re-check the clock")
    assert engine.bus.next_seq == 21 and engine.running   # the clock stood still: nothing more
    clock.advance((21 - 12) / 16)                       # one block left to play: time for the next
    wait_until(lambda: engine.bus.next_seq == 33, "the next block")
    engine.submit(PromptCommand(text="y"))
    wait_until(lambda: engine.state().prompt == "y", "the switch (the embedding is ready)")
    assert engine.bus.next_seq == 33                    # switching generated nothing by itself
    clock.advance(1.0)
    wait_until(lambda: engine.state().history != [], "the prompt to apply")
    assert engine.state().history[-1]["text"] == "y"
    assert pipe.encode_threads["y"] == "longlive-encoder"
    engine.stop(timeout=DEADLINE_S)
    assert not engine.running
    names = [t.name for t in threading.enumerate()]
    assert "longlive-engine" not in names and "longlive-encoder" not in names


def test_lead_blocks_must_be_positive():
    with pytest.raises(ValueError):
        Engine(FakePipeline(), lead_blocks=0)


# -- prompts ---------------------------------------------------------------------------------------------
def test_prompt_switch_applies_at_the_next_block_and_reports_it():
    async def main() -> list:
        events: list = []
        engine, pipe, clock = make_engine()
        engine.subscribe(events.append, asyncio.get_running_loop())
        run_until_idle(engine)
        clock.advance(0.2)
        engine.submit(PromptCommand(text="second", id="p1"))
        settle(engine)
        clock.advance(0.3)
        engine.step()                                  # boundary: switch; not time for a block yet
        assert pipe.calls[-1] == "switch:second"
        assert engine.state().prompt == "second" and engine.state().pending_prompt is None
        clock.advance(1.0)
        run_until_idle(engine)
        await asyncio.sleep(0)
        return [engine, pipe, events]

    engine, pipe, events = asyncio.run(main())
    assert blocks_called(pipe)[:3] == ["block:0:first", "block:1:first", "block:2:second"]
    applied = [e for e in events if isinstance(e, PromptApplied)]
    assert len(applied) == 1
    a = applied[0]
    assert (a.id, a.text, a.block, a.frame) == ("p1", "second", 2, 21)
    assert a.latency_ms == pytest.approx(1300, abs=1)   # queued at t+0.2, block done at t+1.5 (engine clock)
    assert a.encode_ms >= 0
    assert engine.state().history[-1]["text"] == "second"
    frames = engine.bus.frames()
    assert {f.prompt for f in frames if f.seq >= 21} == {"second"}
    assert {f.prompt for f in frames if f.seq < 21} == {"first"}


def test_encoding_runs_off_the_generation_thread_and_the_stream_keeps_its_prompt_meanwhile():
    async def main():
        events: list = []
        engine, pipe, clock = make_engine()
        engine.subscribe(events.append, asyncio.get_running_loop())
        run_until_idle(engine)
        gate = pipe.gates["slow"] = threading.Event()
        engine.submit(PromptCommand(text="slow", id="s"))
        for _ in range(5):                              # five blocks while the encoder works
            clock.advance(12 / 16)
            assert run_until_idle(engine) == 1
        s = engine.state()
        assert (s.prompt, s.pending_prompt) == ("first", "slow")
        assert not [c for c in pipe.calls if c.startswith("switch:")]
        gate.set()
        settle(engine)
        engine.step()                                   # the boundary after the embedding is ready
        assert pipe.calls[-1] == "switch:slow"
        clock.advance(12 / 16)
        run_until_idle(engine)
        await asyncio.sleep(0)
        return engine, pipe, events

    engine, pipe, events = asyncio.run(main())
    assert pipe.encode_threads["slow"] == "longlive-encoder"
    assert blocks_called(pipe)[-1] == "block:7:slow" and blocks_called(pipe)[-2] == "block:6:first"
    applied = [e for e in events if isinstance(e, PromptApplied)]
    assert [(a.id, a.text, a.block) for a in applied] == [("s", "slow", 7)]
    assert engine.state().pending_prompt is None


def test_a_command_arriving_during_a_block_waits_for_the_boundary():
    engine, pipe, clock = make_engine()
    pipe.during_block = lambda: (engine.submit(PromptCommand(text="late")), setattr(pipe, "during_block", None))
    engine.step()                                      # block 0; "late" arrives while it runs
    assert blocks_called(pipe) == ["block:0:first"]
    assert "switch:late" not in pipe.calls
    settle(engine)
    engine.step()                                      # boundary: apply, then block 1 under "late"
    assert pipe.calls[-2:] == ["switch:late", "block:1:late"]


def test_prompts_within_one_block_switch_the_pipeline_once_the_last_wins():
    """Only the last of several prompts queued in one block is switched to; the others are
    reported as superseded."""
    async def main():
        events: list = []
        engine, pipe, clock = make_engine()
        engine.subscribe(events.append, asyncio.get_running_loop())
        run_until_idle(engine)
        for i, text in enumerate(["a", "b", "c"]):
            engine.submit(PromptCommand(text=text, id=i))
        settle(engine)
        clock.advance(1)
        run_until_idle(engine)
        await asyncio.sleep(0)
        return pipe, events

    pipe, events = asyncio.run(main())
    assert [c for c in pipe.calls if c.startswith("switch:")] == ["switch:c"]
    assert blocks_called(pipe)[2] == "block:2:c"
    applied = [e for e in events if isinstance(e, PromptApplied)]
    assert len(applied) == 1
    assert (applied[0].id, applied[0].text, applied[0].superseded) == (2, "c", [0, 1])


def test_a_prompt_still_waiting_for_the_encoder_is_never_encoded_when_a_newer_one_arrives():
    async def main():
        events: list = []
        engine, pipe, clock = make_engine()
        engine.subscribe(events.append, asyncio.get_running_loop())
        run_until_idle(engine)
        gate = pipe.gates["p0"] = threading.Event()
        engine.submit(PromptCommand(text="p0", id=0))
        wait_until(lambda: "p0" in pipe.encoded, "the encoder to take p0")
        engine.submit(PromptCommand(text="p1", id=1))   # waits behind p0 ...
        engine.submit(PromptCommand(text="p2", id=2))   # ... and is replaced before it is encoded
        gate.set()
        settle(engine)
        clock.advance(1)
        run_until_idle(engine)
        await asyncio.sleep(0)
        return pipe, events

    pipe, events = asyncio.run(main())
    assert pipe.encoded == ["first", "p0", "p2"]
    assert [c for c in pipe.calls if c.startswith("switch:")] == ["switch:p2"]
    applied = [e for e in events if isinstance(e, PromptApplied)]
    assert [(a.id, a.superseded) for a in applied] == [(2, [0, 1])]


def test_a_ready_prompt_is_applied_while_a_newer_one_is_still_encoding():
    """Prompts arriving faster than they encode never starve the stream: the newest ready one shows."""
    async def main():
        events: list = []
        engine, pipe, clock = make_engine()
        engine.subscribe(events.append, asyncio.get_running_loop())
        run_until_idle(engine)
        engine.submit(PromptCommand(text="ready", id="r"))
        settle(engine)
        gate = pipe.gates["later"] = threading.Event()
        engine.submit(PromptCommand(text="later", id="l"))
        clock.advance(1)
        run_until_idle(engine)                          # "ready" applies; "later" is still encoding
        assert engine.state().pending_prompt == "later"
        gate.set()
        settle(engine)
        clock.advance(1)
        run_until_idle(engine)
        await asyncio.sleep(0)
        return pipe, events

    pipe, events = asyncio.run(main())
    assert [c for c in pipe.calls if c.startswith("switch:")] == ["switch:ready", "switch:later"]
    applied = [e for e in events if isinstance(e, PromptApplied)]
    assert [(a.id, a.text, a.superseded) for a in applied] == [("r", "ready", []), ("l", "later", [])]


def test_a_prompt_that_fails_to_encode_is_an_error_and_the_stream_keeps_its_prompt():
    async def main():
        events: list = []
        engine, pipe, clock = make_engine()
        engine.subscribe(events.append, asyncio.get_running_loop())
        run_until_idle(engine)
        engine.submit(PromptCommand(text="boom", id="b"))
        settle(engine)
        clock.advance(1)
        blocks = run_until_idle(engine)
        engine.submit(PromptCommand(text="boom-long", id="long"))
        settle(engine)
        clock.advance(1)
        blocks += run_until_idle(engine)
        await asyncio.sleep(0)
        return engine, pipe, events, blocks

    engine, pipe, events, blocks = asyncio.run(main())
    errs = errors(events)
    assert [(e.id, e.message) for e in errs][0] == ("b", "could not encode the prompt: cannot encode this prompt")
    assert errs[1].id == "long" and len(errs[1].message) <= MAX_ERROR_CHARS and "\n" not in errs[1].message
    s = engine.state()
    assert blocks >= 2 and (s.prompt, s.pending_prompt, s.failed, s.status) == ("first", None, None, "running")
    assert not [c for c in pipe.calls if c.startswith("switch:")]
    assert {f.prompt for f in engine.bus.frames()} == {"first"}


def test_superseded_lists_are_bounded():
    async def main():
        events: list = []
        engine, pipe, clock = make_engine(queue_size=200)
        engine.subscribe(events.append, asyncio.get_running_loop())
        run_until_idle(engine)
        for i in range(100):
            engine.submit(PromptCommand(text=f"p{i}", id=i))
        settle(engine)
        clock.advance(1)
        run_until_idle(engine)
        await asyncio.sleep(0)
        return events

    applied = [e for e in asyncio.run(main()) if isinstance(e, PromptApplied)]
    assert len(applied) == 1 and applied[0].id == 99
    assert applied[0].superseded == list(range(99 - MAX_SUPERSEDED, 99))   # the newest of those replaced


def test_the_state_history_is_bounded_in_characters():
    engine, pipe, clock = make_engine()
    run_until_idle(engine)
    for i in range(20):
        engine.submit(PromptCommand(text=f"{i:02d}" + "x" * 1998, id=i))
        settle(engine)
        clock.advance(1)
        run_until_idle(engine)
    history = engine.state().history
    assert sum(len(h["text"]) for h in history) <= HISTORY_CHARS
    assert [h["id"] for h in history] == list(range(20 - HISTORY_CHARS // 2000, 20))   # the newest, oldest first


# -- pause, seed -------------------------------------------------------------------------------------------------
def test_pause_stops_generation_and_holds_the_frame_resume_continues():
    async def main():
        events: list = []
        engine, pipe, clock = make_engine()
        engine.subscribe(events.append, asyncio.get_running_loop())
        run_until_idle(engine)
        clock.advance(0.5)
        engine.submit(PauseCommand())
        held = engine.bus.current().seq
        n = engine.bus.next_seq
        for _ in range(100):
            clock.advance(0.1)
            assert engine.step() > 0                   # no generation while paused
            assert engine.bus.current().seq == held    # playback holds the frame on air
        assert engine.bus.next_seq == n and engine.state().paused
        engine.submit(ResumeCommand())
        clock.advance(2)
        run_until_idle(engine)
        await asyncio.sleep(0)
        return engine, events, held

    engine, events, held = asyncio.run(main())
    assert engine.bus.current().seq > held and not engine.state().paused
    paused = [e.state["paused"] for e in events if isinstance(e, StateEvent)]
    assert paused == [True, False]
    assert states(events) == ["running", "running"]


def test_seed_restarts_the_stream_with_the_current_prompt():
    engine, pipe, clock = make_engine()
    run_until_idle(engine)
    engine.submit(PromptCommand(text="now this"))
    engine.submit(SeedCommand(seed=42))
    settle(engine)
    clock.advance(1)
    run_until_idle(engine)
    assert "start:now this:42" in pipe.calls
    assert engine.state().seed == 42 and engine.state().prompt == "now this"
    restarted = [f for f in engine.bus.frames() if f.seq >= 21]
    assert restarted[0].block == 0                      # a new stream from block 0 ...
    assert int(restarted[0].image[0, 0, 0]) == 42       # ... with the new seed's pixels
    assert [f.seq for f in engine.bus.frames()] == list(range(engine.bus.frames()[0].seq, engine.bus.next_seq))


def test_seed_while_a_prompt_is_still_encoding_restarts_under_the_old_prompt():
    engine, pipe, clock = make_engine()
    run_until_idle(engine)
    gate = pipe.gates["slow"] = threading.Event()
    engine.submit(PromptCommand(text="slow"))
    engine.submit(SeedCommand(seed=42))
    clock.advance(1)
    run_until_idle(engine)
    assert "start:first:42" in pipe.calls and engine.state().prompt == "first"
    gate.set()
    settle(engine)
    clock.advance(1)
    run_until_idle(engine)
    assert pipe.calls.index("switch:slow") > pipe.calls.index("start:first:42")
    assert engine.state().prompt == "slow" and engine.state().seed == 42


# -- the command queue -------------------------------------------------------------------------------------------------
def test_the_command_queue_is_bounded_and_a_full_queue_refuses():
    engine, pipe, clock = make_engine()
    run_until_idle(engine)
    for i in range(COMMAND_QUEUE):
        engine.submit(SeedCommand(seed=i, id=i))
    with pytest.raises(CommandRefused, match=f"{COMMAND_QUEUE} commands waiting"):
        engine.submit(SeedCommand(seed=999, id="over"))
    with pytest.raises(CommandRefused):
        engine.submit(PromptCommand(text="refused too", id="p"))
    assert "refused too" not in pipe.encoded and engine.state().pending_prompt is None
    engine.step()                                       # the boundary drains the queue
    assert engine.state().seed == COMMAND_QUEUE - 1
    assert not [c for c in pipe.calls if c.endswith(":999")]
    engine.submit(SeedCommand(seed=5, id="again"))      # room again
    engine.step()
    assert engine.state().seed == 5


# -- supervision -----------------------------------------------------------------------------------------------
def test_a_failing_block_is_an_error_then_a_restart_and_frames_flow_again():
    """A simulated CUDA out-of-memory in the third block: one error line, `restarting`, a clean
    stream under the same prompt and seed, `running`, and frames flowing again."""
    async def main():
        events: list = []
        sleeps: list[float] = []
        pipe = FakePipeline(fps=1000, fail=lambda attempt: oom(attempt) if attempt == 3 else None)
        engine = new_engine(pipe, prompt="first", seed=7, sleep=sleeps.append, ring_frames=1000)
        engine.subscribe(events.append, asyncio.get_running_loop())
        engine.start()
        await until(lambda: "running" in states(events), "the engine to run again")
        restarted_at = pipe.calls.index("fail:3")
        await until(lambda: len(blocks_called(pipe)) >= 2 + 3, "three blocks after the restart")
        s = engine.state()
        engine.submit(PromptCommand(text="after the restart"))       # commands are taken again
        await asyncio.sleep(0)
        return engine, pipe, events, sleeps, restarted_at, s

    engine, pipe, events, sleeps, at, s = asyncio.run(main())
    errs = errors(events)
    assert len(errs) == 1
    assert errs[0].message.startswith("the generator failed (OutOfMemoryError: CUDA out of memory. "
                                      "Tried to allocate 2.00 GiB (attempt 3)); restarting in 0.5 s")
    assert "\n" not in errs[0].message and errs[0].id is None
    assert states(events)[:2] == ["restarting", "running"]
    assert sleeps == [0.5]
    assert pipe.calls[at + 1] == "start:first:7"                    # a clean stream, same prompt and seed
    assert pipe.calls[at + 2:at + 5] == ["block:0:first", "block:1:first", "block:2:first"]
    assert (s.status, s.restarts, s.failed, s.prompt, s.seed) == ("running", 1, None, "first", 7)
    frames = {f.seq: f for f in engine.bus.frames()}                # the first stream gave 9 + 12 frames
    assert frames[21].block == 0 and frames[20].block == 1 and engine.bus.next_seq >= 21 + 9 + 12 + 12


@pytest.mark.parametrize("max_failures, backoff", [
    (5, [0.5, 1, 2, 4]),
    (8, [0.5, 1, 2, 4, 8, 8, 8]),                                  # doubling, never above 8 s
])
def test_failures_in_a_row_back_off_then_stop_for_good(max_failures, backoff):
    async def main():
        events: list = []
        sleeps: list[float] = []
        pipe = FakePipeline(fps=1000, fail=oom)
        engine = new_engine(pipe, prompt="first", sleep=sleeps.append, max_failures=max_failures)
        engine.subscribe(events.append, asyncio.get_running_loop())
        engine.start()
        await until(lambda: not engine.running, "the engine to give up")
        await until(lambda: "stopped" in states(events), "the stopped state")
        return engine, pipe, events, sleeps

    engine, pipe, events, sleeps = asyncio.run(main())
    assert sleeps == backoff
    assert pipe.calls.count("start:first:0") == max_failures        # the first stream + a restart per back-off
    errs = errors(events)
    assert len(errs) == max_failures
    assert errs[-1].message.startswith(f"the generator stopped after {max_failures} failures in a row: "
                                       "OutOfMemoryError: CUDA out of memory.")
    assert states(events) == ["restarting"] * (max_failures - 1) + ["stopped"]
    s = engine.state()
    assert s.status == "stopped" and s.failed.startswith("OutOfMemoryError: CUDA out of memory.")
    with pytest.raises(CommandRefused, match="the generator has stopped"):
        engine.submit(PromptCommand(text="too late"))


def test_a_block_between_failures_resets_the_count():
    async def main():
        sleeps: list[float] = []
        pipe = FakePipeline(fps=1000, fail=lambda attempt: oom(attempt) if attempt % 2 == 0 else None)
        engine = new_engine(pipe, prompt="first", sleep=sleeps.append, max_failures=3)
        engine.start()
        await until(lambda: len(sleeps) >= 6, "six failures")
        return engine, sleeps

    engine, sleeps = asyncio.run(main())
    assert sleeps[:6] == [0.5] * 6                                  # never two in a row: no growth, no stop
    assert engine.state().status != "stopped" and engine.state().failed is None


def test_commands_queued_before_a_failure_are_applied_after_the_restart():
    """Supervision: "Commands queued before a failure are still applied after the restart"."""
    async def main():
        events: list = []
        engine: list[Engine] = []

        def fail(attempt: int) -> BaseException | None:
            if attempt != 3:
                return None
            engine[0].submit(PromptCommand(text="queued before", id="q"))    # waiting when the block fails
            settle(engine[0])
            return oom(attempt)

        pipe = FakePipeline(fps=1000, fail=fail)
        engine.append(new_engine(pipe, prompt="first", seed=7, sleep=lambda s: None, ring_frames=1000))
        engine[0].subscribe(events.append, asyncio.get_running_loop())
        engine[0].start()
        await until(lambda: any(isinstance(e, PromptApplied) for e in events), "the queued prompt")
        return pipe, events

    pipe, events = asyncio.run(main())
    applied = [e for e in events if isinstance(e, PromptApplied)]
    assert [(e.id, e.text, e.block) for e in applied] == [("q", "queued before", 0)]
    at = pipe.calls.index("fail:3")
    assert pipe.calls[at + 1:at + 3] == ["start:first:7", "switch:queued before"]
    assert [e.id for e in errors(events)] == [None]


def test_stopping_for_good_answers_every_command_still_waiting_with_an_error():
    """Supervision: after max_failures "every command that was still waiting gets an error"."""
    async def main():
        events: list = []
        engine: list[Engine] = []
        pipe = FakePipeline(fps=1000)

        def fail(attempt: int) -> BaseException | None:
            if attempt != 2:
                return None
            engine[0].submit(SeedCommand(seed=3, id="s"))
            engine[0].submit(PromptCommand(text="never", id="p"))
            pipe.bad_seeds.add(7)                  # and the restart's start fails too: two in a row
            return oom(attempt)

        pipe.fail = fail
        engine.append(new_engine(pipe, prompt="first", seed=7, sleep=lambda s: None, max_failures=2))
        engine[0].subscribe(events.append, asyncio.get_running_loop())
        engine[0].start()
        await until(lambda: "stopped" in states(events), "the engine to stop for good")
        await until(lambda: len(errors(events)) >= 4, "the errors")
        return events

    events = asyncio.run(main())
    errs = [(e.id, e.message) for e in errors(events)]
    assert errs[1][1].startswith("the generator stopped after 2 failures in a row: RuntimeError: seed 7 breaks")
    assert sorted((i, m) for i, m in errs[2:]) == [("p", "prompt was not applied: the generator stopped"),
                                                   ("s", "seed was not applied: the generator stopped")]


def test_commands_while_restarting_are_refused_and_taken_again_after():
    release = threading.Event()
    pipe = FakePipeline(fps=1000, fail=lambda attempt: oom(attempt) if attempt == 2 else None)
    engine = new_engine(pipe, prompt="first", sleep=lambda s: release.wait(DEADLINE_S))
    engine.start()
    try:
        wait_until(lambda: engine.state().status == "restarting", "the restarting state")
        for command in (PromptCommand(text="now?", id="p"), SeedCommand(seed=3), PauseCommand()):
            with pytest.raises(CommandRefused, match="restarting"):
                engine.submit(command)
        assert not engine.bus.paused and "now?" not in pipe.encoded
    finally:
        release.set()
    wait_until(lambda: engine.state().status == "running", "the running state")
    engine.submit(PromptCommand(text="now", id="p2"))
    wait_until(lambda: engine.state().prompt == "now", "the prompt to apply")


def test_a_seed_that_breaks_the_generator_is_an_error_with_its_id_and_the_old_seed_restarts():
    async def main():
        events: list = []
        pipe = FakePipeline(fps=1000, bad_seeds={13})
        engine = new_engine(pipe, prompt="first", seed=7, sleep=lambda s: None)
        engine.subscribe(events.append, asyncio.get_running_loop())
        engine.start()
        await until(lambda: len(blocks_called(pipe)) >= 2, "the first blocks")
        engine.submit(SeedCommand(seed=13, id="s"))
        await until(lambda: "running" in states(events), "the restart")
        await asyncio.sleep(0)
        return engine, pipe, events

    engine, pipe, events = asyncio.run(main())
    errs = errors(events)
    assert [e.id for e in errs] == ["s"] and "RuntimeError: seed 13 breaks the generator" in errs[0].message
    assert pipe.calls[pipe.calls.index("start:first:13") + 1] == "start:first:7"
    assert engine.state().seed == 7


def test_stop_ends_both_threads_and_later_commands_are_refused():
    pipe = FakePipeline(fps=1000)
    engine = new_engine(pipe, prompt="first")
    engine.start()
    wait_until(lambda: engine.state().blocks >= 2, "two blocks")
    engine.stop(timeout=DEADLINE_S)
    assert not engine.running and engine.state().status == "stopped"
    assert not {"longlive-engine", "longlive-encoder"} & {t.name for t in threading.enumerate()}
    with pytest.raises(CommandRefused, match="stopped"):
        engine.submit(PromptCommand(text="late"))


# -- devices --------------------------------------------------------------------------------------------------
def test_cuda_index_reads_the_pipelines_device():
    torch = pytest.importorskip("torch")
    assert cuda_index(FakePipeline(device=torch.device("cuda", 1))) == 1
    assert cuda_index(FakePipeline(device=torch.device("cuda"))) is None
    assert cuda_index(FakePipeline(device=torch.device("cpu"))) is None
    assert cuda_index(FakePipeline()) is None


@pytest.mark.parametrize("device, expected", [("cuda:1", 1), ("cuda:3", 3), ("cpu", None)])
def test_the_engine_threads_make_the_pipelines_gpu_current(monkeypatch, device, expected):
    torch = pytest.importorskip("torch")
    pipe = FakePipeline(fps=1000, device=torch.device(device))
    monkeypatch.setattr(torch.cuda, "set_device",
                        lambda index: pipe.calls.append(f"set_device:{index}:{threading.current_thread().name}"))
    engine = new_engine(pipe, prompt="first")
    engine.start()
    engine.submit(PromptCommand(text="second"))
    wait_until(lambda: engine.state().prompt == "second", "the second prompt")
    engine.stop(timeout=DEADLINE_S)
    bound = [c for c in pipe.calls if c.startswith("set_device:")]
    if expected is None:
        assert bound == []
        return
    assert sorted(bound) == [f"set_device:{expected}:longlive-encoder", f"set_device:{expected}:longlive-engine"]
    # the engine thread binds before its first call into the pipeline
    assert pipe.calls.index(f"set_device:{expected}:longlive-engine") < pipe.calls.index("start:first:0")
    assert pipe.encode_threads["second"] == "longlive-encoder"


def test_bind_device_is_a_no_op_without_a_gpu_index(monkeypatch):
    torch = pytest.importorskip("torch")
    called: list[int] = []
    monkeypatch.setattr(torch.cuda, "set_device", called.append)
    engine_mod.bind_device(FakePipeline(device=torch.device("cpu")))
    engine_mod.bind_device(FakePipeline())
    assert called == []
    engine_mod.bind_device(FakePipeline(device=torch.device("cuda", 2)))
    assert called == [2]
