"""The engine, driven with a fake pipeline (same API, no torch) and a fake clock."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest

from server.engine import Engine
from server.protocol import (PauseCommand, PromptApplied, PromptCommand, ResumeCommand, SeedCommand, StateEvent)
from test_framebus import FakeClock


@dataclass
class FakeBlock:
    frames: np.ndarray
    block: int
    first_frame: int
    prompt: str
    dit_ms: float
    decode_ms: float
    switched: bool = False


@dataclass
class FakePipeline:
    """VideoPipeline's API: first block 9 frames, then 12; each frame's pixels encode (seed, frame)."""

    fps: int = 16
    size: tuple[int, int] = (16, 8)
    embedded_default: bool = True
    block_s: float = 0.0                        # real time one block takes
    calls: list[str] = field(default_factory=list)
    during_block: Callable[[], None] | None = None   # called in the middle of next_frames
    cfg: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(
        name="fake", video=SimpleNamespace(frames_per_block=3)))

    def __post_init__(self) -> None:
        self.prompt, self.seed, self._pending, self.block, self.frames_out = "", 0, None, 0, 0

    def start(self, prompt: str, seed: int = 0) -> None:
        self.calls.append(f"start:{prompt}:{seed}")
        self.prompt, self.seed, self._pending, self.block, self.frames_out = prompt, seed, None, 0, 0

    def switch_prompt(self, prompt: str) -> None:
        self.calls.append(f"switch:{prompt}")
        self._pending = prompt

    def next_frames(self) -> FakeBlock:
        switched = self._pending is not None
        if switched:
            self.prompt, self._pending = self._pending, None
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
        out = FakeBlock(frames, self.block, self.frames_out, self.prompt, 3.0, 1.0, switched)
        self.block += 1
        self.frames_out += n
        return out


def make_engine(**kw) -> tuple[Engine, FakePipeline, FakeClock]:
    pipe = FakePipeline(**{k: v for k, v in kw.items() if k in ("block_s",)})
    clock = FakeClock()
    engine = Engine(pipe, prompt="first", seed=7, clock=clock,
                    **{k: v for k, v in kw.items() if k in ("lead_blocks", "ring_frames")})
    engine.begin()
    return engine, pipe, clock


def run_until_idle(engine: Engine) -> int:
    """Step until the engine wants to wait; returns the blocks generated."""
    blocks = 0
    while engine.step() == 0:
        blocks += 1
        assert blocks < 100
    return blocks


def blocks_called(pipe: FakePipeline) -> list[str]:
    return [c for c in pipe.calls if c.startswith("block:")]


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


def test_prompt_switch_applies_at_the_next_block_and_reports_it():
    async def main() -> list:
        events: list = []
        engine, pipe, clock = make_engine()
        engine.subscribe(events.append, asyncio.get_running_loop())
        run_until_idle(engine)
        clock.advance(0.2)
        engine.submit(PromptCommand(text="second", id="p1"))
        clock.advance(0.3)
        engine.step()                                  # boundary: switch; not time for a block yet
        assert pipe.calls[-1] == "switch:second"
        assert engine.state().prompt == "second"
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
    assert a.latency_ms == pytest.approx(1300, abs=1)   # queued at t+0.2, block done at t+1.5
    assert engine.state().history[-1]["text"] == "second"
    frames = engine.bus.frames()
    assert {f.prompt for f in frames if f.seq >= 21} == {"second"}
    assert {f.prompt for f in frames if f.seq < 21} == {"first"}


def test_a_command_arriving_during_a_block_waits_for_the_boundary():
    engine, pipe, clock = make_engine()
    pipe.during_block = lambda: (engine.submit(PromptCommand(text="late")), setattr(pipe, "during_block", None))
    engine.step()                                      # block 0; "late" arrives while it runs
    assert blocks_called(pipe) == ["block:0:first"]
    assert "switch:late" not in pipe.calls
    engine.step()                                      # boundary: apply, then block 1 under "late"
    assert pipe.calls[-2:] == ["switch:late", "block:1:late"]


def test_several_prompts_in_one_block_the_last_wins():
    async def main():
        events: list = []
        engine, pipe, clock = make_engine()
        engine.subscribe(events.append, asyncio.get_running_loop())
        run_until_idle(engine)
        for i in range(3):
            engine.submit(PromptCommand(text=f"p{i}", id=i))
        clock.advance(1)
        run_until_idle(engine)
        await asyncio.sleep(0)
        return pipe, events

    pipe, events = asyncio.run(main())
    applied = [e for e in events if isinstance(e, PromptApplied)]
    assert len(applied) == 1
    assert (applied[0].id, applied[0].text, applied[0].superseded) == (2, "p2", [0, 1])
    assert blocks_called(pipe)[2] == "block:2:p2"


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
    states = [e.state["paused"] for e in events if isinstance(e, StateEvent)]
    assert states == [True, False]


def test_seed_restarts_the_stream_with_the_current_prompt():
    engine, pipe, clock = make_engine()
    run_until_idle(engine)
    engine.submit(PromptCommand(text="now this"))
    engine.submit(SeedCommand(seed=42))
    clock.advance(1)
    run_until_idle(engine)
    assert "start:now this:42" in pipe.calls
    assert engine.state().seed == 42
    restarted = [f for f in engine.bus.frames() if f.seq >= 21]
    assert restarted[0].block == 0                      # a new stream from block 0 ...
    assert int(restarted[0].image[0, 0, 0]) == 42       # ... with the new seed's pixels
    assert [f.seq for f in engine.bus.frames()] == list(range(engine.bus.frames()[0].seq, engine.bus.next_seq))


def test_worker_thread_runs_in_real_time_and_stops_cleanly():
    pipe = FakePipeline(block_s=0.01)
    engine = Engine(pipe, prompt="x", lead_blocks=1)
    engine.start()
    with pytest.raises(RuntimeError):
        engine.start()
    try:
        time.sleep(1.2)
        # 1.2 s at 16 fps is ~19 frames played; just in time means ~2 blocks beyond the start
        assert 21 <= engine.bus.next_seq <= 21 + 2 * 12
        assert engine.running
        engine.submit(PromptCommand(text="y"))
        deadline = time.monotonic() + 3
        while engine.state().history == [] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.state().history[-1]["text"] == "y"
    finally:
        t0 = time.monotonic()
        engine.stop()
    assert time.monotonic() - t0 < 1.0
    assert not engine.running
    assert "longlive-engine" not in [t.name for t in threading.enumerate()]


def test_a_failing_pipeline_is_reported_not_silent():
    class Broken(FakePipeline):
        def next_frames(self):
            raise RuntimeError("out of memory\nlong details")

    async def main():
        events: list = []
        engine = Engine(Broken(), prompt="x")
        engine.subscribe(events.append, asyncio.get_running_loop())
        engine.start()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not engine.running:
                break
        await asyncio.sleep(0.05)
        return engine, events

    engine, events = asyncio.run(main())
    assert not engine.running
    assert engine.state().failed == "RuntimeError: out of memory"
    assert any(getattr(e, "message", "").startswith("the generator stopped") for e in events)


def test_a_command_the_pipeline_refuses_is_an_error_and_the_stream_goes_on():
    class Picky(FakePipeline):
        def switch_prompt(self, prompt: str) -> None:
            if prompt == "boom":
                raise ValueError("cannot encode this prompt\ndetails")
            super().switch_prompt(prompt)

    async def main():
        events: list = []
        pipe, clock = Picky(), FakeClock()
        engine = Engine(pipe, prompt="ok", clock=clock)
        engine.subscribe(events.append, asyncio.get_running_loop())
        engine.begin()
        run_until_idle(engine)
        engine.submit(PromptCommand(text="boom", id="b"))
        clock.advance(1)
        blocks = run_until_idle(engine)
        await asyncio.sleep(0)
        return engine, events, blocks

    engine, events, blocks = asyncio.run(main())
    errors = [e for e in events if getattr(e, "message", None)]
    assert [(e.id, e.message) for e in errors] == [("b", "could not apply prompt: cannot encode this prompt")]
    assert blocks >= 1 and engine.state().prompt == "ok" and engine.state().failed is None


def test_lead_blocks_must_be_positive():
    with pytest.raises(ValueError):
        Engine(FakePipeline(), lead_blocks=0)


def test_prompts_within_one_block_switch_the_pipeline_once():
    """Only the last of several prompts queued in one block is encoded and switched to;
    the others are reported as superseded."""
    async def main():
        events: list = []
        pipe, clock = FakePipeline(), FakeClock()
        engine = Engine(pipe, prompt="first", clock=clock)
        engine.subscribe(events.append, asyncio.get_running_loop())
        engine.begin()
        run_until_idle(engine)
        for i, text in enumerate(["a", "b", "c"]):
            engine.submit(PromptCommand(text=text, id=i))
        clock.advance(1)
        run_until_idle(engine)
        await asyncio.sleep(0)
        return pipe, events

    pipe, events = asyncio.run(main())
    assert [c for c in pipe.calls if c.startswith("switch:")] == ["switch:c"]
    applied = [e for e in events if isinstance(e, PromptApplied)]
    assert len(applied) == 1 and applied[0].text == "c" and applied[0].superseded == [0, 1]
