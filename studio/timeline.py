"""Timelines: prompts laid out in time, read from Daydream Scope's exports and written as Scope v2.x.

One model for recording, playback, render and rewind. A `Timeline` is a list of `Segment`s
(a time span and its weighted prompts), the `Settings` the video was made with, and whatever
else the file held. `from_scope` is the gate for anything from outside: it checks every field
and raises `TimelineError`, one sentence naming the field's path
("prompts[1].prompts[0].weight must be a number, not a string"). The dataclasses themselves
do not validate; code that builds them gives valid values.

Two forms are read: Scope's v2.x timeline (below), and the timeline inside a Scope workflow
(`*.scope-workflow.json`, `"format": "scope-workflow"`, the only form Scope exports since March
2026; see "Scope workflows" below). Both give the same model; `to_scope` writes v2.0.

Field mapping (Scope v2.x JSON -> here):

    prompts[i]                          -> Timeline.segments[i] (sorted by startTime)
      startTime, endTime (seconds)      -> Segment.start, Segment.end
      prompts[j] {text, weight=100}     -> Segment.prompts[j]: WeightedPrompt(text, weight)
      transitionSteps                   -> Segment.transition.blocks (counted in generator blocks)
      temporalInterpolationMethod       -> Segment.transition.method ("linear" or "slerp")
    settings.pipelineId                 -> Settings.pipeline
    settings.resolution{height,width}   -> Settings.height, Settings.width
    settings.seed                       -> Settings.seed (0..SEED_MAX)
    settings.denoisingSteps             -> Settings.denoising_steps (strictly decreasing, 1..1000)
    version ("2.x"), exportedAt         -> Timeline.version, Timeline.exported_at
    longlive {...}                      -> Timeline.longlive (this project's own fields)

What is kept: unknown keys of a segment (`Segment.extra`), every other settings key such as
Scope's video-input options noiseScale, noiseController, manageCache (`Settings.extra`), and
unknown top-level keys (`Timeline.extra`), all verbatim, so `to_scope` writes them back.
What is dropped: unknown keys inside a prompt item ({text, weight} only) and inside
settings.resolution. Every unknown key kept or dropped, a missing version and a reordering of
the segments is reported in `Timeline.notes` (not part of equality, never exported).

Scope workflows (format_version 1.x; `from_scope` tells them by "format": "scope-workflow"):

    timeline.entries[i]                 -> Timeline.segments[i] (sorted by start_time)
      start_time, end_time (seconds)    -> Segment.start, Segment.end
      prompts[j] {text, weight=1}       -> Segment.prompts[j] (1 is the weight Scope's schema
                                           defaults to; Scope writes it, usually 100)
      transition_steps, temporal_interpolation_method (null: absent) -> Segment.transition
    pipelines[m]: the one with role "main", else the first (as Scope picks it)
      pipeline_id                       -> Settings.pipeline
      params.height, params.width       -> Settings.height, Settings.width
      params.base_seed                  -> Settings.seed (LongLive's seed field in Scope)
      params.denoising_step_list        -> Settings.denoising_steps
      every other param                 -> Settings.extra, verbatim under its own (snake_case) name
    metadata.created_at                 -> Timeline.exported_at

A workflow without a timeline (missing or null: Scope writes null when its timeline is empty) is
a TimelineError. Not read, as they describe the file or Scope's own setup rather than the video:
format_version, metadata.name and scope_version, min_scope_version, a pipeline's
pipeline_version, source and role, and the prompt box's state (top-level prompts,
interpolation_method, transition_steps, temporal_interpolation_method; with a timeline, Scope
also starts from its first entry). Settings that would change the video but that LongLive here
does not use (the other pipelines, the main pipeline's loras, graph, nodes) are dropped. Unknown
keys of an entry are kept (`Segment.extra`) and unknown top-level keys (`Timeline.extra`); unknown
keys of a prompt, of timeline, metadata and the main pipeline are dropped; each is noted.

Settings LongLive does not use, of either form, are named in ONE note: the pipeline when it is
not LongLive, the settings kept but unused, the parts dropped.

Whole numbers (seed, sizes, steps) may be written as 480 or 480.0 (JavaScript has one number
type) but not 13.5. Prompt texts are stored stripped. On export, integral floats are written
as integers, as Scope's JavaScript would. `BlockClock` maps seconds to the generator's blocks.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from streaming.blend import MAX_TRANSITION_BLOCKS, Blend, TransitionSpec
from streaming.errors import UserError
from streaming.noise import SEED_MAX

MAX_TEXT_CHARS = 10_000           # one prompt's text, after stripping
MAX_FILE_BYTES = 16 * 1024 * 1024  # a timeline file or JSON text
MAX_NESTING = 100                 # levels of lists/objects inside a kept unknown field
OVERLAP_TOLERANCE = 1e-6          # seconds a segment may start before the previous one ends
METHODS = ("linear", "slerp")

WORKFLOW_FORMAT = "scope-workflow"   # the "format" of a Scope workflow file (*.scope-workflow.json)

_SETTINGS_KEYS = {"pipelineId", "resolution", "seed", "denoisingSteps"}
_TOP_KEYS = {"prompts", "settings", "version", "exportedAt", "longlive"}
_WORKFLOW_TOP_KEYS = {"format", "format_version", "metadata", "pipelines", "nodes", "timeline", "min_scope_version",
                      "prompts", "interpolation_method", "transition_steps", "temporal_interpolation_method", "graph"}
_WORKFLOW_METADATA_KEYS = {"name", "created_at", "scope_version"}
_WORKFLOW_PIPELINE_KEYS = {"pipeline_id", "pipeline_version", "source", "loras", "params", "role"}
_WORKFLOW_PARAMS = {"height", "width", "base_seed", "denoising_step_list"}   # those LongLive uses


@dataclass(frozen=True)
class _Form:
    """The key names of a segment in one of the two forms Scope writes."""
    start: str
    end: str
    steps: str
    method: str
    default_weight: float
    null_is_absent: bool    # a null transition field reads as no field

    @property
    def keys(self) -> set[str]:
        return {self.start, self.end, "prompts", self.steps, self.method}


_V2 = _Form("startTime", "endTime", "transitionSteps", "temporalInterpolationMethod", 100.0, False)
_WORKFLOW = _Form("start_time", "end_time", "transition_steps", "temporal_interpolation_method", 1.0, True)


class TimelineError(UserError, ValueError):
    """A timeline that cannot be read or written; the message names the field or file."""


@dataclass(frozen=True)
class WeightedPrompt:
    text: str
    weight: float = 100.0


@dataclass(frozen=True)
class Transition:
    """How a segment's prompt takes over from the previous one (0 blocks: a cut)."""
    blocks: int
    method: str = "linear"


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    prompts: tuple[WeightedPrompt, ...]
    transition: Transition | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def main_prompt(self) -> WeightedPrompt:
        """The prompt with the highest weight, the first of equals."""
        return max(self.prompts, key=lambda p: p.weight)

    def blend(self) -> str | Blend:
        """What the segment plays: its prompt (one prompt, as a string), or the blend of its
        weighted prompts (weights normalised)."""
        blend = Blend.of((p.text, p.weight) for p in self.prompts)
        return blend.single if blend.single is not None else blend

    def transition_spec(self) -> TransitionSpec | None:
        """How it takes over from the previous segment: a glide over that many blocks, or None (a cut)."""
        if self.transition is None or self.transition.blocks <= 1:
            return None
        return TransitionSpec(min(self.transition.blocks, MAX_TRANSITION_BLOCKS), self.transition.method)


@dataclass(frozen=True)
class Settings:
    pipeline: str | None = "longlive"
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    denoising_steps: tuple[int, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BlockClock:
    """Where blocks fall in time: the first block of a stream gives 1 + 4*(F-1) video frames,
    every later block 4*F (F = latent frames per block, 3 in LongLive: 9 then 12 frames)."""
    fps: float
    latent_frames_per_block: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) \
                or not math.isfinite(self.fps) or self.fps <= 0:
            raise ValueError(f"fps must be a finite number above 0, not {self.fps!r}")
        f = self.latent_frames_per_block
        if isinstance(f, bool) or not isinstance(f, int) or f < 1:
            raise ValueError(f"latent_frames_per_block must be a whole number >= 1, not {f!r}")

    @property
    def _first(self) -> int:
        return 1 + 4 * (self.latent_frames_per_block - 1)

    @property
    def _later(self) -> int:
        return 4 * self.latent_frames_per_block

    def frames_in(self, block: int) -> int:
        return self._first if _block_index(block) == 0 else self._later

    def start_frame(self, block: int) -> int:
        """0, 9, 21, 33, ... for F=3."""
        return 0 if _block_index(block) == 0 else self._first + self._later * (block - 1)

    def start_time(self, block: int) -> float:
        return self.start_frame(block) / self.fps

    def block_at(self, seconds: float) -> int:
        """The first block starting at or after `seconds` (within 1e-9 s): a switch is never early."""
        target = _seconds(seconds) - 1e-9
        if target <= 0:
            return 0
        block = 1 + max(0, math.ceil((target * self.fps - self._first) / self._later))
        while block > 0 and self.start_time(block - 1) >= target:   # float noise either way
            block -= 1
        while self.start_time(block) < target:
            block += 1
        return block

    def frames_for(self, seconds: float) -> int:
        """round(seconds * fps), at least 1."""
        seconds = _seconds(seconds)
        if seconds < 0:
            raise ValueError(f"seconds must not be negative, not {seconds!r}")
        return max(1, round(seconds * self.fps))

    def blocks_for(self, seconds: float) -> int:
        """How many blocks cover `seconds` of video (at least one frame, so at least one block)."""
        frames = self.frames_for(seconds)
        return 1 if frames <= self._first else 1 + -(-(frames - self._first) // self._later)


def _block_index(block: int) -> int:
    if isinstance(block, bool) or not isinstance(block, int) or block < 0:
        raise ValueError(f"block must be a whole number >= 0, not {block!r}")
    return block


def _seconds(seconds: float) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise ValueError(f"seconds must be a finite number, not {seconds!r}")
    return float(seconds)


@dataclass(frozen=True)
class Timeline:
    segments: tuple[Segment, ...]
    settings: Settings = field(default_factory=Settings)
    version: str = "2.0"
    exported_at: str | None = None
    longlive: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = field(default=(), compare=False)

    # ---- reading -------------------------------------------------------------------------

    @classmethod
    def from_scope(cls, obj: Any) -> Timeline:
        """A parsed JSON value (a Scope v2.x timeline or a Scope workflow) -> Timeline;
        anything wrong -> TimelineError."""
        if not isinstance(obj, dict):
            raise TimelineError(f"a timeline must be a JSON object, not {_kind(obj)}")
        if obj.get("format") == WORKFLOW_FORMAT:
            return cls._from_workflow(obj)
        if "format" in obj and "prompts" not in obj:
            shown = json.dumps(obj["format"]) if isinstance(obj["format"], str) else _kind(obj["format"])
            raise TimelineError(f'format {shown} is not supported; this reads Scope timelines (version 2.x) '
                                f'and Scope workflows ("format": "{WORKFLOW_FORMAT}")')
        notes: list[str] = []
        if "version" in obj:
            version = obj["version"]
            if not isinstance(version, str):
                raise TimelineError(f'version must be a string such as "2.0", not {_kind(version)}')
            if not version.startswith("2."):
                raise TimelineError(f"version {version} is not supported; "
                                    "this reads Scope timelines of version 2.x")
        else:
            version = "2.0"
            notes.append("no version field; read as 2.0")
        if "prompts" not in obj:
            raise TimelineError("prompts is missing: a timeline lists its segments under prompts")
        segments = _segments(obj["prompts"], "prompts", _V2, notes)
        settings = _settings(obj["settings"], notes) if "settings" in obj else Settings(pipeline=None)
        exported_at = obj.get("exportedAt")
        if "exportedAt" in obj and not isinstance(exported_at, str):
            raise TimelineError(f"exportedAt must be a string, not {_kind(exported_at)}")
        longlive = None
        if "longlive" in obj:
            if not isinstance(obj["longlive"], dict):
                raise TimelineError("longlive must be an object")
            longlive = _json_copy(obj["longlive"], "longlive")
        extra = {}
        for key in obj:
            if key not in _TOP_KEYS:
                extra[key] = _json_copy(obj[key], _join("", key))
                notes.append(f"kept unknown field {_join('', key)}")
        return cls(segments, settings, version, exported_at, longlive, extra, tuple(notes))

    @classmethod
    def _from_workflow(cls, obj: dict[str, Any]) -> Timeline:
        """A Scope workflow ("format": "scope-workflow") -> its timeline, with the main pipeline's settings."""
        notes: list[str] = []
        if "format_version" in obj:
            version = obj["format_version"]
            if not isinstance(version, str):
                raise TimelineError(f'format_version must be a string such as "1.0", not {_kind(version)}')
            if version.split(".")[0] != "1":
                raise TimelineError(f"format_version {version} is not supported; "
                                    "this reads Scope workflows of format_version 1.x")
        else:
            notes.append("no format_version field; read as 1.0")
        timeline = obj.get("timeline")
        if timeline is None:
            raise TimelineError("this Scope workflow has no timeline (timeline is missing or null); "
                                "export it from Scope with prompts on its timeline")
        if not isinstance(timeline, dict):
            raise TimelineError(f"timeline must be an object with entries, not {_kind(timeline)}")
        if "entries" not in timeline:
            raise TimelineError("timeline.entries is missing: a workflow's timeline lists its segments under entries")
        segments = _segments(timeline["entries"], "timeline.entries", _WORKFLOW, notes)
        notes.extend(f"ignored unknown field timeline.{k}" for k in timeline if k != "entries")
        exported_at = None
        if "metadata" in obj:
            meta = obj["metadata"]
            if not isinstance(meta, dict):
                raise TimelineError(f"metadata must be an object, not {_kind(meta)}")
            if "created_at" in meta:
                exported_at = meta["created_at"]
                if not isinstance(exported_at, str):
                    raise TimelineError(f"metadata.created_at must be a string, not {_kind(exported_at)}")
            notes.extend(f"ignored unknown field metadata.{k}" for k in meta if k not in _WORKFLOW_METADATA_KEYS)
        settings = _workflow_settings(obj, notes)
        extra = {}
        for key in obj:
            if key not in _WORKFLOW_TOP_KEYS:
                extra[key] = _json_copy(obj[key], _join("", key))
                notes.append(f"kept unknown field {_join('', key)}")
        return cls(segments, settings, "2.0", exported_at, None, extra, tuple(notes))

    @classmethod
    def from_json(cls, text: str | bytes) -> Timeline:
        return cls._parse(text, None)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Timeline:
        """Read a timeline file; every failure is a TimelineError naming the file."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            raise TimelineError(f"timeline file {path} does not exist") from None
        except IsADirectoryError:
            raise TimelineError(f"timeline file {path} is a folder, not a file") from None
        except OSError as e:
            raise TimelineError(f"cannot read timeline file {path}: {e.strerror or e}") from None
        return cls._parse(data, path)

    @classmethod
    def _parse(cls, text: str | bytes, source: Path | None) -> Timeline:
        name = f"timeline file {source}" if source is not None else "the timeline"
        size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_FILE_BYTES:
            raise TimelineError(f"{name} is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8-sig")
            except UnicodeDecodeError as e:
                raise TimelineError(f"{name} is not UTF-8 text (byte {e.start})") from None
        try:
            obj = json.loads(text, parse_constant=_reject_constant)
        except _NotJsonNumber as e:
            raise TimelineError(f"{name} holds {e.args[0]}, which JSON does not allow; write a number") from None
        except json.JSONDecodeError as e:
            raise TimelineError(f"{name} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        except RecursionError:
            raise TimelineError(f"{name} is nested too deeply to be a timeline") from None
        except ValueError as e:   # e.g. an integer with more digits than Python converts
            raise TimelineError(f"{name} is not valid JSON: {e}") from None
        try:
            return cls.from_scope(obj)
        except TimelineError as e:
            if source is None:
                raise
            raise TimelineError(f"{source}: {e}") from None

    # ---- writing -------------------------------------------------------------------------

    def to_scope(self) -> dict[str, Any]:
        """A JSON-ready dict in Scope's v2.0 shape and key order, plus "longlive" and the extras
        (an extra key that names a known field is not written)."""
        out: dict[str, Any] = {
            "prompts": [_segment_out(s) for s in self.segments],
            "settings": _settings_out(self.settings),
            "version": self.version,
        }
        if self.exported_at is not None:
            out["exportedAt"] = self.exported_at
        if self.longlive is not None:
            out["longlive"] = _json_copy(self.longlive, "longlive")
        _add_extra(out, self.extra, "")
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_scope(), indent=2, ensure_ascii=False, allow_nan=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (a temporary file beside it, fsync, rename) with permissions 0666 less the umask."""
        path = Path(path)
        try:
            data = (self.to_json() + "\n").encode("utf-8")
        except UnicodeEncodeError:   # a lone surrogate (JSON's "\ud800") has no UTF-8: escape it
            data = (json.dumps(self.to_scope(), indent=2, allow_nan=False) + "\n").encode("ascii")
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
            tmp = None
        except OSError as e:
            raise TimelineError(f"cannot write timeline file {path}: {e.strerror or e}") from None
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
        return path

    # ---- playing -------------------------------------------------------------------------

    @property
    def duration(self) -> float:
        return self.segments[-1].end if self.segments else 0.0

    def segment_at(self, t: float) -> Segment | None:
        """The segment playing at `t` seconds: start <= t < end; in a gap the previous one
        continues; before the first, the first. None with no segments or once the last has ended."""
        if not self.segments or _seconds(t) >= self.duration:
            return None
        starts = [s.start for s in self.segments]
        return self.segments[max(0, bisect.bisect_right(starts, t) - 1)]

    def schedule(self, clock: BlockClock) -> list[tuple[int, Segment]]:
        """(block, segment) for each segment: the block where its prompt (or blend) takes effect,
        the first block of its transition when it glides in. Of segments that land on the same
        block only the later one is kept."""
        out: list[tuple[int, Segment]] = []
        for seg in self.segments:
            block = clock.block_at(seg.start)
            if out and out[-1][0] == block:
                out[-1] = (block, seg)
            else:
                out.append((block, seg))
        return out


# ---- field checks (import) -----------------------------------------------------------------

class _NotJsonNumber(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NotJsonNumber(name)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), f"a {type(value).__name__}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _num(x: float) -> str:
    return repr(round(x, 6))


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TimelineError(f"{path} must be a number, not {_kind(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise TimelineError(f"{path} must be a finite number, not {value}")
    return number


def _whole(value: Any, path: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TimelineError(f"{path} must be a whole number, not {_kind(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise TimelineError(f"{path} must be a whole number, not {value}")
        value = int(value)
    if value < low or (high is not None and value > high):
        raise TimelineError(f"{path} must be between {low} and {high}, not {value}" if high is not None
                            else f"{path} must be at least {low}, not {value}")
    return value


def _segments(raw: Any, path: str, form: _Form, notes: list[str]) -> tuple[Segment, ...]:
    """The list of segments at `path` (v2.x "prompts", a workflow's "timeline.entries"), in time order."""
    if not isinstance(raw, list):
        raise TimelineError(f"{path} must be a list of segments, not {_kind(raw)}")
    if not raw:
        raise TimelineError(f"{path} must list at least one segment")
    indexed = [(i, _segment(item, f"{path}[{i}]", form, notes)) for i, item in enumerate(raw)]
    ordered = sorted(indexed, key=lambda pair: pair[1].start)
    if [i for i, _ in ordered] != list(range(len(ordered))):
        notes.append(f"segments were not in time order; sorted them by {form.start}")
    for (i, prev), (j, seg) in zip(ordered, ordered[1:]):
        if seg.start < prev.end - OVERLAP_TOLERANCE:
            raise TimelineError(f"{path}[{j}].{form.start} {_num(seg.start)} is before the end "
                                f"of {path}[{i}] ({_num(prev.end)})")
    return tuple(seg for _, seg in ordered)


def _segment(obj: Any, path: str, form: _Form, notes: list[str]) -> Segment:
    if not isinstance(obj, dict):
        raise TimelineError(f"{path} must be an object, not {_kind(obj)}")
    for key in (form.start, form.end, "prompts"):
        if key not in obj:
            raise TimelineError(f"{path}.{key} is missing")
    start = _number(obj[form.start], f"{path}.{form.start}")
    end = _number(obj[form.end], f"{path}.{form.end}")
    if start < 0:
        raise TimelineError(f"{path}.{form.start} must not be negative, not {_num(start)}")
    if end <= start:
        raise TimelineError(f"{path}.{form.end} {_num(end)} must be after {form.start} {_num(start)}")
    items = obj["prompts"]
    if not isinstance(items, list):
        raise TimelineError(f"{path}.prompts must be a list, not {_kind(items)}")
    if not items:
        raise TimelineError(f"{path}.prompts must list at least one prompt")
    prompts = tuple(_prompt(item, f"{path}.prompts[{j}]", notes, form.default_weight) for j, item in enumerate(items))
    if sum(p.weight for p in prompts) <= 0:
        raise TimelineError(f"{path}.prompts: the weights add up to 0; give at least one prompt a weight above 0")
    given = {k for k in (form.steps, form.method) if k in obj and not (form.null_is_absent and obj[k] is None)}
    transition = None
    if given:
        blocks = _whole(obj[form.steps], f"{path}.{form.steps}", 0) if form.steps in given else 0
        method = obj[form.method] if form.method in given else "linear"
        if method not in METHODS:
            shown = json.dumps(method) if isinstance(method, str) else _kind(method)
            raise TimelineError(f'{path}.{form.method} must be "linear" or "slerp", not {shown}')
        transition = Transition(blocks, method)
    extra = {}
    for key in obj:
        if key not in form.keys:
            extra[key] = _json_copy(obj[key], _join(path, key))
            notes.append(f"kept unknown field {_join(path, key)}")
    return Segment(start, end, prompts, transition, extra)


def _prompt(obj: Any, path: str, notes: list[str], default_weight: float = 100.0) -> WeightedPrompt:
    if not isinstance(obj, dict):
        raise TimelineError(f"{path} must be an object with text and weight, not {_kind(obj)}")
    if "text" not in obj:
        raise TimelineError(f"{path}.text is missing")
    text = obj["text"]
    if not isinstance(text, str):
        raise TimelineError(f"{path}.text must be a string, not {_kind(text)}")
    text = text.strip()
    if not text:
        raise TimelineError(f"{path}.text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise TimelineError(f"{path}.text has {len(text)} characters; at most {MAX_TEXT_CHARS} are allowed")
    weight = _number(obj["weight"], f"{path}.weight") if "weight" in obj else default_weight
    if weight < 0:
        raise TimelineError(f"{path}.weight must not be negative, not {_num(weight)}")
    notes.extend(f"ignored unknown field {_join(path, key)}" for key in obj if key not in ("text", "weight"))
    return WeightedPrompt(text, weight)


def _settings(obj: Any, notes: list[str]) -> Settings:
    if not isinstance(obj, dict):
        raise TimelineError(f"settings must be an object, not {_kind(obj)}")
    pipeline = obj.get("pipelineId")
    if "pipelineId" in obj and not isinstance(pipeline, str):
        raise TimelineError(f"settings.pipelineId must be a string, not {_kind(pipeline)}")
    width = height = None
    if "resolution" in obj:
        res = obj["resolution"]
        if not isinstance(res, dict):
            raise TimelineError(f"settings.resolution must be an object with height and width, not {_kind(res)}")
        for key in ("height", "width"):
            if key not in res:
                raise TimelineError(f"settings.resolution.{key} is missing")
        height = _whole(res["height"], "settings.resolution.height", 1)
        width = _whole(res["width"], "settings.resolution.width", 1)
        notes.extend(f"ignored unknown field settings.resolution.{k}" for k in res if k not in ("height", "width"))
    seed = _whole(obj["seed"], "settings.seed", 0, SEED_MAX) if "seed" in obj else None
    steps = _denoising_steps(obj["denoisingSteps"], "settings.denoisingSteps") if "denoisingSteps" in obj else None
    extra = {k: _json_copy(v, f"settings.{k}") for k, v in obj.items() if k not in _SETTINGS_KEYS}
    _note_settings(notes, "settings.pipelineId", pipeline, list(extra), [])
    return Settings(pipeline, width, height, seed, steps, extra)


def _denoising_steps(raw: Any, path: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not raw:
        raise TimelineError(f"{path} must be a non-empty list of whole numbers, "
                            f"not {'an empty list' if raw == [] else _kind(raw)}")
    steps = tuple(_whole(v, f"{path}[{i}]", 1, 1000) for i, v in enumerate(raw))
    for i in range(1, len(steps)):
        if steps[i] >= steps[i - 1]:
            raise TimelineError(f"{path} must be strictly decreasing, but [{i}] = {steps[i]} follows {steps[i - 1]}")
    return steps


def _workflow_settings(obj: dict[str, Any], notes: list[str]) -> Settings:
    """The main pipeline of a workflow as Settings; what LongLive does not use goes into one note."""
    dropped = [key for key in ("graph", "nodes") if obj.get(key) not in (None, [], {})]
    pipelines = obj.get("pipelines")
    if pipelines is None:
        _note_settings(notes, "", None, [], dropped)
        return Settings(pipeline=None)
    if not isinstance(pipelines, list):
        raise TimelineError(f"pipelines must be a list of pipelines, not {_kind(pipelines)}")
    for i, p in enumerate(pipelines):
        if not isinstance(p, dict):
            raise TimelineError(f"pipelines[{i}] must be an object, not {_kind(p)}")
        if "pipeline_id" not in p:
            raise TimelineError(f"pipelines[{i}].pipeline_id is missing")
        if not isinstance(p["pipeline_id"], str):
            raise TimelineError(f"pipelines[{i}].pipeline_id must be a string, not {_kind(p['pipeline_id'])}")
    if not pipelines:
        _note_settings(notes, "", None, [], dropped)
        return Settings(pipeline=None)
    main = next((i for i, p in enumerate(pipelines) if p.get("role") == "main"), 0)
    dropped[:0] = [f"pipelines[{i}] ({p['pipeline_id']})" for i, p in enumerate(pipelines) if i != main]
    path, pipe = f"pipelines[{main}]", pipelines[main]
    notes.extend(f"ignored unknown field {path}.{k}" for k in pipe if k not in _WORKFLOW_PIPELINE_KEYS)
    if pipe.get("loras") not in (None, []):
        dropped.insert(0, f"{path}.loras")
    params = pipe.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise TimelineError(f"{path}.params must be an object, not {_kind(params)}")
    width = height = None
    if "height" in params or "width" in params:
        for key in ("height", "width"):
            if key not in params:
                raise TimelineError(f"{path}.params.{key} is missing; a frame size needs both height and width")
        height = _whole(params["height"], f"{path}.params.height", 1)
        width = _whole(params["width"], f"{path}.params.width", 1)
    seed = _whole(params["base_seed"], f"{path}.params.base_seed", 0, SEED_MAX) if "base_seed" in params else None
    steps = (_denoising_steps(params["denoising_step_list"], f"{path}.params.denoising_step_list")
             if "denoising_step_list" in params else None)
    extra = {k: _json_copy(v, f"{path}.params.{k}") for k, v in params.items() if k not in _WORKFLOW_PARAMS}
    _note_settings(notes, f"{path}.pipeline_id", pipe["pipeline_id"], list(extra), dropped)
    return Settings(pipe["pipeline_id"], width, height, seed, steps, extra)


def _note_settings(notes: list[str], where: str, pipeline: str | None, kept: list[str], dropped: list[str]) -> None:
    """One note, if any, for all the settings LongLive does not use: another pipeline (named at
    `where`), settings kept as they are, parts of the file dropped."""
    parts = []
    if pipeline is not None and pipeline != "longlive":
        parts.append(f"{where} is {pipeline!r}; the prompts play on LongLive all the same")
    if kept:
        parts.append(f"kept settings {', '.join(kept)} as they are; LongLive does not use them")
    if dropped:
        parts.append(f"ignored {', '.join(dropped)}; LongLive plays the timeline without them")
    if parts:
        notes.append("; ".join(parts))


def _json_copy(value: Any, path: str, depth: int = 0) -> Any:
    """A deep copy of a JSON value; anything else (NaN, a tuple, a non-string key) -> TimelineError."""
    if depth > MAX_NESTING:
        raise TimelineError(f"{path} is nested more than {MAX_NESTING} levels deep")
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TimelineError(f"{path} must be a finite number, not {value}")
        return value
    if isinstance(value, list):
        return [_json_copy(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise TimelineError(f"{path} has a key that is not a string: {key!r}")
        return {k: _json_copy(v, _join(path, k), depth + 1) for k, v in value.items()}
    raise TimelineError(f"{path} must be a JSON value, not {_kind(value)}")


# ---- export --------------------------------------------------------------------------------

def _js(x: float) -> int | float:
    """A number as JavaScript writes it: integral values without a fraction."""
    return int(x) if isinstance(x, float) and x.is_integer() and abs(x) < 2**53 else x


def _add_extra(out: dict[str, Any], extra: Mapping[str, Any], path: str) -> None:
    for key, value in extra.items():
        if key not in out:
            out[key] = _json_copy(value, _join(path, key))


def _segment_out(seg: Segment) -> dict[str, Any]:
    out: dict[str, Any] = {
        "startTime": _js(seg.start),
        "endTime": _js(seg.end),
        "prompts": [{"text": p.text, "weight": _js(p.weight)} for p in seg.prompts],
    }
    if seg.transition is not None:
        out["transitionSteps"] = seg.transition.blocks
        out["temporalInterpolationMethod"] = seg.transition.method
    _add_extra(out, seg.extra, "segment")
    return out


def _settings_out(s: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if s.pipeline is not None:
        out["pipelineId"] = s.pipeline
    if s.width is not None and s.height is not None:
        out["resolution"] = {"height": s.height, "width": s.width}
    if s.seed is not None:
        out["seed"] = s.seed
    if s.denoising_steps is not None:
        out["denoisingSteps"] = list(s.denoising_steps)
    _add_extra(out, s.extra, "settings")
    return out


def utc_now() -> str:
    """Now, as Scope writes exportedAt: ISO 8601 in UTC to the millisecond ("2025-10-27T15:51:04.242Z",
    JavaScript's toISOString)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
