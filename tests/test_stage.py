"""On stage: cues armed and fired (quantised to the beat or bar), tempo and tap tempo, the
default transition. The engine runs the fake pipeline on an injected clock (FakeClock), so
"the right block" is arithmetic on frames, not a measured time."""

from __future__ import annotations

import asyncio

import statistics

import pytest

from server.control.hub import ControlHub, ServerInfo
from server.performing.cues import CueBank, CueError
from server.protocol import (Ack, ArmCommand, CueCommand, ErrorEvent, FireCommand, PromptApplied, PromptCommand,
                             StateEvent, TapCommand, TempoCommand, TransitionCommand, parse_command)
from server.performing.tempo import TempoClock
from test_engine import make_engine, run_until_idle, settle

CUES = """
cues:
  - {cue: 1, name: One, text: "first cue"}
  - {cue: 2, name: Two, text: "second cue"}
  - {cue: 3, name: Mix, prompts: [{text: "first cue", weight: 3}, {text: "third", weight: 1}],
     transition: {blocks: 3, method: slerp}}
"""


def stage(bpm: float = 120.0):
    engine, pipe, clock = make_engine()
    tempo = TempoClock(bpm, 4, clock=clock)          # beat 0 (a downbeat) at the clock's start, t = 100
    hub = ControlHub(engine, ServerInfo("fake", 16, 8, 16.0, True), cues=CueBank.parse(CUES), tempo=tempo)
    events: list = []
    engine.emit = events.append
    hub.broadcast = events.append                    # what every client would hear
    return engine, pipe, clock, hub, events


def play(engine, clock, seconds: float) -> None:
    for _ in range(round(seconds * 16)):
        clock.advance(1 / 16)
        run_until_idle(engine)
        settle(engine)


def replies_of(hub, command) -> list:
    out: list = []
    hub.dispatch(command, out.append)
    return out


# -- the tempo clock ---------------------------------------------------------------------------------
def test_the_next_beat_and_bar_at_120_bpm():
    t = [100.0]
    tempo = TempoClock(120, 4, clock=lambda: t[0])
    assert tempo.next_beat(100.3) == pytest.approx(100.5)
    assert tempo.next_beat(100.5) == pytest.approx(100.5)          # at a beat: that beat
    assert tempo.next_bar(100.3) == pytest.approx(102.0)
    assert tempo.next_bar(102.0) == pytest.approx(102.0)
    assert tempo.next(100.3, "none") == 100.3
    t[0] = 101.0                                                   # beat 2 now; at 60 BPM it stays beat 2
    tempo.set(60)
    assert tempo.beat_at(101.0) == pytest.approx(2.0)
    assert tempo.next_beat(101.1) == pytest.approx(102.0)
    assert tempo.next_bar(101.1) == pytest.approx(103.0)           # beat 4, one second a beat from beat 2


def test_tap_tempo_sets_the_bpm_and_the_downbeat():
    t = [50.0]
    tempo = TempoClock(90, 4, clock=lambda: t[0])
    assert tempo.tap() is False                                    # one tap: a downbeat, no tempo yet
    for _ in range(3):
        t[0] += 0.5
        assert tempo.tap() is True
    assert tempo.bpm == pytest.approx(120)
    assert tempo.beat_at(51.5) == pytest.approx(3.0)               # the taps are beats 0, 1, 2, 3
    assert tempo.next_bar(51.6) == pytest.approx(52.0)
    t[0] += 5.0                                                    # a long pause: a new run
    assert tempo.tap() is False and tempo.bpm == pytest.approx(120)
    t[0] += 0.4
    tempo.tap()
    assert tempo.bpm == pytest.approx(150)


def test_taps_that_say_when_they_happened_are_measured_on_the_tappers_clock():
    """A page's taps 0.5 s apart on its own clock arrive bunched by a slow network (0.0, 0.9, 1.0, 1.6 s):
    the tempo is 120 BPM, not the arrivals' 63; another connection's clock, a span no run could have,
    or a tap with no time falls back to the arrivals."""
    t = [10.0]
    tempo = TempoClock(90, 4, clock=lambda: t[0])
    page, other = object(), object()
    for arrived, at in zip((10.0, 10.9, 11.0, 11.6), (500.0, 500.5, 501.0, 501.5)):
        t[0] = arrived
        tempo.tap(at, page)
    assert tempo.bpm == pytest.approx(120)
    assert tempo.state()["taps"] == 4
    assert tempo.beat_at(11.6) == pytest.approx(3.0)               # the latest tap lands on beat 3
    for arrived, at in ((12.1, 502.0), (12.6, 502.5)):             # the run goes on past the taps kept
        t[0] = arrived
        tempo.tap(at, page)
    assert tempo.beat_at(12.6) == pytest.approx(5.0) and tempo.state()["taps"] == 6
    t[0] = 15.0
    tempo.tap(900.0, page)                                         # over 2 s since: a new run
    assert tempo.state()["taps"] == 1
    t[0] = 15.5
    tempo.tap(900.4, other)                                        # another tapper's clock: arrivals
    assert tempo.bpm == pytest.approx(120)
    t[0] = 16.25
    tempo.tap(907.4, other)                                        # 7 s on its clock: more than a run
    assert tempo.bpm == pytest.approx(60 / statistics.median([0.5, 0.75]))
    t[0] = 16.5
    tempo.tap(None, other)                                         # no time said: arrivals
    assert tempo.state()["taps"] == 4
    assert tempo.bpm == pytest.approx(60 / statistics.median([0.5, 0.75, 0.25]))


# -- cues ----------------------------------------------------------------------------------------------
def test_an_armed_cue_fired_on_the_bar_switches_at_the_first_block_on_screen_after_it():
    async def main():
        engine, pipe, clock, hub, events = stage(120)
        run_until_idle(engine)                       # block 0 on air from t = 100, block 1 made ahead
        assert isinstance(replies_of(hub, ArmCommand(cue=2, id="a"))[0], Ack)
        settle(engine)                               # armed: encoded now, beside generation
        assert pipe.encoded.count("second cue") == 1 and hub.cues.armed_ready()
        assert hub.state()["armed"] == 2
        clock.advance(0.3)                           # t = 100.3; the next bar is at 102.0
        run_until_idle(engine)
        assert isinstance(replies_of(hub, FireCommand(cue=2, quantize="bar", id="f"))[0], Ack)
        play(engine, clock, 3)
        # blocks reach the screen at 100 + frames/16: block 2 at 101.3125 (before the bar), block 3 at 102.0625
        applied = [e for e in events if isinstance(e, PromptApplied)]
        assert [(e.id, e.text, e.block, e.cue) for e in applied] == [("f", "second cue", 3, 2)]
        assert applied[0].offset_ms == pytest.approx(62.5)
        assert "block:2:first" in pipe.calls and "block:3:second cue" in pipe.calls
        assert pipe.encoded.count("second cue") == 1, "firing an armed cue costs no encoding"
        state = hub.state()
        assert state["armed"] is None and state["last_fire"] == {"cue": 2, "quantize": "bar", "block": 3,
                                                                  "offset_ms": 62.5}
    asyncio.run(main())


def test_a_cue_on_the_beat_and_one_without_quantize():
    async def main():
        engine, pipe, clock, hub, events = stage(120)
        run_until_idle(engine)
        clock.advance(0.3)
        run_until_idle(engine)
        hub.dispatch(FireCommand(cue=1, quantize="none", id="now"), events.append)
        play(engine, clock, 1)
        hub.dispatch(FireCommand(cue=2, quantize="beat", id="beat"), events.append)   # asked at t = 101.3625
        play(engine, clock, 3)
        applied = {e.id: e for e in events if isinstance(e, PromptApplied)}
        assert applied["now"].block == 2 and applied["now"].offset_ms is None
        # the next beat is 101.5; block 3 (on screen at 102.0625) was made before the fire: block 4, at 102.8125
        assert applied["beat"].block == 4 and applied["beat"].offset_ms == pytest.approx(1312.5)
    asyncio.run(main())


def test_a_blended_cue_glides_with_its_own_transition_and_the_state_shows_it():
    async def main():
        engine, pipe, clock, hub, events = stage()
        run_until_idle(engine)
        hub.dispatch(FireCommand(cue=3), events.append)
        play(engine, clock, 4)
        label = "first cue (75%) + third (25%)"
        assert f"switch:{label}:glide 3 slerp" in pipe.calls
        glides = [e.state["transition"] for e in events if isinstance(e, StateEvent) and "transition" in e.state]
        steps = [(g["step"], g["blocks"]) if g else None for g in glides]
        assert steps[:3] == [(1, 3), (2, 3), None]      # blocks 1 and 2 of 3 under way, then done
        assert glides[0]["to"] == label and glides[0]["method"] == "slerp"
        applied = [e for e in events if isinstance(e, PromptApplied)]
        assert applied[-1].transition == {"blocks": 3, "method": "slerp"}
    asyncio.run(main())


def test_the_default_transition_applies_to_prompts_and_cues_that_name_none():
    async def main():
        engine, pipe, clock, hub, events = stage()
        run_until_idle(engine)
        assert isinstance(replies_of(hub, TransitionCommand(blocks=4, method="linear"))[0], Ack)
        assert hub.state()["transition_default"] == {"blocks": 4, "method": "linear"}
        hub.dispatch(PromptCommand(text="typed"), events.append)
        play(engine, clock, 1)
        hub.dispatch(FireCommand(cue=1), events.append)
        play(engine, clock, 1)
        hub.dispatch(PromptCommand(text="cut", transition=parse_command(
            {"type": "prompt", "text": "x", "transition": None}).transition), events.append)   # null: a cut
        play(engine, clock, 1)
        switches = [c for c in pipe.calls if c.startswith("switch:")]
        assert switches == ["switch:typed:glide 4 linear", "switch:first cue:glide 4 linear", "switch:cut"]
    asyncio.run(main())


def test_cue_mistakes_get_one_sentence_and_change_nothing():
    async def main():
        engine, pipe, clock, hub, events = stage()
        run_until_idle(engine)
        before = hub.state()["cues"]
        for command, fragment in [(FireCommand(cue=9, id=1), "cue 9 is empty (cues set: 1, 2, 3)"),
                                  (ArmCommand(cue=7, id=2), "cue 7 is empty")]:
            (reply,) = replies_of(hub, command)
            assert isinstance(reply, ErrorEvent) and reply.id == command.id and fragment in reply.message
        assert hub.state()["cues"] == before and hub.state()["armed"] is None
        (ack,) = replies_of(hub, CueCommand(cue=9, name="Nine", text="ninth"))
        assert isinstance(ack, Ack)
        assert [c["cue"] for c in hub.state()["cues"]] == [1, 2, 3, 9]
        assert isinstance(replies_of(hub, TempoCommand(bpm=90, beats_per_bar=3))[0], Ack)
        assert hub.state()["tempo"]["bpm"] == 90 and hub.state()["tempo"]["beats_per_bar"] == 3
        assert isinstance(replies_of(hub, TapCommand())[0], Ack)
    asyncio.run(main())


def test_cue_files():
    bank = CueBank.load()                            # the shipped default: keys 1-9 all do something
    assert [c["cue"] for c in bank.listed()] == list(range(1, 10))
    assert bank.get(8).prompt.single is None and bank.get(8).transition.method == "slerp"
    for text, fragment in [
        ("cues: 3", "needs a list under 'cues:'"),
        ("cues: [{cue: 0, text: a}]", "cues[0]: cue.cue must be between 1 and 99"),
        ("cues: [{cue: 1}]", "cues[0]: 'cue' needs exactly one of 'text'"),
        ("cues: [{cue: 1, text: a}, {cue: 1, text: b}]", "cues[1] repeats cue 1"),
        ("cues: [{cue: 1, text: a, colour: red}]", "has no field 'colour'"),
        ("cues: [", "is not valid YAML"),
    ]:
        with pytest.raises(CueError) as err:
            CueBank.parse(text, "my.yaml")
        assert fragment in str(err.value) and str(err.value).startswith("my.yaml")


def test_without_aalink_link_is_one_notice_and_the_internal_clock(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_aalink(name, *args, **kwargs):
        if name == "aalink":
            raise ImportError("No module named 'aalink'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_aalink)

    async def main():
        engine, pipe, clock = make_engine()
        hub = ControlHub(engine, ServerInfo("fake", 16, 8, 16.0, True), link=True)
        await hub.start()
        try:
            tempo = hub.state()["tempo"]
            assert tempo["source"] == "internal" and "aalink" in tempo["notice"]
            assert isinstance(replies_of(hub, TempoCommand(bpm=100))[0], Ack) and hub.tempo.bpm == 100
        finally:
            await hub.stop()
    asyncio.run(main())


def test_a_link_session_steers_the_clock():
    """What LinkTempo reads from aalink's Link (beat and tempo now) aligns the clock; a session
    itself is not opened here, since Link announces itself by multicast beyond loopback."""
    from types import SimpleNamespace

    from server.performing.tempo import LinkTempo
    t = [10.0]
    tempo = TempoClock(120, 4, clock=lambda: t[0])
    link = SimpleNamespace(beat=6.5, tempo=90.0, num_peers=2)
    follower = LinkTempo(tempo, link)
    follower.sync()
    assert tempo.bpm == 90 and tempo.beat_at(10.0) == pytest.approx(6.5)
    assert tempo.next_bar(10.0) == pytest.approx(10.0 + 1.5 * 60 / 90)      # beat 8 is the next downbeat
    follower.propose(128)
    assert link.tempo == 128 and follower.peers() == 2
