"""Keeping every moment, exactly: rewind in the live engine, and offline re-render of what it made.

The real tiny pipeline (random weights, CPU) runs under the engine, driven turn by turn with
an injected clock, so every block lands where the test says. Expected frames come from
driving a second pipeline directly (start, switch_prompt, next_frames), never from the
code under test.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from server.block_sink import BlockSink
from server.engine import CommandRefused, Engine
from server.protocol import ErrorEvent, PromptCommand, RewindCommand, SeedCommand, StateEvent
from streaming.config import load_config
from streaming.pipeline import VideoPipeline
from studio.render import CHUNK_BLOCKS, Renderer, make_plan
from studio.sidecar import Recipe, SidecarBuilder, Source, block_hash
from studio.timeline import Segment, Settings, Timeline, WeightedPrompt
from test_framebus import FakeClock

A, B, C, D = ("a red fox in the snow", "a glass city at night", "waves over black sand", "a field of sunflowers")
DEADLINE_S = 60


def tiny(**video) -> VideoPipeline:
    cfg = load_config("tiny")
    if video:
        cfg = cfg.replace(video=video)
    return VideoPipeline.from_config(cfg, device="cpu")


class Session:
    """An engine over the tiny pipeline, stepped by the test; every generated block is kept."""

    def __init__(self, prompt: str = A, seed: int = 3):
        self.pipe = tiny()
        self.clock = FakeClock()
        self.engine = Engine(self.pipe, prompt=prompt, seed=seed, clock=self.clock)
        self.events: list = []
        self.engine.emit = self.events.append          # the engine's events, synchronously, for the test
        self.sink = BlockSink(capacity=1000)
        self.engine.add_sink(self.sink)
        self.engine.begin()
        self.blocks = []

    def generate(self, n: int) -> list:
        """Exactly n more blocks."""
        out = []
        for _ in range(n):
            while True:
                wait = self.engine.step()
                if wait == 0:
                    break
                self.clock.advance(wait)
            out.append(self.sink.take(timeout=0))
        self.blocks += out
        return out

    def send(self, command) -> None:
        self.engine.submit(command)
        if isinstance(command, PromptCommand):
            assert self.engine.encoder.wait_idle(DEADLINE_S)

    def close(self) -> None:
        self.engine.stop()


@pytest.fixture
def session():
    s = Session()
    yield s
    s.close()


def direct(steps: list, **video) -> list[np.ndarray]:
    """Frames of a pipeline driven by hand: ("start", prompt, seed), ("switch", prompt), ("blocks", n)."""
    pipe = tiny(**video)
    frames = []
    for step in steps:
        if step[0] == "start":
            pipe.start(step[1], step[2])
        elif step[0] == "switch":
            pipe.switch_prompt(step[1])
        else:
            frames += [pipe.next_frames().frames for _ in range(step[1])]
    return frames


def same(blocks, frames) -> bool:
    return len(blocks) == len(frames) and all(np.array_equal(b.frames, f) for b, f in zip(blocks, frames))


# -- rewind ---------------------------------------------------------------------------------------------
def test_rewind_then_continue_equals_a_fresh_run_with_the_same_switches(session):
    first = session.generate(2)                        # segment 0: A from block 0
    session.send(PromptCommand(text=B))
    after_b = session.generate(3)                      # segment 1: B from block 2
    session.send(PromptCommand(text=C))
    session.generate(2)                                # segment 2: C from block 5
    segments = session.engine.state().segments
    assert [(s["segment"], s["block"], s["prompt"]) for s in segments] == [(0, 0, A), (1, 2, B), (2, 5, C)]
    # every client heard of each segment as it was kept
    heard = [[p["prompt"] for p in e.state["segments"]] for e in session.events if isinstance(e, StateEvent)]
    assert heard == [[A], [A, B], [A, B, C]]

    session.send(RewindCommand(segment=1))
    replay = session.generate(2)                       # back at block 2 under B, the same noise: a replay
    assert [b.block for b in replay] == [2, 3] and all(b.prompt == B for b in replay)
    assert all(np.array_equal(r.frames, o.frames) for r, o in zip(replay, after_b))
    session.send(PromptCommand(text=D))
    then = session.generate(2)                         # D from block 4 of the rewound stream

    expected = direct([("start", A, 3), ("blocks", 2), ("switch", B), ("blocks", 2), ("switch", D), ("blocks", 2)])
    assert same(first + replay + then, expected[:2] + expected[2:4] + expected[4:])
    assert session.engine.state().prompt == D


def test_rewind_with_fresh_noise_leaves_the_prompt_and_changes_the_frames(session):
    session.generate(1)
    session.send(PromptCommand(text=B))
    after_b = session.generate(2)
    session.send(RewindCommand(segment=1, fresh=True))
    fresh = session.generate(2)
    assert [b.block for b in fresh] == [1, 2] and all(b.prompt == B for b in fresh)
    assert not np.array_equal(fresh[0].frames, after_b[0].frames)
    assert fresh[0].lineage.changes[-1].noise_seed is not None


def four_segments(budget: int | None = None) -> Session:
    s = Session()
    if budget is not None:
        s.engine.rewind.max_bytes = budget
    s.generate(1)
    for text in (B, C, D):
        s.send(PromptCommand(text=text))
        s.generate(1)
    return s


def test_a_rewind_to_a_segment_not_kept_is_refused_and_changes_nothing():
    """Refused when it is submitted (the control hub answers an `error` with its id, never an
    ack); the engine's own check where it applies a rewind is in tests/test_api_answers.py."""
    roomy = four_segments()
    sizes = [p.nbytes for p in roomy.engine.rewind.points()]
    roomy.close()
    assert len(sizes) == 4 and all(n > 0 for n in sizes[1:])     # (nothing to keep before the first block)
    s = four_segments(budget=sizes[2] + sizes[3])       # room for the newest two snapshots only
    try:
        kept = [p["segment"] for p in s.engine.state().segments]
        assert kept == [2, 3]                          # the oldest were dropped first
        for segment, sentence in ((0, "segment 0 is no longer kept (rewind memory holds segments 2 to 3)"),
                                  (9, "segment 9 does not exist yet; segments 2 to 3 can be rewound to")):
            with pytest.raises(CommandRefused) as refused:
                s.send(RewindCommand(segment=segment, id=f"r{segment}"))
            assert str(refused.value) == sentence and refused.value.conflict
        after = s.generate(1)
        assert after[0].block == 4 and after[0].prompt == D       # the stream went on as if nothing was asked
        assert not [e for e in s.events if isinstance(e, ErrorEvent)]
    finally:
        s.close()


# -- exact re-render ----------------------------------------------------------------------------------------
def source_of(pipe: VideoPipeline, seed: int) -> Source:
    cfg = pipe.cfg
    return Source(config=cfg.name, weights="embedded", fps=float(cfg.video.fps),
                  latent_frames_per_block=cfg.latent_frames_per_block, width=cfg.video.width,
                  height=cfg.video.height, denoising_steps=tuple(cfg.schedule.denoising_steps), seed=seed)


def render(timeline: Timeline, out: Path, pipe: VideoPipeline | None = None, seed: int | None = None,
           resume: bool = False) -> SidecarBuilder:
    pipe = pipe or tiny()
    plan = make_plan(timeline, Recipe.from_timeline(timeline), pipe.cfg, seed, "embedded")
    return Renderer(pipe, plan, out, "embedded").render(resume=resume)


def hashes(builder: SidecarBuilder) -> list[str]:
    return [b["hash"] for b in builder.blocks]


def test_a_recorded_live_session_re_renders_to_its_hashes(session, tmp_path):
    """Recording starts mid-stream; prompt switches, a seed change and a rewind happen while it runs."""
    session.generate(2)                                 # before the recording
    sink = BlockSink(capacity=1000)
    session.engine.add_sink(sink)
    session.send(PromptCommand(text=B))
    session.generate(2)
    session.send(SeedCommand(seed=11))
    session.generate(2)
    session.send(PromptCommand(text=C))
    session.generate(1)
    rewind_to = session.engine.state().segments[1]["segment"]          # B's segment, before the seed change
    session.send(RewindCommand(segment=rewind_to))
    session.generate(2)
    recorded = []
    while (blk := sink.take(timeout=0)) is not None:
        recorded.append(blk)
    builder = SidecarBuilder(source_of(session.pipe, 3))
    for blk in recorded:
        builder.add(blk)
    path = builder.timeline().save(tmp_path / "take.timeline.json")

    timeline = Timeline.load(path)
    assert [r["first_block"] for r in timeline.longlive["runs"]] == [2, 0, 2]      # three runs: mid-stream, seed, rewind
    kinds = [e["kind"] for e in timeline.longlive["events"]]
    assert kinds == ["start", "seed 11", "prompt", f"rewind to segment {rewind_to}"]
    made = render(timeline, tmp_path / "again.mp4")
    assert hashes(made) == [block_hash(b.frames) for b in recorded]
    assert hashes(made) == [b["hash"] for b in timeline.longlive["blocks"]]
    # the rendered file holds every recorded frame
    import av
    with av.open(str(tmp_path / "again.mp4")) as f:
        assert sum(1 for _ in f.decode(video=0)) == sum(len(b.frames) for b in recorded)


def scope_timeline(seconds: tuple[float, ...], prompts: tuple[str, ...], seed: int = 5) -> Timeline:
    segs = tuple(Segment(seconds[i], seconds[i + 1], (WeightedPrompt(p, 100.0),)) for i, p in enumerate(prompts))
    return Timeline(segs, Settings(seed=seed, width=64, height=48))


def test_two_renders_of_a_scope_timeline_give_identical_frames_cut_to_its_length(tmp_path):
    timeline = scope_timeline((0.0, 1.0, 2.5), (A, B))
    one = render(timeline, tmp_path / "one.mp4", tiny(width=64, height=48))
    two = render(timeline, tmp_path / "two.mp4", tiny(width=64, height=48))
    assert hashes(one) == hashes(two)
    assert one.frames == 40                             # 2.5 s at 16 fps
    # B starts at the first block boundary at or after 1.0 s: block 2 (frame 21), as the hand-driven run says
    expected = direct([("start", A, 5), ("blocks", 2), ("switch", B), ("blocks", 2)], width=64, height=48)
    assert hashes(one)[:3] == [block_hash(f) for f in expected[:3]]
    other = render(timeline, tmp_path / "three.mp4", tiny(width=64, height=48), seed=6)
    assert hashes(other)[0] != hashes(one)[0]


def test_resume_gives_the_same_file_as_an_uninterrupted_render(tmp_path):
    timeline = scope_timeline((0.0, 2.0, 7.0), (A, C))            # 112 frames: 10 blocks, two chunks of 8
    whole = render(timeline, tmp_path / "whole.mp4", tiny(width=64, height=48))

    class Interrupted(Exception):
        pass

    pipe = tiny(width=64, height=48)
    real_next = pipe.next_frames
    calls = []

    def next_frames():
        calls.append(1)
        if len(calls) > CHUNK_BLOCKS + 1:                   # during the second chunk
            raise Interrupted()
        return real_next()

    pipe.next_frames = next_frames
    with pytest.raises(Interrupted):
        render(timeline, tmp_path / "resumed.mp4", pipe)
    assert not (tmp_path / "resumed.mp4").exists()
    work = tmp_path / ".resumed.mp4.render"
    assert json.loads((work / "job.json").read_text())["fingerprint"]
    assert sorted(p.name for p in work.glob("chunk-*.mp4")) == ["chunk-00000.mp4"]

    fresh = tiny(width=64, height=48)
    counted = []
    fresh_next = fresh.next_frames
    fresh.next_frames = lambda: counted.append(1) or fresh_next()
    resumed = render(timeline, tmp_path / "resumed.mp4", fresh, resume=True)
    assert len(counted) == 10 - CHUNK_BLOCKS                 # only the unfinished chunk was made again
    assert hashes(resumed) == hashes(whole)
    assert (tmp_path / "resumed.mp4").read_bytes() == (tmp_path / "whole.mp4").read_bytes()
    assert not work.exists()
    sidecar = Timeline.load(tmp_path / "resumed.timeline.json")
    assert [b["hash"] for b in sidecar.longlive["blocks"]] == hashes(whole)
