"""Blends and transitions offline: the lineage's wire form, `longlive render` of a Scope
timeline with a blended segment and a slerp transition, and that render's sidecar made again.

Expected frames come from a `VideoPipeline` driven by hand (start, switch_prompt, next_frames)
at the blocks `BlockClock` gives, never from the code under test; a render's frames are
compared through its sidecar's block hashes (sha256 of the raw frames, not the lossy file).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import av
import pytest

from streaming.blend import Blend, TransitionSpec
from streaming.config import load_config
from streaming.pipeline import FrameBlock, VideoPipeline
from studio.lineage import Change, Lineage, LineageError, Run
from studio.sidecar import block_hash
from studio.timeline import BlockClock
from test_render_cli import longlive

LANTERN, DUNES, SEA, BOAT = "a lantern in fog", "a kite over dunes", "a kite over the sea", "a paper boat on a river"
SEVEN = Blend.of([(f"colour {i}", 1) for i in range(7)])     # sevenths: renormalised, the last digit moves


# -- the lineage's wire form ------------------------------------------------------------------------------
def test_a_lineage_with_blends_and_transitions_round_trips_bit_for_bit():
    kites = Blend.of([(DUNES, 70), (SEA, 30)])
    lineage = (Lineage(kites, 7).with_prompt(3, LANTERN).with_prompt(5, SEVEN, TransitionSpec(4, "slerp"))
               .with_noise(6, 9).with_prompt(8, DUNES, TransitionSpec(2)))
    wire = lineage.to_wire()
    assert wire == {
        "prompts": [{"text": DUNES, "weight": 0.7}, {"text": SEA, "weight": 0.3}], "seed": 7,
        "changes": [{"block": 3, "prompt": LANTERN},
                    {"block": 5, "prompts": [{"text": t, "weight": w} for t, w in SEVEN.parts],
                     "transition": {"blocks": 4, "method": "slerp"}},
                    {"block": 6, "noise_seed": 9},
                    {"block": 8, "prompt": DUNES, "transition": {"blocks": 2, "method": "linear"}}]}
    back = Lineage.from_wire(json.loads(json.dumps(wire)))
    assert back == lineage and back.changes[1].prompt.parts == SEVEN.parts      # the very same weights
    assert back.prompt_at(4) == LANTERN and back.prompt_at(5) == SEVEN and back.changes[1].transition.method == "slerp"
    run = Run(lineage, 2, 10)
    assert Run.from_wire(json.loads(json.dumps(run.to_wire()))) == run
    # a blend of one prompt is that prompt, a transition of 0 or 1 blocks a cut: they make the same frames
    same = Lineage(Blend.of(LANTERN), 1).with_prompt(2, Blend.of([(BOAT, 5)]), TransitionSpec(1, "slerp"))
    assert same == Lineage(LANTERN, 1).with_prompt(2, BOAT)
    assert same.to_wire() == {"prompt": LANTERN, "seed": 1, "changes": [{"block": 2, "prompt": BOAT}]}


def test_a_lineage_written_before_blends_still_reads_and_writes_the_same():
    old = {"prompt": LANTERN, "seed": 3, "changes": [{"block": 2, "prompt": BOAT}, {"block": 4, "noise_seed": 5}]}
    lineage = Lineage.from_wire(old)
    assert lineage == Lineage(LANTERN, 3, (Change(2, prompt=BOAT), Change(4, noise_seed=5)))
    assert lineage.changes[0].transition is None and lineage.to_wire() == old
    # weights written by hand are normalised as a blend's are
    by_hand = Lineage.from_wire({"prompts": [{"text": DUNES, "weight": 70}, {"text": SEA, "weight": 30}], "seed": 0})
    assert by_hand.prompt == Blend.of([(DUNES, 0.7), (SEA, 0.3)])


GOOD = {"prompt": LANTERN, "seed": 3,
        "changes": [{"block": 2, "noise_seed": 5},
                    {"block": 4, "prompts": [{"text": DUNES, "weight": 0.5}, {"text": SEA, "weight": 0.5}],
                     "transition": {"blocks": 4, "method": "slerp"}}]}
MIX = "lineage.changes[1]"


def _set(path: str, value):
    """GOOD with the field at `path` (keys and list indexes, dot-separated) set to `value`, or removed (...)."""
    def change(obj):
        *parents, last = path.split(".")
        for key in parents:
            obj = obj[int(key)] if isinstance(obj, list) else obj[key]
        key = int(last) if isinstance(obj, list) else last
        if value is ...:
            del obj[key]
        else:
            obj[key] = value
    wire = copy.deepcopy(GOOD)
    change(wire)
    return wire


@pytest.mark.parametrize("wire, says", [
    (_set("prompts", [{"text": DUNES, "weight": 1}]), 'lineage needs exactly one of "prompt" and "prompts"'),
    (_set("prompt", ...), 'lineage needs exactly one of "prompt" and "prompts"'),
    (_set("changes.1.prompt", BOAT), f'{MIX} needs exactly one of "prompt", "prompts" and "noise_seed"'),
    (_set("changes.1.prompts", "a kite"), f'{MIX}.prompts must be a list of {{"text", "weight"}} objects'),
    (_set("changes.1.prompts", []), f"{MIX}.prompts is not a usable blend: a blend needs at least one prompt"),
    (_set("changes.1.prompts.0", "a kite"), f"{MIX}.prompts[0] must be an object with text and weight"),
    (_set("changes.1.prompts.1.text", " "), f"{MIX}.prompts[1].text must be a non-empty string"),
    (_set("changes.1.prompts.1.weight", "half"), f"{MIX}.prompts[1].weight must be a number"),
    (_set("changes.1.prompts.1.weight", True), f"{MIX}.prompts[1].weight must be a number"),
    (_set("changes.1.prompts.0.weight", -0.5), f"{MIX}.prompts is not a usable blend: "
                                               f"blend weights must be finite and not negative"),
    (_set("changes.1.prompts", [{"text": DUNES, "weight": 0}]),
     f"{MIX}.prompts is not a usable blend: blend weights add up to 0; give at least one prompt a weight above 0"),
    (_set("changes.1.prompts", [{"text": str(i), "weight": 1} for i in range(9)]),
     f"{MIX}.prompts is not a usable blend: a blend has at most 8 prompts, not 9"),
    (_set("changes.1.transition", 4), f"{MIX}.transition must be an object with blocks and method"),
    (_set("changes.1.transition.blocks", 65), f"{MIX}.transition.blocks must be between 0 and 64"),
    (_set("changes.1.transition.blocks", 2.5), f"{MIX}.transition.blocks must be a whole number"),
    (_set("changes.1.transition.method", "cubic"), f'{MIX}.transition.method must be "linear" or "slerp"'),
    (_set("changes.0.transition", {"blocks": 2, "method": "linear"}),
     "lineage.changes[0].transition belongs to a prompt change, not a noise_seed change"),
])
def test_a_bad_blend_or_transition_field_is_one_sentence_naming_it(wire, says):
    Lineage.from_wire(copy.deepcopy(GOOD))                  # (the unbroken form reads)
    with pytest.raises(LineageError) as e:
        Lineage.from_wire(wire)
    assert str(e.value) == says and "\n" not in says


# -- `longlive render` of a Scope timeline --------------------------------------------------------------
KITES = [(DUNES, 70), (SEA, 30)]
SCOPE = {
    "prompts": [
        {"startTime": 0, "endTime": 0.5, "prompts": [{"text": LANTERN, "weight": 100}]},
        {"startTime": 0.5, "endTime": 1.0, "prompts": [{"text": t, "weight": w} for t, w in KITES]},
        {"startTime": 1.0, "endTime": 4.3125, "prompts": [{"text": BOAT, "weight": 100}],
         "transitionSteps": 4, "temporalInterpolationMethod": "slerp"},
    ],
    "settings": {"pipelineId": "longlive", "resolution": {"height": 48, "width": 64}, "seed": 4},
    "version": "2.0",
}


def tiny() -> VideoPipeline:
    return VideoPipeline.from_config(load_config("tiny").replace(video={"width": 64, "height": 48}), device="cpu")


def by_hand(kites: str | Blend, transition: TransitionSpec | None) -> list[FrameBlock]:
    """The timeline's stream driven by hand: the lantern, the kites from 0.5 s, the boat from 1.0 s."""
    pipe = tiny()
    clock = BlockClock(pipe.fps, pipe.cfg.latent_frames_per_block)
    kites_at, boat_at, blocks = clock.block_at(0.5), clock.block_at(1.0), clock.blocks_for(4.3125)
    assert (kites_at, boat_at, blocks) == (1, 2, 6)     # 0.5 s: frame 8, block 1 (frame 9); 1 s: block 2 (frame 21)
    pipe.start(LANTERN, 4)
    out = []
    for b in range(blocks):
        if b == kites_at:
            pipe.switch_prompt(kites)
        if b == boat_at:
            pipe.switch_prompt(BOAT, transition=transition)
        out.append(pipe.next_frames())
    return out


def hashes_of(blocks: list[FrameBlock]) -> list[str]:
    return [block_hash(b.frames) for b in blocks]


def sidecar_hashes(path: Path) -> list[str]:
    return [b["hash"] for b in json.loads(path.read_text())["longlive"]["blocks"]]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """The folder where `longlive render show.json` made show.render.mp4 and its sidecar."""
    folder = tmp_path_factory.mktemp("blends")
    (folder / "show.json").write_text(json.dumps(SCOPE))
    done = longlive("render", "show.json", cwd=folder)
    assert done.returncode == 0, done.stderr
    assert "segment" not in done.stderr             # no notice that blends or transitions play otherwise
    return folder


def test_render_plays_the_blend_and_the_slerp_transition_exactly(rendered):
    expected = by_hand(Blend.of(KITES), TransitionSpec(4, "slerp"))
    assert [b.transition for b in expected] == [None, None, (1, 4), (2, 4), (3, 4), (4, 4)]
    made = sidecar_hashes(rendered / "show.render.timeline.json")
    assert made == hashes_of(expected)
    with av.open(str(rendered / "show.render.mp4")) as f:
        assert sum(1 for _ in f.decode(video=0)) == 69 == sum(len(b.frames) for b in expected)   # 4.3125 s at 16 fps

    heaviest = hashes_of(by_hand(DUNES, None))          # what the render made before: the 70% prompt, cuts
    assert made[0] == heaviest[0] and all(m != h for m, h in zip(made[1:], heaviest[1:]))
    cut = hashes_of(by_hand(Blend.of(KITES), None))     # the blend, but a cut to the boat
    assert made[:2] == cut[:2] and all(m != c for m, c in zip(made[2:], cut[2:]))


def test_the_render_s_sidecar_keeps_the_blend_and_transition_and_renders_again_to_its_hashes(rendered):
    sidecar = json.loads((rendered / "show.render.timeline.json").read_text())
    segments = [(s["startTime"], s["endTime"], s["prompts"], s.get("transitionSteps"),
                 s.get("temporalInterpolationMethod")) for s in sidecar["prompts"]]
    assert segments == [                                 # each from its first block: frames 0, 9, 21 of 69
        (0, 0.5625, [{"text": LANTERN, "weight": 100}], None, None),
        (0.5625, 1.3125, [{"text": DUNES, "weight": 70}, {"text": SEA, "weight": 30}], None, None),
        (1.3125, 4.3125, [{"text": BOAT, "weight": 100}], 4, "slerp")]
    events = sidecar["longlive"]["events"]
    assert [(e["kind"], e["block"], e["prompt"]) for e in events] == [
        ("start", 0, LANTERN), ("prompt", 1, f"{DUNES} (70%) + {SEA} (30%)"), ("prompt", 2, BOAT)]
    assert events[1]["prompts"] == [{"text": DUNES, "weight": 0.7}, {"text": SEA, "weight": 0.3}]
    assert events[2]["transition"] == {"blocks": 4, "method": "slerp"} and "prompts" not in events[2]
    assert "transition" not in events[1] and "prompts" not in events[0]

    again = longlive("render", "show.render.timeline.json", "-o", "again.mp4", cwd=rendered)
    assert again.returncode == 0, again.stderr
    assert "the frames equal the recording's: all 6 blocks match its hashes" in again.stdout
    assert sidecar_hashes(rendered / "again.timeline.json") == sidecar_hashes(rendered / "show.render.timeline.json")

    # the exported segments alone, as Scope would play them, are the same show
    del sidecar["longlive"]
    (rendered / "exported.json").write_text(json.dumps(sidecar))
    scope = longlive("render", "exported.json", cwd=rendered)
    assert scope.returncode == 0, scope.stderr
    assert sidecar_hashes(rendered / "exported.render.timeline.json") == \
        sidecar_hashes(rendered / "show.render.timeline.json")
