"""Timelines: prompts laid out in time, read from and written as Daydream Scope's format (v2.x).

One model for recording, playback, render and rewind. A `Timeline` is a list of `Segment`s
(a time span and its weighted prompts), the `Settings` the video was made with, and whatever
else the file held. `from_scope` is the gate for anything from outside: it checks every field
and raises `TimelineError`, one sentence naming the field's path
("prompts[1].prompts[0].weight must be a number, not a string"). The dataclasses themselves
do not validate; code that builds them gives valid values.

Field mapping (Scope JSON -> here):

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

_SEGMENT_KEYS = {"startTime", "endTime", "prompts", "transitionSteps", "temporalInterpolationMethod"}
_SETTINGS_KEYS = {"pipelineId", "resolution", "seed", "denoisingSteps"}
_TOP_KEYS = {"prompts", "settings", "version", "exportedAt", "longlive"}


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
        """A parsed JSON value (Scope's timeline shape) -> Timeline; anything wrong -> TimelineError."""
        if not isinstance(obj, dict):
            raise TimelineError(f"a timeline must be a JSON object, not {_kind(obj)}")
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
        raw = obj["prompts"]
        if not isinstance(raw, list):
            raise TimelineError(f"prompts must be a list of segments, not {_kind(raw)}")
        if not raw:
            raise TimelineError("prompts must list at least one segment")
        indexed = [(i, _segment(item, f"prompts[{i}]", notes)) for i, item in enumerate(raw)]
        ordered = sorted(indexed, key=lambda pair: pair[1].start)
        if [i for i, _ in ordered] != list(range(len(ordered))):
            notes.append("segments were not in time order; sorted them by startTime")
        for (i, prev), (j, seg) in zip(ordered, ordered[1:]):
            if seg.start < prev.end - OVERLAP_TOLERANCE:
                raise TimelineError(f"prompts[{j}].startTime {_num(seg.start)} is before the end "
                                    f"of prompts[{i}] ({_num(prev.end)})")
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
        return cls(tuple(seg for _, seg in ordered), settings, version, exported_at, longlive,
                   extra, tuple(notes))

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


def _segment(obj: Any, path: str, notes: list[str]) -> Segment:
    if not isinstance(obj, dict):
        raise TimelineError(f"{path} must be an object, not {_kind(obj)}")
    for key in ("startTime", "endTime", "prompts"):
        if key not in obj:
            raise TimelineError(f"{path}.{key} is missing")
    start = _number(obj["startTime"], f"{path}.startTime")
    end = _number(obj["endTime"], f"{path}.endTime")
    if start < 0:
        raise TimelineError(f"{path}.startTime must not be negative, not {_num(start)}")
    if end <= start:
        raise TimelineError(f"{path}.endTime {_num(end)} must be after startTime {_num(start)}")
    items = obj["prompts"]
    if not isinstance(items, list):
        raise TimelineError(f"{path}.prompts must be a list, not {_kind(items)}")
    if not items:
        raise TimelineError(f"{path}.prompts must list at least one prompt")
    prompts = tuple(_prompt(item, f"{path}.prompts[{j}]", notes) for j, item in enumerate(items))
    if sum(p.weight for p in prompts) <= 0:
        raise TimelineError(f"{path}.prompts: the weights add up to 0; give at least one prompt a weight above 0")
    transition = None
    if "transitionSteps" in obj or "temporalInterpolationMethod" in obj:
        blocks = _whole(obj["transitionSteps"], f"{path}.transitionSteps", 0) if "transitionSteps" in obj else 0
        method = obj.get("temporalInterpolationMethod", "linear")
        if method not in METHODS:
            shown = json.dumps(method) if isinstance(method, str) else _kind(method)
            raise TimelineError(f'{path}.temporalInterpolationMethod must be "linear" or "slerp", not {shown}')
        transition = Transition(blocks, method)
    extra = {}
    for key in obj:
        if key not in _SEGMENT_KEYS:
            extra[key] = _json_copy(obj[key], _join(path, key))
            notes.append(f"kept unknown field {_join(path, key)}")
    return Segment(start, end, prompts, transition, extra)


def _prompt(obj: Any, path: str, notes: list[str]) -> WeightedPrompt:
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
    weight = _number(obj["weight"], f"{path}.weight") if "weight" in obj else 100.0
    if weight < 0:
        raise TimelineError(f"{path}.weight must not be negative, not {_num(weight)}")
    notes.extend(f"ignored unknown field {_join(path, key)}" for key in obj if key not in ("text", "weight"))
    return WeightedPrompt(text, weight)


def _settings(obj: Any, notes: list[str]) -> Settings:
    if not isinstance(obj, dict):
        raise TimelineError(f"settings must be an object, not {_kind(obj)}")
    pipeline = obj.get("pipelineId")
    if "pipelineId" in obj:
        if not isinstance(pipeline, str):
            raise TimelineError(f"settings.pipelineId must be a string, not {_kind(pipeline)}")
        if pipeline != "longlive":
            notes.append(f"settings.pipelineId is {pipeline!r}; the prompts play on LongLive all the same")
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
    steps = None
    if "denoisingSteps" in obj:
        raw = obj["denoisingSteps"]
        if not isinstance(raw, list) or not raw:
            raise TimelineError(f"settings.denoisingSteps must be a non-empty list of whole numbers, "
                                f"not {'an empty list' if raw == [] else _kind(raw)}")
        steps = tuple(_whole(v, f"settings.denoisingSteps[{i}]", 1, 1000) for i, v in enumerate(raw))
        for i in range(1, len(steps)):
            if steps[i] >= steps[i - 1]:
                raise TimelineError(f"settings.denoisingSteps must be strictly decreasing, but "
                                    f"[{i}] = {steps[i]} follows {steps[i - 1]}")
    extra = {k: _json_copy(v, f"settings.{k}") for k, v in obj.items() if k not in _SETTINGS_KEYS}
    if extra:
        notes.append(f"kept settings {', '.join(extra)} as they are; LongLive does not use them")
    return Settings(pipeline, width, height, seed, steps, extra)


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
