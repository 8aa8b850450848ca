"""A timeline played live: its prompts switch at their times, on block boundaries; stop (or a sent
prompt) returns to manual control. The fake pipeline logs every call, the clock is injected."""

from __future__ import annotations

from streaming.blend import Blend
from server.protocol import Notice, PromptApplied, PromptCommand, TimelineCommand, read_command
from studio.timeline import Timeline
from test_engine import blocks_called, make_engine, run_until_idle, settle

SCOPE = {
    "prompts": [
        {"startTime": 0, "endTime": 1.0, "prompts": [{"text": "dawn", "weight": 100}]},
        {"startTime": 1.0, "endTime": 2.0, "prompts": [{"text": "noon", "weight": 30}, {"text": "rain", "weight": 70}]},
        {"startTime": 2.0, "endTime": 3.0, "prompts": [{"text": "dusk", "weight": 100}],
         "transitionSteps": 2, "temporalInterpolationMethod": "slerp"},
    ],
    "settings": {"pipelineId": "longlive", "seed": 42},
    "version": "2.0",
}


def play(engine, clock, seconds: float) -> None:
    for _ in range(round(seconds * 16)):
        clock.advance(1 / 16)
        run_until_idle(engine)
        settle(engine)


def test_a_timeline_restarts_the_stream_and_switches_at_its_block_boundaries():
    engine, pipe, clock = make_engine()
    events: list = []
    engine.emit = events.append
    run_until_idle(engine)
    command = read_command('{"type": "timeline", "id": "t", "timeline": %s}' % __import__("json").dumps(SCOPE))
    assert isinstance(command, TimelineCommand) and isinstance(command.timeline, Timeline)
    engine.submit(command)
    pipe.calls.clear()
    play(engine, clock, 5)
    calls = [c for c in pipe.calls if not c.startswith("fail")]
    # at 16 fps blocks start at frames 0, 9, 21, 33, 45: 1.0 s (frame 16) -> block 2, 2.0 s (frame 32) -> block 3;
    # 3 s is 48 frames: blocks 0-4; then the stream goes on under the last prompt
    # the blend plays as a blend (weights normalised), the transition glides over its 2 blocks
    blend = "noon (30%) + rain (70%)"
    assert calls[:8] == ["start:dawn:42", "block:0:dawn", "block:1:dawn", f"switch:{blend}", f"block:2:{blend}",
                         "switch:dusk:glide 2 slerp", "block:3:dusk", "block:4:dusk"]
    assert all(c == f"block:{i + 5}:dusk" for i, c in enumerate(calls[8:])) and len(calls) > 9
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert notices == ["the timeline finished; back to manual control"]
    assert engine.state().timeline is None and engine.state().seed == 42
    # each switch is announced like a sent prompt's, with the timeline command's id
    applied = [e for e in events if isinstance(e, PromptApplied)]
    assert [(e.id, e.text, e.block, e.transition) for e in applied] == [
        ("t", blend, 2, None), ("t", "dusk", 3, {"blocks": 2, "method": "slerp"})]
    # the lineage (what a recording's sidecar replays) carries the blend and the transition
    changes = engine._lineage.changes
    assert [(c.block, c.prompt) for c in changes] == [(2, Blend.of([("noon", 0.3), ("rain", 0.7)])), (3, "dusk")]


def test_stop_and_a_sent_prompt_return_to_manual_control():
    engine, pipe, clock = make_engine()
    events: list = []
    engine.emit = events.append
    engine.submit(TimelineCommand(timeline=Timeline.from_scope(SCOPE)))
    play(engine, clock, 0.5)
    assert engine.state().timeline["segments"] == 3
    engine.submit(TimelineCommand(timeline=None, id="stop"))
    play(engine, clock, 3)
    assert engine.state().timeline is None
    assert not any(c.startswith("switch:") for c in pipe.calls)            # no switch after the stop
    assert [e.message for e in events if isinstance(e, Notice) and e.id == "stop"] == \
        ["the timeline stopped; back to manual control"]

    engine.submit(TimelineCommand(timeline=Timeline.from_scope(SCOPE)))
    play(engine, clock, 0.5)
    engine.submit(PromptCommand(text="mine", id="p"))
    settle(engine)
    play(engine, clock, 3)
    assert engine.state().timeline is None and engine.state().prompt == "mine"
    assert "switch:rain" not in pipe.calls and "switch:mine" in pipe.calls
    assert any(e.message == "the timeline stopped (a prompt was sent); back to manual control"
               for e in events if isinstance(e, Notice))
    assert blocks_called(pipe)[-1].endswith(":mine")


def test_a_workflow_from_another_pipeline_plays_and_says_once_what_is_not_used():
    """A Scope workflow file (since March 2026 Scope's only export) plays live like its v2.0 twin, and the
    settings LongLive does not use reach the user once, as a notice with the command's id."""
    from test_timeline_workflow import workflow_of

    workflow = workflow_of({**SCOPE, "settings": {"pipelineId": "streamdiffusionv2", "seed": 42}})
    engine, pipe, clock = make_engine()
    events: list = []
    engine.emit = events.append
    run_until_idle(engine)
    engine.submit(read_command('{"type": "timeline", "id": "w", "timeline": %s}' % __import__("json").dumps(workflow)))
    pipe.calls.clear()
    play(engine, clock, 5)
    calls = [c for c in pipe.calls if not c.startswith("fail")]
    assert calls[:3] == ["start:dawn:42", "block:0:dawn", "block:1:dawn"]
    notices = [(e.id, e.message) for e in events if isinstance(e, Notice)]
    unused = [n for n in notices if "streamdiffusionv2" in n[1]]
    assert len(unused) == 1 and unused[0][0] == "w" and unused[0][1].startswith("timeline: "), notices
