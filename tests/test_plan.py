"""`longlive plan`: a story -> a validated timeline through a tool call; bad answers retried, then one error.

The model is the fake Messages API on 127.0.0.1 (tests/messages_api.py), reached through the
real Anthropic SDK; no network, no real key.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from messages_api import FakeMessagesAPI
from studio.enhancer import EnhancerConfig, PromptEnhancer
from studio.plan import TOOL, PlanError, PlannerConfig, check_plan, plan
from studio.timeline import Timeline

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-ant-test-PLANSECRET42"


def good(n: int = 3, seconds: float = 30.0) -> dict:
    step = seconds / n
    return {"anchors": {"subject": "a red paper kite with a long blue tail", "setting": "a windy beach at noon"},
            "segments": [{"start": i * step, "end": (i + 1) * step, "prompt": f"the red kite, shot {i}"}
                         for i in range(n)]}


def test_check_plan_turns_a_good_answer_into_a_timeline():
    t = check_plan(good(), 30.0, 3, 2.0, seed=9)
    assert [(s.start, s.end, s.main_prompt().text) for s in t.segments] == [
        (0.0, 10.0, "the red kite, shot 0"), (10.0, 20.0, "the red kite, shot 1"), (20.0, 30.0, "the red kite, shot 2")]
    assert t.settings.seed == 9 and t.longlive["plan"]["anchors"]["setting"] == "a windy beach at noon"
    assert Timeline.from_scope(t.to_scope()) == t


@pytest.mark.parametrize("change, says", [
    (lambda a: a["segments"].pop(), "write exactly 3 segments, not 2"),
    (lambda a: a["segments"][1].update(start=11.0), "segments[1] starts at 11 s; it must start where the one before ends (10 s)"),
    (lambda a: a["segments"][2].update(end=25.0), "the segments end at 25 s; they must cover the whole 30 s"),
    (lambda a: a["segments"][0].update(prompt="  "), "segments[0].prompt must be a non-empty string"),
    (lambda a: a["segments"][0].update(end=1.0), "segments[0] lasts 1 s; each segment needs at least 2 s"),
    (lambda a: a["segments"][0].update(start="0"), "segments[0].start and .end must be numbers of seconds"),
    (lambda a: a.pop("segments"), "the answer must be an object with a list \"segments\""),
])
def test_check_plan_says_what_is_wrong(change, says):
    answer = good()
    change(answer)
    with pytest.raises(ValueError) as e:
        check_plan(answer, 30.0, 3, 2.0, None)
    assert str(e.value) == says


def enhancer_for(api: FakeMessagesAPI, monkeypatch) -> PromptEnhancer:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
    return PromptEnhancer(EnhancerConfig.load(), api_key=KEY)


def test_plan_asks_through_the_tool_and_retries_a_bad_answer_with_the_reason(monkeypatch):
    with FakeMessagesAPI() as api:
        bad = good()
        bad["segments"].pop()
        api.answer_tool(TOOL, bad)
        api.answer_tool(TOOL, good())
        t = plan("a kite's day at the beach", 30.0, 3, enhancer_for(api, monkeypatch), PlannerConfig.load())
        assert len(t.segments) == 3 and t.duration == 30.0
        first, second = (r["json"] for r in api.messages_requests())
        assert first["tools"][0]["name"] == TOOL and "tool_choice" not in first     # offered, not forced
        assert first["tools"][0]["input_schema"]["properties"]["segments"]["minItems"] == 3
        assert "a kite's day at the beach" in first["messages"][0]["content"]
        # the retry carries the model's answer and why it could not be used
        feedback = second["messages"][-1]["content"][0]
        assert feedback["type"] == "tool_result" and feedback["is_error"] is True
        assert "write exactly 3 segments, not 2" in feedback["content"]
        assert [api.key_of(r) for r in api.messages_requests()] == [KEY, KEY]


def test_plan_fails_cleanly_after_repeated_bad_answers(monkeypatch):
    cfg = PlannerConfig.load()
    with FakeMessagesAPI() as api:
        for _ in range(cfg.max_attempts):
            api.answer_text("Here is a lovely plan!")          # no tool call at all
        with pytest.raises(PlanError) as e:
            plan("a story", 30.0, 3, enhancer_for(api, monkeypatch), cfg)
        assert str(e.value) == (f"the model gave no usable plan in {cfg.max_attempts} tries "
                                f"(last: answer by calling the {TOOL} tool)")
        assert len(api.messages_requests()) == cfg.max_attempts


def test_plan_refuses_what_cannot_work_before_asking():
    class NoKey:
        available = False

    cfg = PlannerConfig.load()
    for args, says in (((" ", 30.0, 3), "the story must not be empty"),
                       (("s", 10.0, 20), "20 segments in 10 s is under 2 s each"),
                       (("s", 30.0, 3), "needs an Anthropic API key in ANTHROPIC_API_KEY")):
        with pytest.raises(PlanError, match=says):
            plan(*args, NoKey(), cfg)


def test_the_plan_command_writes_a_timeline_that_renders(tmp_path):
    with FakeMessagesAPI() as api:
        api.answer_tool(TOOL, good(2, 4.0))
        env = {**os.environ, "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": api.url, "LONGLIVE_WEIGHTS": "",
               "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-m", "longlive", "plan", "a kite", "--seconds", "4", "--segments", "2",
                               "-o", "t.json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wrote t.json: 2 segments over 4 s" in done.stdout
    assert KEY not in done.stdout + done.stderr
    t = Timeline.load(tmp_path / "t.json")
    assert [s.main_prompt().text for s in t.segments] == ["the red kite, shot 0", "the red kite, shot 1"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", t.exported_at)   # as Scope stamps exportedAt
    rendered = subprocess.run([sys.executable, "-m", "longlive", "render", "t.json", "--resolution", "64x48"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rendered.returncode == 0, rendered.stderr
    assert json.loads((tmp_path / "t.render.timeline.json").read_text())["prompts"][1]["prompts"][0]["text"] == \
        "the red kite, shot 1"
