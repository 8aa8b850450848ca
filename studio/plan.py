"""`longlive plan "a story ..."`: an LLM splits a story into timed prompt segments -> a timeline.

The model answers through a tool it is offered (`write_timeline`, a JSON schema: anchors for
the subject and the setting, then segments with start, end and prompt), so the answer is structured,
and it is checked against the timeline model (`studio.timeline`): segments in order,
covering 0 to `--seconds` without gaps or overlaps, the asked number of them, each long
enough to show. An answer that fails is sent back with the reason, up to `max_attempts`
tries (configs/ai/planner.yaml), then one clear error. The result is a Scope v2.0 timeline:
it plays live (the page's timeline picker), renders with `longlive render`, and opens in
`longlive interactive --timeline FILE` as the chunk plan.

The model, key, timeout and retries are the enhancer's (`studio.enhancer`,
configs/ai/enhancer.yaml); the key comes from ANTHROPIC_API_KEY only.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from streaming.errors import UserError, one_line

from .timeline import Timeline, TimelineError, utc_now

log = logging.getLogger(__name__)

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ai" / "planner.yaml"
TOOL = "write_timeline"
MAX_SEGMENTS = 64
MAX_STORY_CHARS = 20_000


class PlanError(UserError):
    """A plan that cannot be made; one sentence."""


@dataclass(frozen=True)
class PlannerConfig:
    max_attempts: int
    max_tokens: int
    min_segment_seconds: float
    default_segment_seconds: float
    system_prompt: str

    @classmethod
    def load(cls, path: str | Path | None = None) -> "PlannerConfig":
        path = Path(path) if path is not None else CONFIG
        try:
            raw = yaml.safe_load(path.read_text())
        except OSError as e:
            raise PlanError(f"cannot read the planner config {path}: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            raise PlanError(f"the planner config {path} is not valid YAML ({one_line(e)})") from None
        if not isinstance(raw, dict):
            raise PlanError(f"the planner config {path} must be a mapping of settings")
        kinds = {"max_attempts": int, "max_tokens": int, "min_segment_seconds": (int, float),
                 "default_segment_seconds": (int, float), "system_prompt": str}
        for key in raw:
            if key not in kinds:
                raise PlanError(f"{path}: unknown setting {key!r} (known: {', '.join(kinds)})")
        for key, kind in kinds.items():
            value = raw.get(key)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise PlanError(f"{path}: {key} is missing or of the wrong type")
        if raw["max_attempts"] < 1 or raw["max_tokens"] < 1 or raw["min_segment_seconds"] <= 0 \
                or raw["default_segment_seconds"] <= 0:
            raise PlanError(f"{path}: max_attempts, max_tokens and the segment seconds must be positive")
        return cls(**raw)


def tool_schema(segments: int) -> dict[str, Any]:
    """The write_timeline tool: what the model must fill in."""
    return {
        "name": TOOL,
        "description": "Write the timed plan of the video.",
        "input_schema": {
            "type": "object",
            "properties": {
                "anchors": {"type": "object", "properties": {
                    "subject": {"type": "string", "description": "the subject's fixed look"},
                    "setting": {"type": "string", "description": "the place and light"}},
                    "required": ["subject", "setting"]},
                "segments": {"type": "array", "minItems": segments, "maxItems": segments, "items": {
                    "type": "object", "properties": {
                        "start": {"type": "number", "description": "seconds"},
                        "end": {"type": "number", "description": "seconds"},
                        "prompt": {"type": "string"}},
                    "required": ["start", "end", "prompt"]}},
            },
            "required": ["anchors", "segments"],
        },
    }


def check_plan(answer: Any, seconds: float, segments: int, min_seconds: float, seed: int | None) -> Timeline:
    """A tool input -> a timeline, or ValueError with what is wrong (sent back to the model)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("segments"), list):
        raise ValueError("the answer must be an object with a list \"segments\"")
    items = answer["segments"]
    if len(items) != segments:
        raise ValueError(f"write exactly {segments} segments, not {len(items)}")
    out = []
    expected_start = 0.0
    for i, item in enumerate(items):
        where = f"segments[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be an object with start, end and prompt")
        start, end, prompt = item.get("start"), item.get("end"), item.get("prompt")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (start, end)):
            raise ValueError(f"{where}.start and .end must be numbers of seconds")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}.prompt must be a non-empty string")
        if abs(start - expected_start) > 1e-3:
            raise ValueError(f"{where} starts at {start:g} s; it must start where the one before ends "
                             f"({expected_start:g} s)")
        if end - start < min_seconds:
            raise ValueError(f"{where} lasts {end - start:g} s; each segment needs at least {min_seconds:g} s")
        out.append({"startTime": float(start), "endTime": float(end),
                    "prompts": [{"text": prompt.strip(), "weight": 100}]})
        expected_start = float(end)
    if abs(expected_start - seconds) > 1e-3:
        raise ValueError(f"the segments end at {expected_start:g} s; they must cover the whole {seconds:g} s")
    scope = {"prompts": out, "settings": {"pipelineId": "longlive", **({"seed": seed} if seed is not None else {})},
             "version": "2.0"}
    anchors = answer.get("anchors")
    if isinstance(anchors, dict):       # kept with the plan (our own field), for the editor to read
        scope["longlive"] = {"plan": {"anchors": {k: v for k, v in anchors.items() if isinstance(v, str)}}}
    try:
        return Timeline.from_scope(scope)
    except TimelineError as e:
        raise ValueError(str(e)) from None


def plan(story: str, seconds: float, segments: int | None, enhancer: Any, config: PlannerConfig,
         seed: int | None = None) -> Timeline:
    """Ask the model for a plan, check it, send the reason back when it fails; PlanError after the last try."""
    story = story.strip()
    if not story:
        raise PlanError("the story must not be empty")
    if len(story) > MAX_STORY_CHARS:
        raise PlanError(f"the story is {len(story)} characters long; the limit is {MAX_STORY_CHARS}")
    n = segments or max(1, round(seconds / config.default_segment_seconds))
    if not 1 <= n <= MAX_SEGMENTS:
        raise PlanError(f"--segments must be between 1 and {MAX_SEGMENTS}")
    if seconds / n < config.min_segment_seconds:
        raise PlanError(f"{n} segments in {seconds:g} s is under {config.min_segment_seconds:g} s each; "
                        f"ask for fewer segments or more seconds")
    if not enhancer.available:
        raise PlanError("longlive plan needs an Anthropic API key in ANTHROPIC_API_KEY")
    messages: list[dict[str, Any]] = [{"role": "user", "content": (
        f"Story:\n{story}\n\nThe video lasts {seconds:g} seconds. Plan exactly {n} segments from 0 to "
        f"{seconds:g} seconds, each at least {config.min_segment_seconds:g} seconds long.")}]
    why = "no answer"
    for attempt in range(1, config.max_attempts + 1):
        # the tool is offered, not forced: current models refuse a forced tool choice; the system prompt
        # asks for it, and an answer without it is sent back like any unusable plan
        message = enhancer.call(**{**enhancer.config.extra_request, "model": enhancer.config.model,
                                   "max_tokens": config.max_tokens, "system": config.system_prompt,
                                   "messages": messages, "tools": [tool_schema(n)]})
        use = next((b for b in getattr(message, "content", None) or []
                    if getattr(b, "type", None) == "tool_use" and getattr(b, "name", None) == TOOL), None)
        try:
            if use is None:
                raise ValueError(f"answer by calling the {TOOL} tool")
            timeline = check_plan(use.input, seconds, n, config.min_segment_seconds, seed)
        except ValueError as e:
            why = one_line(e)
            log.warning("plan attempt %d of %d was not usable: %s", attempt, config.max_attempts, why)
            messages.append({"role": "assistant", "content": [b.model_dump() for b in message.content]})
            reply = {"type": "text", "text": f"That plan cannot be used: {why}. Call {TOOL} again with a fixed plan."}
            if use is not None:
                reply = {"type": "tool_result", "tool_use_id": use.id, "is_error": True, "content": reply["text"]}
            messages.append({"role": "user", "content": [reply]})
            continue
        return timeline
    raise PlanError(f"the model gave no usable plan in {config.max_attempts} tries (last: {why})")


def run(args: argparse.Namespace) -> int:
    from .enhancer import EnhancerConfig, PromptEnhancer

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    output = args.output
    if output.suffix.lower() != ".json":
        raise PlanError(f"write the plan to a .json file, not {output.name}")
    if not output.parent.is_dir():
        raise PlanError(f"cannot write {output}: folder {output.parent} does not exist")
    enhancer = PromptEnhancer(EnhancerConfig.load())
    timeline = plan(args.story, args.seconds, args.segments, enhancer, PlannerConfig.load(), args.seed)
    timeline = replace(timeline, exported_at=utc_now())   # stamped as Scope stamps its exports
    timeline.save(output)
    print(f"wrote {output}: {len(timeline.segments)} segments over {timeline.duration:g} s")
    for seg in timeline.segments:
        text = seg.main_prompt().text
        print(f"  {seg.start:6.1f}-{seg.end:6.1f} s  {text[:90]}{'…' if len(text) > 90 else ''}")
    print(f"play it in the page, or: longlive render {output}")
    return 0

