"""Timelines: Scope's real exports import and re-export unchanged, every malformed field gets
one sentence naming it, files are written atomically, and seconds map onto the right blocks."""

from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings as hyp_settings, strategies as st

from streaming.blend import Blend, TransitionSpec
from streaming.errors import UserError
from studio import timeline as tl_module
from studio.timeline import (MAX_TEXT_CHARS, BlockClock, Segment, Settings, Timeline, TimelineError,
                             Transition, WeightedPrompt)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = next((p for p in (REPO.parent / "shared" / "examples" / "scope-timelines",
                             REPO / "shared" / "examples" / "scope-timelines") if p.is_dir()),
                REPO.parent / "shared" / "examples" / "scope-timelines")
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.json"))

# hand-copied from the files: each segment's endTime
EXAMPLE_ENDS = {
    "timeline-factory.json": [11.225200000047684, 21.944400000333786, 33.73460000038147],
    "timeline-panda.json": [11.4555, 24.16839999985695, 36.94459999966622],
}


def seg(start, end, *prompts, **more):
    """A Scope segment dict; prompts are texts or (text, weight) pairs."""
    items = [{"text": p, "weight": 100} if isinstance(p, str) else {"text": p[0], "weight": p[1]} for p in prompts]
    return {"startTime": start, "endTime": end, "prompts": items or [{"text": "a fox", "weight": 100}], **more}


def scope(*segments, **top):
    return {"prompts": list(segments) or [seg(0, 5)], "settings": {"pipelineId": "longlive"}, "version": "2.0", **top}


def synthetic() -> dict:
    """Blends, a transition, unknown fields at every level and our own longlive object."""
    return {
        "prompts": [
            {"startTime": 0, "endTime": 4.5, "prompts": [{"text": "a red fox", "weight": 70},
                                                         {"text": "a snowy field", "weight": 30.5}],
             "color": {"hex": "#ff0000", "tags": [1, 2.5, None, True]}},
            {"startTime": 6, "endTime": 10, "prompts": [{"text": "a lighthouse in a storm", "weight": 100}],
             "transitionSteps": 4, "temporalInterpolationMethod": "slerp"},
        ],
        "settings": {"pipelineId": "longlive", "resolution": {"height": 480, "width": 832}, "seed": 7,
                     "denoisingSteps": [1000, 750, 500, 250], "noiseScale": 0.7, "manageCache": False},
        "version": "2.1",
        "exportedAt": "2025-11-02T10:00:00.000Z",
        "longlive": {"recording": {"started": "2025-11-02T09:59:00Z", "blocks": [0, 12, 24]}},
        "app": "scope-next",
    }


def errors(obj) -> str:
    with pytest.raises(TimelineError) as info:
        Timeline.from_scope(obj)
    return str(info.value)


# ---- Scope's own files ---------------------------------------------------------------------

def test_the_examples_are_there():
    assert {p.name for p in EXAMPLE_FILES} >= set(EXAMPLE_ENDS), f"expected Scope examples in {EXAMPLES}"


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_scope_examples_import(path):
    t = Timeline.load(path)
    assert len(t.segments) == 3
    assert t.segments[0].start == 0
    if path.name in EXAMPLE_ENDS:
        assert [s.end for s in t.segments] == EXAMPLE_ENDS[path.name]
        assert t.duration == EXAMPLE_ENDS[path.name][-1]
    assert all(len(s.prompts) == 1 and s.prompts[0].weight == 100.0 and s.transition is None for s in t.segments)
    assert t.settings == Settings("longlive", 832, 480, 42, (1000, 750),
                                  {"noiseScale": 0.7, "noiseController": True, "manageCache": True})
    assert t.version == "2.0" and t.exported_at.startswith("2025-10-27T")
    assert t.notes == ("kept settings noiseScale, noiseController, manageCache as they are; "
                       "LongLive does not use them",)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_scope_examples_round_trip(path, tmp_path):
    d = json.loads(path.read_text())
    t = Timeline.from_scope(d)
    assert t.to_scope() == d
    assert Timeline.from_scope(t.to_scope()) == t
    assert t.to_json() + "\n" == path.read_text()          # even the text: Scope's layout and number style
    assert Timeline.load(t.save(tmp_path / path.name)) == t
    assert (tmp_path / path.name).read_text() == path.read_text()


# ---- a timeline with everything --------------------------------------------------------------

def test_synthetic_timeline_reads_every_field():
    t = Timeline.from_scope(synthetic())
    first, second = t.segments
    assert first.prompts == (WeightedPrompt("a red fox", 70.0), WeightedPrompt("a snowy field", 30.5))
    assert first.extra == {"color": {"hex": "#ff0000", "tags": [1, 2.5, None, True]}}
    assert first.transition is None and second.transition == Transition(4, "slerp")
    assert t.settings.extra == {"noiseScale": 0.7, "manageCache": False}
    assert t.version == "2.1" and t.exported_at == "2025-11-02T10:00:00.000Z"
    assert t.longlive == {"recording": {"started": "2025-11-02T09:59:00Z", "blocks": [0, 12, 24]}}
    assert t.extra == {"app": "scope-next"}
    assert t.notes == ("kept unknown field prompts[0].color",
                       "kept settings noiseScale, manageCache as they are; LongLive does not use them",
                       "kept unknown field app")


def test_synthetic_timeline_round_trips(tmp_path):
    d = synthetic()
    t = Timeline.from_scope(d)
    assert t.to_scope() == d
    assert Timeline.from_scope(t.to_scope()) == t
    assert Timeline.from_json(t.to_json()) == t
    assert Timeline.load(t.save(tmp_path / "t.json")) == t


def test_export_key_order():
    out = Timeline.from_scope(synthetic()).to_scope()
    assert list(out) == ["prompts", "settings", "version", "exportedAt", "longlive", "app"]
    assert list(out["prompts"][0]) == ["startTime", "endTime", "prompts", "color"]
    assert list(out["prompts"][1]) == ["startTime", "endTime", "prompts", "transitionSteps",
                                       "temporalInterpolationMethod"]
    assert list(out["settings"]) == ["pipelineId", "resolution", "seed", "denoisingSteps", "noiseScale", "manageCache"]
    assert list(out["settings"]["resolution"]) == ["height", "width"]


def test_export_writes_integral_numbers_as_integers_and_text_unescaped():
    t = Timeline((Segment(0.0, 2.0, (WeightedPrompt("café au lait", 100.0),)),), Settings())
    text = t.to_json()
    assert '"startTime": 0,' in text and '"endTime": 2,' in text and '"weight": 100' in text
    assert "café au lait" in text
    assert t.to_scope() == {"prompts": [{"startTime": 0, "endTime": 2, "prompts": [{"text": "café au lait", "weight": 100}]}],
                            "settings": {"pipelineId": "longlive"}, "version": "2.0"}


def test_resolution_needs_both_sizes_on_export():
    assert "resolution" not in Timeline((Segment(0, 1, (WeightedPrompt("x"),)),), Settings(width=832)).to_scope()["settings"]


def test_an_extra_key_cannot_overwrite_a_known_field():
    t = Timeline((Segment(1.0, 2.0, (WeightedPrompt("x"),), extra={"startTime": 99, "mine": 1}),),
                 extra={"version": "9.9"})
    out = t.to_scope()
    assert out["prompts"][0]["startTime"] == 1 and out["prompts"][0]["mine"] == 1 and out["version"] == "2.0"


def test_the_timeline_is_isolated_from_the_dicts_it_came_from_and_goes_to():
    d = synthetic()
    t = Timeline.from_scope(d)
    d["prompts"][0]["color"]["tags"].append("changed")
    d["longlive"]["recording"]["blocks"].clear()
    out = t.to_scope()
    out["settings"]["noiseScale"] = 0
    assert t == Timeline.from_scope(synthetic())
    assert t.settings.extra["noiseScale"] == 0.7


def test_notes_are_not_part_of_equality():
    with_version = Timeline.from_scope(scope())
    no_version = scope()
    del no_version["version"]
    without = Timeline.from_scope(no_version)
    assert without.notes == ("no version field; read as 2.0",) and with_version.notes == ()
    assert without == with_version


@hyp_settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_valid_timeline_round_trips(data):
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers(-2**60, 2**60) | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8)
    unknown = st.dictionaries(st.text(min_size=1, max_size=6).filter(
        lambda k: k not in {"startTime", "endTime", "prompts", "transitionSteps", "temporalInterpolationMethod",
                            "settings", "version", "exportedAt", "longlive"}), json_values, max_size=2)
    text = st.text(min_size=1, max_size=30).map(str.strip).filter(bool)
    weight = st.integers(0, 10**6) | st.floats(0, 1e6)
    t, segments = 0.0, []
    for _ in range(data.draw(st.integers(1, 5))):
        start = t + data.draw(st.floats(0, 10))
        end = start + data.draw(st.floats(0.01, 20))
        prompts = data.draw(st.lists(st.fixed_dictionaries({"text": text, "weight": weight}), min_size=1, max_size=3))
        prompts[0]["weight"] = data.draw(st.integers(1, 1000))
        s = {"startTime": start, "endTime": end, "prompts": prompts}
        if data.draw(st.booleans()):
            s |= {"transitionSteps": data.draw(st.integers(0, 64)),
                  "temporalInterpolationMethod": data.draw(st.sampled_from(["linear", "slerp"]))}
        segments.append(s | data.draw(unknown))
        t = end
    settings = data.draw(st.fixed_dictionaries({}, optional={
        "pipelineId": st.just("longlive"),
        "resolution": st.fixed_dictionaries({"height": st.integers(1, 4096), "width": st.integers(1, 4096)}),
        "seed": st.integers(0, 2**53 - 1),
        "denoisingSteps": st.lists(st.integers(1, 1000), min_size=1, max_size=4, unique=True).map(
            lambda v: sorted(v, reverse=True)),
        "noiseScale": st.floats(0, 1),
    }))
    d = {"prompts": segments, "settings": settings, "version": "2.0"}
    if data.draw(st.booleans()):
        d["longlive"] = data.draw(st.dictionaries(st.text(max_size=5), json_values, max_size=3))
    d |= data.draw(unknown)
    timeline = Timeline.from_scope(copy.deepcopy(d))
    assert timeline.to_scope() == d
    assert Timeline.from_json(timeline.to_json()) == timeline


# ---- import details --------------------------------------------------------------------------

def test_whole_numbers_may_be_written_with_a_point():
    d = scope()
    d["settings"] |= {"resolution": {"height": 480.0, "width": 832}, "seed": 42.0}
    s = Timeline.from_scope(d).settings
    assert (s.height, s.seed) == (480, 42) and isinstance(s.height, int) and isinstance(s.seed, int)


def test_segments_are_sorted_gaps_allowed_and_tiny_overlaps_tolerated():
    t = Timeline.from_scope(scope(seg(5, 8, "b"), seg(0, 3, "a"), seg(8 - 1e-7, 9, "c")))
    assert [s.prompts[0].text for s in t.segments] == ["a", "b", "c"]
    assert "segments were not in time order; sorted them by startTime" in t.notes


def test_texts_are_stripped_and_weight_defaults_to_100():
    t = Timeline.from_scope(scope({"startTime": 0, "endTime": 1, "prompts": [{"text": "  a fox \n"}]}))
    assert t.segments[0].prompts == (WeightedPrompt("a fox", 100.0),)


def test_unknown_prompt_item_fields_are_reported_and_dropped():
    t = Timeline.from_scope(scope(seg(0, 1), {"startTime": 1, "endTime": 2,
                                              "prompts": [{"text": "a", "weight": 1}, {"text": "b", "foo": 1}]}))
    assert t.notes == ("ignored unknown field prompts[1].prompts[1].foo",)
    assert t.to_scope()["prompts"][1]["prompts"] == [{"text": "a", "weight": 1}, {"text": "b", "weight": 100}]


def test_transition_defaults():
    only_steps, only_method = Timeline.from_scope(scope(
        seg(0, 1, transitionSteps=3), seg(1, 2, temporalInterpolationMethod="slerp"))).segments
    assert only_steps.transition == Transition(3, "linear")
    assert only_method.transition == Transition(0, "slerp")


def test_other_pipelines_are_noted():
    d = scope()
    d["settings"]["pipelineId"] = "streamdiffusionv2"
    assert Timeline.from_scope(d).notes == (
        "settings.pipelineId is 'streamdiffusionv2'; the prompts play on LongLive all the same",)


def test_main_prompt_is_the_heaviest_first_of_equals():
    s = Segment(0, 1, (WeightedPrompt("a", 10), WeightedPrompt("b", 60), WeightedPrompt("c", 60)))
    assert s.main_prompt() == WeightedPrompt("b", 60)


# ---- malformed input: one sentence naming the field --------------------------------------------

def edited(base, path, value):
    """A maker of `base()` with the value at `path` replaced by `value` (KeyError: removed)."""
    def make():
        d = base()
        target = d
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return d
    return make


def _with(path, value):
    return edited(lambda: scope(seg(0, 5, "a"), seg(5, 11.2, ("b", 50), ("c", 50)), seg(12, 20, "d")), path, value)


MALFORMED = [
    (lambda: [1, 2], "a timeline must be a JSON object, not a list"),
    (_with(["prompts"], KeyError), "prompts is missing: a timeline lists its segments under prompts"),
    (_with(["prompts"], "a fox"), "prompts must be a list of segments, not a string"),
    (_with(["prompts"], []), "prompts must list at least one segment"),
    (_with(["prompts", 1], 5), "prompts[1] must be an object, not a number"),
    (_with(["prompts", 0, "startTime"], "0"), "prompts[0].startTime must be a number, not a string"),
    (_with(["prompts", 0, "startTime"], False), "prompts[0].startTime must be a number, not a boolean"),
    (_with(["prompts", 0, "startTime"], float("nan")), "prompts[0].startTime must be a finite number, not nan"),
    (_with(["prompts", 0, "startTime"], -1), "prompts[0].startTime must not be negative, not -1.0"),
    (_with(["prompts", 0, "endTime"], KeyError), "prompts[0].endTime is missing"),
    (_with(["prompts", 0, "endTime"], 0), "prompts[0].endTime 0.0 must be after startTime 0.0"),
    (_with(["prompts", 1, "prompts"], []), "prompts[1].prompts must list at least one prompt"),
    (_with(["prompts", 1, "prompts", 0], "b"), "prompts[1].prompts[0] must be an object with text and weight, not a string"),
    (_with(["prompts", 1, "prompts", 0, "weight"], "50"), "prompts[1].prompts[0].weight must be a number, not a string"),
    (_with(["prompts", 1, "prompts", 1, "weight"], -1), "prompts[1].prompts[1].weight must not be negative, not -1.0"),
    (_with(["prompts", 1, "prompts"], [{"text": "b", "weight": 0}, {"text": "c", "weight": 0.0}]),
     "prompts[1].prompts: the weights add up to 0; give at least one prompt a weight above 0"),
    (_with(["prompts", 2, "prompts", 0, "text"], "   "), "prompts[2].prompts[0].text is empty"),
    (_with(["prompts", 2, "prompts", 0, "text"], None), "prompts[2].prompts[0].text must be a string, not null"),
    (_with(["prompts", 2, "prompts", 0, "text"], "x" * (MAX_TEXT_CHARS + 1)),
     "prompts[2].prompts[0].text has 10001 characters; at most 10000 are allowed"),
    (_with(["prompts", 2, "transitionSteps"], 2.5), "prompts[2].transitionSteps must be a whole number, not 2.5"),
    (_with(["prompts", 2, "temporalInterpolationMethod"], "cubic"),
     'prompts[2].temporalInterpolationMethod must be "linear" or "slerp", not "cubic"'),
    (_with(["prompts", 2, "startTime"], 10.0), "prompts[2].startTime 10.0 is before the end of prompts[1] (11.2)"),
    (_with(["settings"], []), "settings must be an object, not a list"),
    (_with(["settings", "pipelineId"], 3), "settings.pipelineId must be a string, not a number"),
    (_with(["settings", "seed"], 2**53), "settings.seed must be between 0 and 9007199254740991, not 9007199254740992"),
    (_with(["settings", "seed"], -1), "settings.seed must be between 0 and 9007199254740991, not -1"),
    (_with(["settings", "resolution"], "480p"), "settings.resolution must be an object with height and width, not a string"),
    (_with(["settings", "resolution"], {"height": 480}), "settings.resolution.width is missing"),
    (_with(["settings", "resolution"], {"height": 480, "width": 0}), "settings.resolution.width must be at least 1, not 0"),
    (_with(["settings", "resolution"], {"height": 480, "width": 13.5}),
     "settings.resolution.width must be a whole number, not 13.5"),
    (_with(["settings", "denoisingSteps"], [1000, 750, 750]),
     "settings.denoisingSteps must be strictly decreasing, but [2] = 750 follows 750"),
    (_with(["settings", "denoisingSteps"], [1001]), "settings.denoisingSteps[0] must be between 1 and 1000, not 1001"),
    (_with(["settings", "denoisingSteps"], []),
     "settings.denoisingSteps must be a non-empty list of whole numbers, not an empty list"),
    (_with(["version"], "3.0"), "version 3.0 is not supported; this reads Scope timelines of version 2.x"),
    (_with(["version"], 2), 'version must be a string such as "2.0", not a number'),
    (_with(["exportedAt"], 5), "exportedAt must be a string, not a number"),
    (_with(["longlive"], [1]), "longlive must be an object"),
    (_with(["prompts", 0, "mine"], {"x": float("inf")}), "prompts[0].mine.x must be a finite number, not inf"),
    (_with(["odd"], (1, 2)), "odd must be a JSON value, not a tuple"),
]


@pytest.mark.parametrize("make, message", MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_input_names_the_field(make, message):
    assert errors(make()) == message


def test_the_error_is_a_user_error_and_a_value_error():
    assert issubclass(TimelineError, UserError) and issubclass(TimelineError, ValueError)


def test_deep_nesting_in_a_kept_field_is_refused():
    deep: list = []
    for _ in range(150):
        deep = [deep]
    assert errors(scope(seg(0, 1, mine=deep))) == "prompts[0].mine" + "[0]" * 101 + " is nested more than 100 levels deep"


# ---- JSON text and files ---------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ('{"prompts": [{"startTime": NaN}]}', "the timeline holds NaN, which JSON does not allow; write a number"),
    ('{"prompts": -Infinity}', "the timeline holds -Infinity, which JSON does not allow; write a number"),
    ('{\n  "prompts": [,]\n}', "the timeline is not valid JSON: Expecting value at line 2 column 15"),
    ("[" * 100_000, "the timeline is nested too deeply to be a timeline"),
    ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "the timeline is nested too deeply to be a timeline"),
    (b'{"prompts": "\xff"}', "the timeline is not UTF-8 text (byte 13)"),
    ('{"prompts": 5}', "prompts must be a list of segments, not a number"),
])
def test_from_json_errors(text, message):
    with pytest.raises(TimelineError) as info:
        Timeline.from_json(text)
    assert str(info.value) == message


def test_from_json_reads_bytes_with_or_without_a_bom():
    text = json.dumps(synthetic())
    expected = Timeline.from_scope(synthetic())
    assert Timeline.from_json(text.encode()) == expected
    assert Timeline.from_json(b"\xef\xbb\xbf" + text.encode()) == expected


def test_from_json_counts_utf8_bytes_against_the_limit(monkeypatch):
    text = json.dumps(scope(seg(0, 1, "é" * 20)), ensure_ascii=False)      # 20 characters more as bytes
    monkeypatch.setattr(tl_module, "MAX_FILE_BYTES", len(text) + 20)
    assert Timeline.from_json(text).segments[0].prompts[0].text == "é" * 20
    monkeypatch.setattr(tl_module, "MAX_FILE_BYTES", len(text) + 19)
    for given_ in (text, text.encode()):
        with pytest.raises(TimelineError, match="^the timeline is larger than 0 MiB$"):
            Timeline.from_json(given_)


def test_the_real_limit_is_16_mib():
    assert tl_module.MAX_FILE_BYTES == 16 * 1024 * 1024
    with pytest.raises(TimelineError, match="^the timeline is larger than 16 MiB$"):
        Timeline.from_json(" " * (16 * 1024 * 1024 + 1))


def test_load_errors_name_the_file(tmp_path, monkeypatch):
    missing = tmp_path / "nope.json"
    with pytest.raises(TimelineError, match=f"^timeline file {missing} does not exist$"):
        Timeline.load(missing)
    with pytest.raises(TimelineError, match=f"^timeline file {tmp_path} is a folder, not a file$"):
        Timeline.load(tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "prompts": [\n    {"startTime": 0,}\n  ]\n}\n')
    with pytest.raises(TimelineError) as info:
        Timeline.load(broken)
    assert str(info.value) == (f"timeline file {broken} is not valid JSON: "
                               "Expecting property name enclosed in double quotes at line 3 column 21")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(scope(seg(0, 1, ("a", "heavy")))))
    with pytest.raises(TimelineError) as info:
        Timeline.load(wrong)
    assert str(info.value) == f"{wrong}: prompts[0].prompts[0].weight must be a number, not a string"
    big = tmp_path / "big.json"
    big.write_text(json.dumps(scope()) + " " * 200)
    monkeypatch.setattr(tl_module, "MAX_FILE_BYTES", 150)
    with pytest.raises(TimelineError, match=f"^timeline file {big} is larger than 0 MiB$"):
        Timeline.load(big)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_save_is_atomic_with_the_usual_permissions(tmp_path, umask, mode):
    target = tmp_path / "t.json"
    target.write_text("old")
    old = os.umask(umask)
    try:
        assert Timeline.from_scope(synthetic()).save(target) == target
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert json.loads(target.read_text()) == synthetic()
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_a_failed_save_keeps_the_old_file_and_leaves_nothing_behind(tmp_path, monkeypatch):
    target = tmp_path / "t.json"
    target.write_text("old")

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tl_module.os, "replace", refuse)
    with pytest.raises(TimelineError, match=f"^cannot write timeline file {target}: Permission denied$"):
        Timeline.from_scope(scope()).save(target)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_save_escapes_a_lone_surrogate_it_cannot_write_as_utf8(tmp_path):
    t = Timeline.from_json('{"prompts": [{"startTime": 0, "endTime": 1, "prompts": [{"text": "a \\ud83d fox"}]}]}')
    assert t.segments[0].prompts[0].text == "a \ud83d fox"
    path = t.save(tmp_path / "t.json")
    assert "\\ud83d" in path.read_text() and Timeline.load(path) == t


def test_save_into_a_missing_folder_names_the_path(tmp_path):
    target = tmp_path / "no" / "t.json"
    with pytest.raises(TimelineError, match=f"^cannot write timeline file {target}: No such file or directory$"):
        Timeline.from_scope(scope()).save(target)


# ---- playing -------------------------------------------------------------------------------

def test_segment_at_and_duration():
    t = Timeline.from_scope(scope(seg(1, 2, "a"), seg(3, 5, "b"), seg(5, 8, "c")))
    a, b, c = t.segments
    assert t.duration == 8.0
    assert [t.segment_at(x) for x in (0, 1, 1.99, 2, 2.5, 3, 4.999, 5, 7.99)] == [a, a, a, a, a, b, b, c, c]
    assert t.segment_at(8) is None and t.segment_at(100) is None
    empty = Timeline(())
    assert empty.duration == 0.0 and empty.segment_at(0) is None
    with pytest.raises(ValueError):
        t.segment_at(float("nan"))


def test_block_clock_for_longlive():
    clock = BlockClock(16)
    assert [clock.frames_in(b) for b in (0, 1, 2, 7)] == [9, 12, 12, 12]
    assert [clock.start_frame(b) for b in range(5)] == [0, 9, 21, 33, 45]
    assert [clock.start_time(b) for b in range(3)] == [0.0, 0.5625, 1.3125]
    assert [clock.block_at(s) for s in (-1, 0, 1e-10, 0.01, 0.5, 0.5625, 0.5625 + 1e-12, 0.6, 1.3125, 2.0)] == \
        [0, 0, 0, 1, 1, 1, 1, 2, 2, 3]
    assert [clock.frames_for(s) for s in (0, 0.01, 0.5, 1.0, 1.03)] == [1, 1, 8, 16, 16]
    assert [clock.blocks_for(s) for s in (0, 0.5, 0.5625, 0.6, 1.0, 1.3125, 1.33, 1.35)] == [1, 1, 1, 2, 2, 2, 2, 3]


def test_block_clock_other_sizes():
    one = BlockClock(24, latent_frames_per_block=1)
    assert [one.start_frame(b) for b in range(4)] == [0, 1, 5, 9]
    assert one.block_at(2 / 24) == 2 and one.blocks_for(10 / 24) == 4
    two = BlockClock(10.0, 2)
    assert [two.start_frame(b) for b in range(4)] == [0, 5, 13, 21]
    assert two.block_at(1.3) == 2 and two.block_at(1.31) == 3


@pytest.mark.parametrize("args", [(0,), (-16,), (float("nan"),), (float("inf"),), (True,), (16, 0), (16, 2.0)])
def test_block_clock_validates(args):
    with pytest.raises(ValueError):
        BlockClock(*args)


def test_block_clock_refuses_bad_arguments():
    clock = BlockClock(16)
    for call in (lambda: clock.start_frame(-1), lambda: clock.frames_in(1.5), lambda: clock.block_at(float("inf")),
                 lambda: clock.frames_for(-0.5)):
        with pytest.raises(ValueError):
            call()


def test_schedule_keeps_the_later_of_segments_on_one_block():
    t = Timeline.from_scope(scope(seg(0, 0.5, "a"), seg(0.5, 0.55, "b"), seg(0.55, 2, "c"), seg(2, 3, "d")))
    a, _, c, d = t.segments
    assert t.schedule(BlockClock(16)) == [(0, a), (1, c), (3, d)]


def test_segments_play_their_blends_and_transitions():
    t = Timeline.from_scope(scope(seg(0, 1, ("a", 1), ("b", 3)), seg(1, 2, "c", transitionSteps=4,
                                                                      temporalInterpolationMethod="slerp"),
                                  seg(2, 3, ("d", 100), ("e", 0), transitionSteps=1), seg(3, 4, transitionSteps=0)))
    assert [s.blend() for s in t.segments] == [Blend.of([("a", 1), ("b", 3)]), "c", "d", "a fox"]
    assert t.segments[0].blend().parts == (("a", 0.25), ("b", 0.75))
    assert [s.transition_spec() for s in t.segments] == [None, TransitionSpec(4, "slerp"), None, None]  # 0, 1: cuts
