"""Scope workflows (`*.scope-workflow.json`, "format": "scope-workflow"): the only form Scope
exports timelines in since March 2026. Their timeline imports to the same segments as the
equivalent v2.0 file, every malformed field is one sentence naming its path, the settings
LongLive does not use are named in one note, and what this project writes is stamped exportedAt.

The shape is Scope's own (daydreamlive/scope, frontend/src/lib/workflowApi.ts and
workflowSettings.ts `buildScopeWorkflow`: format, format_version "1.0", metadata {name,
created_at, scope_version}, pipelines [{pipeline_id, pipeline_version, source, loras, params,
role}], timeline {entries [{start_time, end_time, prompts [{text, weight}], transition_steps?,
temporal_interpolation_method?}]}, and the prompt box's prompts, interpolation_method,
transition_steps, temporal_interpolation_method).
"""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from studio.lineage import Lineage
from studio.sidecar import MadeBlock, SidecarBuilder, Source
from studio.timeline import Settings, Timeline, TimelineError, Transition, WeightedPrompt, utc_now

EXAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "examples" / "scope-timelines"
EXAMPLE_FILES = sorted(EXAMPLES.glob("timeline-*.json"))

# A LongLive export from Scope's perform mode, as buildScopeWorkflow writes it (key order included).
WORKFLOW = {
    "format": "scope-workflow",
    "format_version": "1.0",
    "metadata": {"name": "Lighthouse", "created_at": "2026-04-02T18:22:41.907Z", "scope_version": "0.2.4"},
    "pipelines": [
        {"pipeline_id": "longlive", "pipeline_version": "1.0.0", "source": {"type": "builtin"}, "loras": [],
         "params": {"height": 480, "width": 832, "quantization": None, "denoising_step_list": [1000, 750],
                    "noise_scale": 0.7, "noise_controller": True, "manage_cache": True,
                    "kv_cache_attention_bias": 0.3, "input_mode": "text", "base_seed": 42},
         "role": "main"},
    ],
    "timeline": {"entries": [
        {"start_time": 0, "end_time": 4.5, "prompts": [{"text": "a red fox", "weight": 70},
                                                      {"text": "a snowy field", "weight": 30}]},
        {"start_time": 4.5, "end_time": 10.25, "prompts": [{"text": "a lighthouse in a storm", "weight": 100}],
         "transition_steps": 4, "temporal_interpolation_method": "slerp"},
        {"start_time": 10.25, "end_time": 16, "prompts": [{"text": "the storm clears at dawn", "weight": 100}],
         "transition_steps": 0, "temporal_interpolation_method": "linear"},
    ]},
    "prompts": [{"text": "a red fox", "weight": 70}, {"text": "a snowy field", "weight": 30}],
    "interpolation_method": "linear",
    "transition_steps": 4,
    "temporal_interpolation_method": "slerp",
}

# The same timeline as Scope v2.0 wrote it before March 2026.
V2 = {
    "prompts": [
        {"startTime": 0, "endTime": 4.5, "prompts": [{"text": "a red fox", "weight": 70},
                                                    {"text": "a snowy field", "weight": 30}]},
        {"startTime": 4.5, "endTime": 10.25, "prompts": [{"text": "a lighthouse in a storm", "weight": 100}],
         "transitionSteps": 4, "temporalInterpolationMethod": "slerp"},
        {"startTime": 10.25, "endTime": 16, "prompts": [{"text": "the storm clears at dawn", "weight": 100}],
         "transitionSteps": 0, "temporalInterpolationMethod": "linear"},
    ],
    "settings": {"pipelineId": "longlive", "resolution": {"height": 480, "width": 832}, "seed": 42,
                 "denoisingSteps": [1000, 750], "noiseScale": 0.7, "noiseController": True, "manageCache": True},
    "version": "2.0",
    "exportedAt": "2026-04-02T18:22:41.907Z",
}

KEPT_NOTE = ("kept settings quantization, noise_scale, noise_controller, manage_cache, kv_cache_attention_bias, "
             "input_mode as they are; LongLive does not use them")

# v2.0 settings -> a workflow's main-pipeline params (Scope's PARAM_MAPPINGS, and base_seed for the seed)
_PARAM = {"denoisingSteps": "denoising_step_list", "noiseScale": "noise_scale", "noiseController": "noise_controller",
          "manageCache": "manage_cache", "seed": "base_seed"}


def workflow_of(v2: dict) -> dict:
    """A v2.0 timeline as Scope's workflow export writes the same timeline and settings."""
    settings = v2.get("settings", {})
    params = dict(settings.get("resolution", {}))
    params |= {_PARAM[k]: v for k, v in settings.items() if k in _PARAM}
    entries = []
    for s in v2["prompts"]:
        e = {"start_time": s["startTime"], "end_time": s["endTime"], "prompts": s["prompts"]}
        if "transitionSteps" in s:
            e["transition_steps"] = s["transitionSteps"]
        if "temporalInterpolationMethod" in s:
            e["temporal_interpolation_method"] = s["temporalInterpolationMethod"]
        entries.append(e)
    return {"format": "scope-workflow", "format_version": "1.0",
            "metadata": {"name": "example", "created_at": v2.get("exportedAt", "2026-03-06T09:00:00.000Z"),
                         "scope_version": "0.2.4"},
            "pipelines": [{"pipeline_id": settings.get("pipelineId", "longlive"), "pipeline_version": "1.0.0",
                           "source": {"type": "builtin"}, "loras": [], "params": params, "role": "main"}],
            "timeline": {"entries": entries},
            "prompts": entries[0]["prompts"], "interpolation_method": "linear", "transition_steps": 4,
            "temporal_interpolation_method": "slerp"}


def errors(obj) -> str:
    with pytest.raises(TimelineError) as info:
        Timeline.from_scope(obj)
    return str(info.value)


# ---- the same segments as v2.0 ---------------------------------------------------------------

def test_a_workflow_imports_to_the_segments_and_settings_of_its_v2_twin():
    w, v = Timeline.from_scope(copy.deepcopy(WORKFLOW)), Timeline.from_scope(copy.deepcopy(V2))
    assert w.segments == v.segments
    assert w.segments[0].prompts == (WeightedPrompt("a red fox", 70.0), WeightedPrompt("a snowy field", 30.0))
    assert [s.transition for s in w.segments] == [None, Transition(4, "slerp"), Transition(0, "linear")]
    assert [(s.start, s.end) for s in w.segments] == [(0, 4.5), (4.5, 10.25), (10.25, 16)]
    s = w.settings
    assert (s.pipeline, s.width, s.height, s.seed, s.denoising_steps) == ("longlive", 832, 480, 42, (1000, 750))
    assert s.extra == {"quantization": None, "noise_scale": 0.7, "noise_controller": True, "manage_cache": True,
                       "kv_cache_attention_bias": 0.3, "input_mode": "text"}
    assert w.exported_at == v.exported_at == "2026-04-02T18:22:41.907Z"
    assert w.notes == (KEPT_NOTE,)
    assert w.duration == v.duration == 16


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_scope_examples_as_workflows_import_the_same(path):
    v2 = json.loads(path.read_text())
    w, v = Timeline.from_scope(workflow_of(v2)), Timeline.from_scope(v2)
    assert w.segments == v.segments and len(w.segments) == 3
    assert (w.settings.pipeline, w.settings.width, w.settings.height, w.settings.seed, w.settings.denoising_steps) == \
        (v.settings.pipeline, v.settings.width, v.settings.height, v.settings.seed, v.settings.denoising_steps)
    assert w.exported_at == v.exported_at


def test_a_workflow_file_loads_and_exports_as_v2(tmp_path):
    path = tmp_path / "Lighthouse.scope-workflow.json"
    path.write_text(json.dumps(WORKFLOW, indent=2))
    t = Timeline.load(path)
    assert t == Timeline.from_json(json.dumps(WORKFLOW)) and t.segments == Timeline.from_scope(V2).segments
    out = t.to_scope()
    assert out["prompts"] == V2["prompts"] and out["version"] == "2.0" and out["exportedAt"] == V2["exportedAt"]
    assert Timeline.from_scope(out) == t                                    # its v2.0 export reads back the same


def test_null_transition_fields_are_absent_and_weight_defaults_to_scopes_1():
    d = copy.deepcopy(WORKFLOW)
    d["timeline"]["entries"][1] |= {"transition_steps": None, "temporal_interpolation_method": None}
    d["timeline"]["entries"][2] = {"start_time": 10.25, "end_time": 16, "prompts": [{"text": "dawn"}],
                                   "temporal_interpolation_method": "slerp"}
    t = Timeline.from_scope(d)
    assert t.segments[1].transition is None
    assert t.segments[2].transition == Transition(0, "slerp")
    assert t.segments[2].prompts == (WeightedPrompt("dawn", 1.0),)


def test_unknown_fields_are_kept_or_dropped_as_in_v2_and_noted():
    d = copy.deepcopy(WORKFLOW)
    d["timeline"]["entries"][0]["color"] = "#ff0000"
    d["timeline"]["entries"][1]["prompts"][0]["locked"] = True
    d["timeline"]["zoom"] = 2
    d["metadata"]["author"] = "me"
    d["pipelines"][0]["cache"] = {}
    d["app"] = "scope-next"
    t = Timeline.from_scope(d)
    assert t.segments[0].extra == {"color": "#ff0000"} and t.extra == {"app": "scope-next"}
    assert t.to_scope()["prompts"][1]["prompts"] == [{"text": "a lighthouse in a storm", "weight": 100}]
    assert t.notes == ("kept unknown field timeline.entries[0].color",
                       "ignored unknown field timeline.entries[1].prompts[0].locked",
                       "ignored unknown field timeline.zoom", "ignored unknown field metadata.author",
                       "ignored unknown field pipelines[0].cache", KEPT_NOTE, "kept unknown field app")


def test_entries_are_sorted_and_the_main_pipeline_is_picked_as_scope_picks_it():
    d = copy.deepcopy(WORKFLOW)
    d["timeline"]["entries"].reverse()
    pre = {"pipeline_id": "video-depth-anything", "source": {"type": "builtin"}, "loras": [], "params": {},
           "role": "preprocessor"}
    d["pipelines"].insert(0, pre)
    t = Timeline.from_scope(d)
    assert t.segments == Timeline.from_scope(V2).segments
    assert "segments were not in time order; sorted them by start_time" in t.notes
    assert t.settings.pipeline == "longlive" and t.settings.seed == 42          # role "main", not the first
    d["pipelines"] = [{k: v for k, v in p.items() if k != "role"} for p in d["pipelines"]]
    assert Timeline.from_scope(d).settings.pipeline == "video-depth-anything"  # no roles: the first


# ---- settings LongLive does not use: one note --------------------------------------------------

def test_settings_of_another_pipeline_are_named_in_one_note():
    d = copy.deepcopy(WORKFLOW)
    main = d["pipelines"][0]
    main["pipeline_id"] = "streamdiffusionv2"
    main["loras"] = [{"id": "lora-0", "filename": "ink.safetensors", "weight": 1.5, "merge_mode": "permanent_merge"}]
    d["pipelines"].append({"pipeline_id": "rife", "pipeline_version": "1.0.0", "source": {"type": "builtin"},
                           "loras": [], "params": {"multiplier": 2}, "role": "postprocessor"})
    d["graph"] = {"nodes": [{"id": "longlive", "type": "pipeline"}], "edges": []}
    d["nodes"] = [{"node_type_id": "scheduler", "source": {"type": "builtin"}}]
    t = Timeline.from_scope(d)
    assert t.notes == ("pipelines[0].pipeline_id is 'streamdiffusionv2'; the prompts play on LongLive all the same; "
                       + KEPT_NOTE + "; ignored pipelines[0].loras, pipelines[1] (rife), graph, nodes; "
                       "LongLive plays the timeline without them",)
    assert sum("streamdiffusionv2" in n or "rife" in n or "noise_scale" in n for n in t.notes) == 1
    assert t.segments == Timeline.from_scope(V2).segments and t.settings.pipeline == "streamdiffusionv2"


def test_v2_settings_of_another_pipeline_are_named_in_one_note_too():
    d = copy.deepcopy(V2)
    d["settings"]["pipelineId"] = "krea-realtime-video"
    assert Timeline.from_scope(d).notes == (
        "settings.pipelineId is 'krea-realtime-video'; the prompts play on LongLive all the same; "
        "kept settings noiseScale, noiseController, manageCache as they are; LongLive does not use them",)


def test_a_workflow_with_only_what_longlive_uses_has_no_note():
    d = copy.deepcopy(WORKFLOW)
    d["pipelines"][0]["params"] = {"height": 480, "width": 832, "base_seed": 42, "denoising_step_list": [1000, 750]}
    assert Timeline.from_scope(d).notes == ()
    del d["pipelines"]
    t = Timeline.from_scope(d)
    assert t.notes == () and t.settings == Settings(pipeline=None)


# ---- malformed: one sentence naming the field ----------------------------------------------------

def _with(path, value):
    from test_timeline import edited
    return edited(lambda: copy.deepcopy(WORKFLOW), path, value)


E = ["timeline", "entries"]
MALFORMED = [
    (_with(["timeline"], KeyError), "this Scope workflow has no timeline (timeline is missing or null); "
                                    "export it from Scope with prompts on its timeline"),
    (_with(["timeline"], None), "this Scope workflow has no timeline (timeline is missing or null); "
                                "export it from Scope with prompts on its timeline"),
    (_with(["timeline"], []), "timeline must be an object with entries, not a list"),
    (_with(E, KeyError), "timeline.entries is missing: a workflow's timeline lists its segments under entries"),
    (_with(E, {}), "timeline.entries must be a list of segments, not an object"),
    (_with(E, []), "timeline.entries must list at least one segment"),
    (_with(E + [1], "a fox"), "timeline.entries[1] must be an object, not a string"),
    (_with(E + [2, "start_time"], KeyError), "timeline.entries[2].start_time is missing"),
    (_with(E + [2, "start_time"], "10"), "timeline.entries[2].start_time must be a number, not a string"),
    (_with(E + [2, "start_time"], None), "timeline.entries[2].start_time must be a number, not null"),
    (_with(E + [2, "start_time"], -1), "timeline.entries[2].start_time must not be negative, not -1.0"),
    (_with(E + [2, "start_time"], 9.0), "timeline.entries[2].start_time 9.0 is before the end of "
                                        "timeline.entries[1] (10.25)"),
    (_with(E + [0, "end_time"], KeyError), "timeline.entries[0].end_time is missing"),
    (_with(E + [0, "end_time"], float("inf")), "timeline.entries[0].end_time must be a finite number, not inf"),
    (_with(E + [0, "end_time"], 0), "timeline.entries[0].end_time 0.0 must be after start_time 0.0"),
    (_with(E + [0, "prompts"], KeyError), "timeline.entries[0].prompts is missing"),
    (_with(E + [0, "prompts"], []), "timeline.entries[0].prompts must list at least one prompt"),
    (_with(E + [0, "prompts"], "a fox"), "timeline.entries[0].prompts must be a list, not a string"),
    (_with(E + [0, "prompts", 1], "a snowy field"),
     "timeline.entries[0].prompts[1] must be an object with text and weight, not a string"),
    (_with(E + [0, "prompts", 1, "text"], KeyError), "timeline.entries[0].prompts[1].text is missing"),
    (_with(E + [0, "prompts", 1, "text"], " "), "timeline.entries[0].prompts[1].text is empty"),
    (_with(E + [0, "prompts", 1, "weight"], "30"),
     "timeline.entries[0].prompts[1].weight must be a number, not a string"),
    (_with(E + [0, "prompts", 1, "weight"], -30),
     "timeline.entries[0].prompts[1].weight must not be negative, not -30.0"),
    (_with(E + [1, "prompts", 0, "weight"], 0),
     "timeline.entries[1].prompts: the weights add up to 0; give at least one prompt a weight above 0"),
    (_with(E + [1, "transition_steps"], 2.5), "timeline.entries[1].transition_steps must be a whole number, not 2.5"),
    (_with(E + [1, "transition_steps"], -1), "timeline.entries[1].transition_steps must be at least 0, not -1"),
    (_with(E + [1, "temporal_interpolation_method"], "cubic"),
     'timeline.entries[1].temporal_interpolation_method must be "linear" or "slerp", not "cubic"'),
    (_with(E + [1, "temporal_interpolation_method"], 1),
     'timeline.entries[1].temporal_interpolation_method must be "linear" or "slerp", not a number'),
    (_with(E + [0, "mine"], {"x": float("nan")}), "timeline.entries[0].mine.x must be a finite number, not nan"),
    (_with(["format_version"], 1), 'format_version must be a string such as "1.0", not a number'),
    (_with(["format_version"], "2.0"), "format_version 2.0 is not supported; "
                                       "this reads Scope workflows of format_version 1.x"),
    (_with(["metadata"], "Lighthouse"), "metadata must be an object, not a string"),
    (_with(["metadata", "created_at"], 1775154161), "metadata.created_at must be a string, not a number"),
    (_with(["pipelines"], {}), "pipelines must be a list of pipelines, not an object"),
    (_with(["pipelines", 0], "longlive"), "pipelines[0] must be an object, not a string"),
    (_with(["pipelines", 0, "pipeline_id"], KeyError), "pipelines[0].pipeline_id is missing"),
    (_with(["pipelines", 0, "pipeline_id"], None), "pipelines[0].pipeline_id must be a string, not null"),
    (_with(["pipelines", 0, "params"], []), "pipelines[0].params must be an object, not a list"),
    (_with(["pipelines", 0, "params", "width"], KeyError),
     "pipelines[0].params.width is missing; a frame size needs both height and width"),
    (_with(["pipelines", 0, "params", "height"], 480.5),
     "pipelines[0].params.height must be a whole number, not 480.5"),
    (_with(["pipelines", 0, "params", "base_seed"], -1),
     "pipelines[0].params.base_seed must be between 0 and 9007199254740991, not -1"),
    (_with(["pipelines", 0, "params", "denoising_step_list"], [750, 1000]),
     "pipelines[0].params.denoising_step_list must be strictly decreasing, but [1] = 1000 follows 750"),
    (_with(["pipelines", 0, "params", "denoising_step_list"], []),
     "pipelines[0].params.denoising_step_list must be a non-empty list of whole numbers, not an empty list"),
]


@pytest.mark.parametrize("make, message", MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_workflow_is_one_sentence_naming_the_field(make, message):
    said = errors(make())
    assert said == message
    assert "\n" not in said and said.count(". ") == 0


def test_a_broken_workflow_file_names_the_file_and_the_field(tmp_path):
    d = _with(E + [2, "start_time"], "soon")()
    path = tmp_path / "show.scope-workflow.json"
    path.write_text(json.dumps(d))
    with pytest.raises(TimelineError) as info:
        Timeline.load(path)
    assert str(info.value) == f"{path}: timeline.entries[2].start_time must be a number, not a string"


def test_another_format_is_refused_by_name():
    assert errors({"format": "comfyui-workflow", "nodes": []}) == (
        'format "comfyui-workflow" is not supported; this reads Scope timelines (version 2.x) '
        'and Scope workflows ("format": "scope-workflow")')


def test_a_missing_format_version_is_noted():
    d = copy.deepcopy(WORKFLOW)
    del d["format_version"]
    assert Timeline.from_scope(d).notes == ("no format_version field; read as 1.0", KEPT_NOTE)


# ---- exportedAt: what this project writes is stamped as Scope stamps its exports ---------------------

SCOPE_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")   # "2025-10-27T15:51:04.242Z"


def test_utc_now_is_written_as_scope_writes_exported_at():
    stamp = utc_now()
    assert SCOPE_STAMP.match(stamp), stamp
    assert all(SCOPE_STAMP.match(json.loads(p.read_text())["exportedAt"]) for p in EXAMPLE_FILES)
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert when.tzinfo is not None and when.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - when) < timedelta(minutes=1)


def test_a_sidecar_is_stamped_exported_at(tmp_path):
    src = Source("tiny", "embedded", 16.0, 3, 64, 48, (1000, 750), 4)
    builder = SidecarBuilder(src)
    lineage = Lineage("a lantern in fog", 4)
    for block in range(2):
        frames = np.zeros((9 if block == 0 else 12, 2, 2, 3), np.uint8)
        builder.add(MadeBlock(frames, block, "a lantern in fog", lineage))
    written = json.loads(builder.timeline().save(tmp_path / "x.timeline.json").read_text())
    when = datetime.fromisoformat(written["exportedAt"].replace("Z", "+00:00"))
    assert SCOPE_STAMP.match(written["exportedAt"]) and abs(datetime.now(timezone.utc) - when) < timedelta(minutes=1)
    assert list(written) == ["prompts", "settings", "version", "exportedAt", "longlive"]
    assert Timeline.load(tmp_path / "x.timeline.json").exported_at == written["exportedAt"]
    assert builder.timeline(exported_at="2026-01-02T03:04:05.006Z").exported_at == "2026-01-02T03:04:05.006Z"


# ---- where a timeline enters: the notes reach the user ---------------------------------------------

def test_interactive_timeline_reads_a_workflow_and_says_its_note_once(tmp_path, capsys, monkeypatch):
    from longlive import cli

    monkeypatch.setenv("LONGLIVE_WEIGHTS", "")
    (tmp_path / "afile").write_text("")               # stops the command after the timeline, before the model
    path = tmp_path / "Lighthouse.scope-workflow.json"
    path.write_text(json.dumps(WORKFLOW))
    assert cli.main(["interactive", "--timeline", str(path), "--output-dir", str(tmp_path / "afile")]) == 2
    out = capsys.readouterr().out
    assert out.count(KEPT_NOTE) == 1 and f"Lighthouse.scope-workflow.json: {KEPT_NOTE}" in out
    assert "1 segment blends several prompts" in out                    # the fox and the field
    path.write_text(json.dumps(_with(E + [0, "end_time"], "later")()))
    assert cli.main(["interactive", "--timeline", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("timeline.entries[0].end_time must be a number, not a string") and "\n" not in err, err
