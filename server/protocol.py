"""The control protocol, version 1: message types, their fields, validation and encoding.

Every control message is a map with a "type". Client messages arrive as msgpack (binary
frames) or JSON (text frames) on the WebRTC data channel "control", on the WebSocket
`/api/control`, or as HTTP JSON bodies. They are decoded and checked here, in one place,
against one table (`COMMANDS`), and come out as typed, frozen command dataclasses; anything
else raises `ProtocolError` with one sentence for the client. Server messages are the
`Event` dataclasses below, encoded with `encode`.

To add a command: write a `Command` subclass with its fields (each described by a `Text`,
`Integer`, `Real`, `Flag`, `Choice`, `PromptsValue`, `TransitionValue`, `TimelineValue` or
`RequestId` spec through `spec(...)`; checks across fields go in its `validate`), add it to
`COMMANDS`, handle it in the engine (or the control hub) and describe it in docs/PROTOCOL.md.
Every control path (data channel, WebSocket, HTTP, OSC) ends in `parse_command`, so they
share one schema and one error vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

import msgpack

from streaming.blend import MAX_PARTS, MAX_TRANSITION_BLOCKS, METHODS, Blend, TransitionSpec
from streaming.errors import UserError, one_line
from streaming.noise import SEED_MAX

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024      # one encoded control message
MAX_PROMPT_CHARS = 2000            # one prompt
MAX_ID_CHARS = 128                 # a string request id
MAX_CUES = 99                      # cue numbers are 1..MAX_CUES (keys 1-9 fire the first nine)
MAX_CUE_NAME_CHARS = 80
QUANTIZE = ("none", "beat", "bar")
BPM_RANGE = (20.0, 300.0)

RequestIdValue = Union[str, int, None]


class ProtocolError(UserError, ValueError):
    """A message that cannot be used: `str(err)` is the sentence sent back to the client."""

    def __init__(self, message: str, id: RequestIdValue = None):
        super().__init__(message)
        self.id = id


# -- field specs ----------------------------------------------------------------------
class Spec:
    """How one field travels on the wire: its wire type name and its checks."""

    wire_type: ClassVar[str] = "any"

    def check(self, where: str, value: Any) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Text(Spec):
    max_chars: int
    min_chars: int = 0
    strip: bool = True
    wire_type: ClassVar[str] = "str"

    def check(self, where: str, value: Any) -> str:
        if not isinstance(value, str):
            raise ProtocolError(f"{where} must be a string, not {_wire_name(value)}")
        if self.strip:
            value = value.strip()
        if len(value) < self.min_chars:
            raise ProtocolError(f"{where} must not be empty" if self.min_chars == 1
                                else f"{where} needs at least {self.min_chars} characters")
        if len(value) > self.max_chars:
            raise ProtocolError(f"{where} is {len(value)} characters long; the limit is {self.max_chars}")
        return _unicode(where, value)


@dataclass(frozen=True)
class Integer(Spec):
    lo: int
    hi: int
    wire_type: ClassVar[str] = "int"

    def check(self, where: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError(f"{where} must be an integer, not {_wire_name(value)}")
        if not self.lo <= value <= self.hi:
            raise ProtocolError(f"{where} must be between {self.lo} and {self.hi}")
        return value


@dataclass(frozen=True)
class Real(Spec):
    lo: float
    hi: float
    wire_type: ClassVar[str] = "number"

    def check(self, where: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProtocolError(f"{where} must be a number, not {_wire_name(value)}")
        if not math.isfinite(value) or not self.lo <= value <= self.hi:
            raise ProtocolError(f"{where} must be between {self.lo:g} and {self.hi:g}")
        return float(value)


@dataclass(frozen=True)
class Choice(Spec):
    options: tuple[str, ...]
    wire_type: ClassVar[str] = "str"

    def check(self, where: str, value: Any) -> str:
        if not isinstance(value, str):
            raise ProtocolError(f"{where} must be a string, not {_wire_name(value)}")
        if value not in self.options:
            raise ProtocolError(f"{where} must be one of {', '.join(self.options)}, not {_short(value)!r}")
        return value


@dataclass(frozen=True)
class PromptsValue(Spec):
    """A weighted list of prompts, `[{"text": str, "weight": number >= 0}]` (weight 1 when
    left out): a blend, weights normalised to sum to 1 (streaming.blend.Blend)."""

    wire_type: ClassVar[str] = "list of {text, weight}"

    def check(self, where: str, value: Any) -> Blend:
        if not isinstance(value, list):
            raise ProtocolError(f"{where} must be a list of {{text, weight}} maps, not {_wire_name(value)}")
        if not 1 <= len(value) <= MAX_PARTS:
            raise ProtocolError(f"{where} needs 1 to {MAX_PARTS} prompts, not {len(value)}")
        items = []
        for i, item in enumerate(value):
            at = f"{where}[{i}]"
            if not isinstance(item, dict):
                raise ProtocolError(f"{at} must be a map with text and weight, not {_wire_name(item)}")
            for key in item:
                if key not in ("text", "weight"):
                    raise ProtocolError(_no_field(at, key, ("text", "weight")))
            if "text" not in item:
                raise ProtocolError(f"{at} needs the field 'text' (str)")
            text = Text(max_chars=MAX_PROMPT_CHARS, min_chars=1).check(f"{at}.text", item["text"])
            weight = Real(0.0, 1e6).check(f"{at}.weight", item.get("weight", 1.0))
            items.append((text, weight))
        if sum(w for _, w in items) <= 0:
            raise ProtocolError(f"{where}: the weights add up to 0; give at least one prompt a weight above 0")
        return Blend.of(items)


@dataclass(frozen=True)
class TransitionValue(Spec):
    """`{"blocks": 0..64, "method": "linear" | "slerp"}` (linear when left out); null or
    blocks 0 or 1: a cut (streaming.blend.TransitionSpec)."""

    wire_type: ClassVar[str] = "{blocks, method} | null"

    def check(self, where: str, value: Any) -> TransitionSpec:
        if value is None:
            return TransitionSpec(0)
        if not isinstance(value, dict):
            raise ProtocolError(f"{where} must be a map {{blocks, method}} or null, not {_wire_name(value)}")
        for key in value:
            if key not in ("blocks", "method"):
                raise ProtocolError(_no_field(where, key, ("blocks", "method")))
        if "blocks" not in value:
            raise ProtocolError(f"{where} needs the field 'blocks' (int)")
        blocks = Integer(0, MAX_TRANSITION_BLOCKS).check(f"{where}.blocks", value["blocks"])
        method = Choice(METHODS).check(f"{where}.method", value.get("method", "linear"))
        return TransitionSpec(blocks, method)


@dataclass(frozen=True)
class Flag(Spec):
    wire_type: ClassVar[str] = "bool"

    def check(self, where: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ProtocolError(f"{where} must be true or false, not {_wire_name(value)}")
        return value


@dataclass(frozen=True)
class TimelineValue(Spec):
    """A Scope timeline: a v2.0 timeline object or a `scope-workflow` file's object (studio.timeline), or null."""

    wire_type: ClassVar[str] = "timeline object | null"

    def check(self, where: str, value: Any) -> Any:
        if value is None:
            return None
        from studio.timeline import Timeline, TimelineError
        try:
            timeline = Timeline.from_scope(value)
        except TimelineError as e:
            raise ProtocolError(f"{where}: {e}") from None
        for segment in timeline.segments:      # live, a prompt's limit is the same on every path
            for p in segment.prompts:
                _unicode(f"{where}: a prompt of the segment at {segment.start:g} s", p.text)
                if len(p.text) > MAX_PROMPT_CHARS:
                    raise ProtocolError(f"{where}: a prompt of the segment at {segment.start:g} s is {len(p.text)} "
                                        f"characters long; the limit is {MAX_PROMPT_CHARS}")
        return timeline


@dataclass(frozen=True)
class RequestId(Spec):
    """A client's tag for a request, echoed in replies: a string, an integer or null."""

    wire_type: ClassVar[str] = "str | int | null"

    def check(self, where: str, value: Any) -> RequestIdValue:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ProtocolError(f"{where} must be a string, an integer or null, not {_wire_name(value)}")
        if isinstance(value, str) and len(value) > MAX_ID_CHARS:
            raise ProtocolError(f"{where} is longer than {MAX_ID_CHARS} characters")
        if isinstance(value, str):
            _unicode(where, value)       # it is echoed in every reply to the command
        if isinstance(value, int) and not -2**63 <= value < 2**64:
            raise ProtocolError(f"{where} is out of range")
        return value


def spec(s: Spec, **kwargs: Any) -> Any:
    """A dataclass field described by `s` (kwargs go to `dataclasses.field`)."""
    return field(metadata={"spec": s}, **kwargs)


# -- client -> server: commands ----------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Command:
    TYPE: ClassVar[str] = ""
    DOC: ClassVar[str] = ""
    id: RequestIdValue = spec(RequestId(), default=None)

    def validate(self) -> None:
        """Checks across fields (each field's own checks are its spec's); raises ProtocolError."""


@dataclass(frozen=True, kw_only=True)
class _OnePrompt(Command):
    """A command naming a prompt: `text` (one prompt) or `prompts` (a blend), exactly one of
    them, and how to get there (`transition`; None: the server's default)."""

    text: str | None = spec(Text(max_chars=MAX_PROMPT_CHARS, min_chars=1), default=None)
    prompts: Blend | None = spec(PromptsValue(), default=None)
    transition: TransitionSpec | None = spec(TransitionValue(), default=None)

    def validate(self) -> None:
        self._check_prompt()

    def _check_prompt(self) -> None:
        if (self.text is None) == (self.prompts is None):
            raise ProtocolError(f"{self.TYPE!r} needs exactly one of 'text' (str) and 'prompts' "
                                f"(list of {{text, weight}})")

    @property
    def blend(self) -> Blend:
        return self.prompts if self.prompts is not None else Blend.of(self.text or "")

    @property
    def label(self) -> str:
        """The prompt, or the blend's label (`a (70%) + b (30%)`)."""
        return self.blend.label


@dataclass(frozen=True, kw_only=True)
class PromptCommand(_OnePrompt):
    TYPE = "prompt"
    DOC = ("Switch to a new prompt (text) or blend (prompts) at the next block boundary (KV re-cache); "
           "transition glides there over N blocks; enhance: true has the AI rewrite the text first.")
    enhance: bool = spec(Flag(), default=False)

    def validate(self) -> None:
        self._check_prompt()
        if self.enhance and self.text is None:
            raise ProtocolError("'prompt' with enhance: true needs 'text'; a blend is sent as it is")


@dataclass(frozen=True, kw_only=True)
class EnhanceCommand(Command):
    TYPE = "enhance"
    DOC = "Have the AI rewrite a short prompt (answered with `enhanced`; nothing goes live until it is sent as a prompt)."
    text: str = spec(Text(max_chars=MAX_PROMPT_CHARS, min_chars=1))


@dataclass(frozen=True, kw_only=True)
class SeedCommand(Command):
    TYPE = "seed"
    DOC = "Restart the stream with a new seed, keeping the current prompt, at the next block boundary."
    seed: int = spec(Integer(0, SEED_MAX))


@dataclass(frozen=True, kw_only=True)
class PauseCommand(Command):
    TYPE = "pause"
    DOC = "Freeze playback on the current frame now; generation stops at the next block boundary."


@dataclass(frozen=True, kw_only=True)
class ResumeCommand(Command):
    TYPE = "resume"
    DOC = "Continue playback and generation."


@dataclass(frozen=True, kw_only=True)
class RecordCommand(Command):
    TYPE = "record"
    DOC = "Start (on: true) or stop (on: false) recording the stream to the server's recordings folder."
    on: bool = spec(Flag())


@dataclass(frozen=True, kw_only=True)
class TimelineCommand(Command):
    TYPE = "timeline"
    DOC = ("Play a timeline (Scope v2.0 JSON object): the stream restarts under its first prompt and "
           "switches at its times, on block boundaries; null stops it and returns to manual control.")
    timeline: Any = spec(TimelineValue())


@dataclass(frozen=True, kw_only=True)
class RewindCommand(Command):
    TYPE = "rewind"
    DOC = ("Return the stream to the start of a kept prompt segment and continue from there "
           "(the same noise, so it replays, unless fresh is true).")
    segment: int = spec(Integer(0, 2**62))
    fresh: bool = spec(Flag(), default=False)


@dataclass(frozen=True, kw_only=True)
class CueCommand(_OnePrompt):
    TYPE = "cue"
    DOC = ("Store a prompt (text) or blend (prompts) in cue N of the cue bank, with a name and its own "
           "transition (else the server's default applies when it fires).")
    cue: int = spec(Integer(1, MAX_CUES))
    name: str = spec(Text(max_chars=MAX_CUE_NAME_CHARS), default="")


@dataclass(frozen=True, kw_only=True)
class ArmCommand(Command):
    TYPE = "arm"
    DOC = "Arm cue N: its conditioning is encoded now, so firing it costs no encoder time."
    cue: int = spec(Integer(1, MAX_CUES))


@dataclass(frozen=True, kw_only=True)
class FireCommand(Command):
    TYPE = "fire"
    DOC = ("Switch to cue N: at the next block (quantize none), or at the first block that reaches the "
           "screen at or after the next beat or bar of the tempo.")
    cue: int = spec(Integer(1, MAX_CUES))
    quantize: str = spec(Choice(QUANTIZE), default="none")


@dataclass(frozen=True, kw_only=True)
class TempoCommand(Command):
    TYPE = "tempo"
    DOC = "Set the internal tempo (BPM) and, optionally, the beats in a bar; ignored while Ableton Link leads."
    bpm: float = spec(Real(*BPM_RANGE))
    beats_per_bar: int | None = spec(Integer(1, 16), default=None)


@dataclass(frozen=True, kw_only=True)
class TapCommand(Command):
    TYPE = "tap"
    DOC = "Tap tempo: a beat is now; taps a steady interval apart set the BPM, and the latest tap is a downbeat."
    # when the tap happened on the tapper's own clock (seconds, any origin: the page sends its input
    # event's time): the interval between two taps of one connection is measured on it
    at: float | None = spec(Real(0, 1e12), default=None)


@dataclass(frozen=True, kw_only=True)
class TransitionCommand(Command):
    TYPE = "transition"
    DOC = "Set the default transition for switches that do not name their own (blocks 0: cuts)."
    blocks: int = spec(Integer(0, MAX_TRANSITION_BLOCKS))
    method: str = spec(Choice(METHODS), default="linear")


@dataclass(frozen=True, kw_only=True)
class StatusCommand(Command):
    TYPE = "status"
    DOC = "Ask for the current state; answered with a `state` message."


@dataclass(frozen=True, kw_only=True)
class PresentedReport(Command):
    TYPE = "presented"
    DOC = ("A viewer's page saw a frame on screen (after a switch): the frame's RTP timestamp "
           "(requestVideoFrameCallback's rtpTimestamp) and how long ago it was displayed (negative: "
           "it will be, in that many ms). Sent on a WebRTC session's data channel, by viewers too; "
           "answered with `photon` when it is the first frame of a new prompt this viewer saw, "
           "else with an ack.")
    rtp_timestamp: int = spec(Integer(0, 2**32 - 1))
    age_ms: float = spec(Real(-1000.0, 60_000.0), default=0.0)


# The one table of client message types.
COMMANDS: dict[str, type[Command]] = {
    cls.TYPE: cls for cls in (PromptCommand, EnhanceCommand, SeedCommand, PauseCommand, ResumeCommand, RecordCommand,
                              TimelineCommand, RewindCommand, CueCommand, ArmCommand, FireCommand, TempoCommand,
                              TapCommand, TransitionCommand, StatusCommand, PresentedReport)
}


def command_fields(cls: type[Command]) -> list[tuple[str, Spec, bool]]:
    """(name, spec, required) for each field of a command, in declaration order."""
    out = []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out.append((f.name, f.metadata["spec"], required))
    return out


def decode(data: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    """One wire message -> a map (msgpack for binary, JSON for text). Checks only the framing."""
    if isinstance(data, str):
        if len(data) > MAX_MESSAGE_BYTES or len(data.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"message is larger than {MAX_MESSAGE_BYTES} bytes")
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError) as e:
            raise ProtocolError(f"text message is not valid JSON ({one_line(e)})") from None
    elif isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"message is larger than {MAX_MESSAGE_BYTES} bytes")
        try:
            obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=False)
        except Exception as e:  # msgpack raises several unrelated types for bad input
            raise ProtocolError(f"binary message is not valid msgpack ({type(e).__name__})") from None
    else:
        raise ProtocolError("message must be binary (msgpack) or text (JSON)")
    if not isinstance(obj, dict):
        raise ProtocolError(f"message must be a map with a \"type\", not {_wire_name(obj)}")
    return obj


def parse_command(obj: dict[str, Any]) -> Command:
    """A decoded map -> its typed command, or ProtocolError (carrying the request id when usable)."""
    rid: RequestIdValue = None
    try:
        rid = RequestId().check("id", obj.get("id"))
    except ProtocolError:
        rid = None
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("message needs a string field \"type\"", rid)
    cls = COMMANDS.get(kind)
    if cls is None:
        known = ", ".join(sorted(COMMANDS))
        raise ProtocolError(f"unknown message type {_short(kind)!r} (known: {known})", rid)
    fields = command_fields(cls)
    names = [name for name, _, _ in fields if name != "id"] + ["id"]
    for key in obj:
        if key != "type" and key not in names:
            raise ProtocolError(_no_field(repr(kind), key, names), rid)
    kwargs: dict[str, Any] = {}
    for name, s, required in fields:
        if name not in obj:
            if required:
                raise ProtocolError(f"{kind!r} needs the field {name!r} ({s.wire_type})", rid)
            continue
        try:
            kwargs[name] = s.check(f"{kind}.{name}", obj[name])
        except ProtocolError as e:
            raise ProtocolError(str(e), rid) from None
    command = cls(**kwargs)
    try:
        command.validate()
    except ProtocolError as e:
        raise ProtocolError(str(e), rid) from None
    return command


def read_command(data: bytes | bytearray | memoryview | str) -> Command:
    """decode + parse_command: one wire message -> one typed command."""
    return parse_command(decode(data))


# -- server -> client: events -------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Event:
    TYPE: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE}
        for f in dataclasses.fields(self):
            out[f.name] = getattr(self, f.name)
        return out


@dataclass(frozen=True, kw_only=True)
class Hello(Event):
    TYPE = "hello"
    protocol: int = PROTOCOL_VERSION
    state: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Ack(Event):
    TYPE = "ack"
    id: RequestIdValue
    command: str


@dataclass(frozen=True, kw_only=True)
class PromptApplied(Event):
    TYPE = "prompt_applied"
    id: RequestIdValue
    text: str
    block: int                  # block index in the current stream
    frame: int                  # frame-bus sequence number of the block's first frame
    latency_ms: float           # command received -> first block under the prompt generated
    plays_in_ms: float          # then -> that block's first frame reaches playback
    time: float                 # server wall clock (Unix seconds) when applied
    superseded: list[RequestIdValue] = field(default_factory=list)  # ids replaced before any block (newest 32)
    encode_ms: float = 0.0      # of latency_ms: encoding the text (beside generation; 0 when cached)
    transition: dict[str, Any] | None = None   # {blocks, method}: the change glides over that many blocks
    cue: int | None = None      # the fired cue it came from
    offset_ms: float | None = None   # a quantised cue: its first frame on screen this long after the beat
    recache_ms: float = 0.0     # re-caching the KV window under it (part of its block's DiT time)


@dataclass(frozen=True, kw_only=True)
class StateEvent(Event):
    TYPE = "state"
    id: RequestIdValue = None
    state: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Stats(Event):
    """About once a second. Three rates tell a stall apart: `generated_fps` below the stream's
    fps means generation cannot keep up; `delivered_fps_min` below `generated_fps` means a
    viewer is not getting the frames that were made (repeats are not counted)."""

    TYPE = "stats"
    fps: float                  # playhead advance: frames played per second over the last interval
    gen_fps: float              # generation speed: frames per second of compute (last block)
    block_ms: float             # last block: DiT + decode
    dit_ms: float
    decode_ms: float
    generated_fps: float | None      # frames the engine published per second of wall time (rate window)
    delivered_fps: float | None      # distinct new frames sent per second per viewer: the median viewer
    delivered_fps_min: float | None  # ... and the slowest viewer (None: no viewer for the whole window)
    rate_window_s: float        # seconds generated_fps and delivered_fps cover (up to about 5)
    viewers: int
    controllers: int
    block: int
    frame: int                  # the frame now playing (frame-bus sequence number)
    buffered: int               # frames generated but not yet played
    skipped: int                # frames viewers skipped (slow viewers), in total
    paused: bool
    recording_s: float | None = None   # seconds of video recorded so far (None: not recording)


@dataclass(frozen=True, kw_only=True)
class ErrorEvent(Event):
    TYPE = "error"
    id: RequestIdValue = None
    message: str


@dataclass(frozen=True, kw_only=True)
class ConflictError(ErrorEvent):
    """An `error` (the same on the wire) refusing a command because of what the server has, not
    because it is busy: a rewind to a segment that is not kept, an empty cue, a recording that
    cannot start or stop. The same command is refused again until that changes, so HTTP answers
    it with 409 (the other refusals of a performer's command, 503 and Retry-After)."""


@dataclass(frozen=True, kw_only=True)
class Notice(Event):
    """Something a user should know that is not an error (a timeline's blends played as one prompt)."""

    TYPE = "notice"
    id: RequestIdValue = None
    message: str


@dataclass(frozen=True, kw_only=True)
class RecordingEvent(Event):
    """A recording started, stopped (its files are complete) or failed (what was written is kept)."""

    TYPE = "recording"
    status: str                 # started | stopped | failed
    name: str                   # the video file's name in the recordings folder
    url: str                    # where to download it
    sidecar: str                # the timeline file beside it
    frames: int                 # frames written so far
    seconds: float              # of video
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class EnhancedEvent(Event):
    """The answer to `enhance` (and, before it goes live, to a `prompt` with enhance: true)."""

    TYPE = "enhanced"
    id: RequestIdValue = None
    input: str                  # the text as sent
    text: str                   # the AI's rewrite, or the input when it fell back
    source: str                 # ai | raw
    error: str | None = None    # why it fell back (one line), if it did
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    ms: float = 0.0


@dataclass(frozen=True, kw_only=True)
class PhotonEvent(Event):
    """Prompt-to-photon at one viewer: the first frame of a new prompt reached its screen."""

    TYPE = "photon"
    id: RequestIdValue = None   # the prompt command's id (as in its prompt_applied)
    frame: int                  # the frame-bus number of the new prompt's first frame
    shown: int                  # the frame the viewer saw first under it (later if it skipped some)
    viewer: int                 # the viewer's number on this server (as in /metrics)
    latency_ms: float           # command received -> that frame on the viewer's screen


EVENTS: dict[str, type[Event]] = {cls.TYPE: cls for cls in (Hello, Ack, PromptApplied, StateEvent, Stats, ErrorEvent,
                                                            Notice, RecordingEvent, EnhancedEvent, PhotonEvent)}


def encode(event: Event | dict[str, Any], binary: bool = True) -> bytes | str:
    """An event -> msgpack bytes (binary) or a JSON string (text). Text that is not valid Unicode
    (a lone surrogate, which no command lets in, but an event may quote from elsewhere) is sent
    as U+FFFD in msgpack and as a \\u escape in JSON, never an exception."""
    obj = event.to_wire() if isinstance(event, Event) else event
    if binary:
        try:
            return msgpack.packb(obj, use_bin_type=True)
        except UnicodeEncodeError:
            return msgpack.packb(_valid_unicode(obj), use_bin_type=True)
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":"))     # ASCII: a lone surrogate becomes \\udxxx
    return text


# -- helpers -------------------------------------------------------------------------------
def _wire_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (bytes, bytearray)):
        return "binary data"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a map"
    return type(value).__name__


def _unicode(where: str, value: str) -> str:
    """`value` if it is valid Unicode text (UTF-8 can carry it), else ProtocolError: JSON's \\ud800
    escapes decode to lone surrogates, which no reply, state or log line could carry afterwards."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ProtocolError(f"{where} is not valid Unicode text (a lone surrogate, "
                            f"{value[e.start]!r}, at character {e.start})") from None
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def _valid_unicode(obj: Any) -> Any:
    """`obj` with every string made valid Unicode (lone surrogates replaced by U+FFFD)."""
    if isinstance(obj, str):
        return _SURROGATE.sub("\ufffd", obj)
    if isinstance(obj, dict):
        return {_valid_unicode(k): _valid_unicode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_valid_unicode(v) for v in obj]
    return obj


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n] + "..."


# fields sent by mistake -> the field meant: the first of these the message has (a hint, never a fix)
FIELD_MISTAKES: dict[str, tuple[str, ...]] = {
    "prompt": ("text",), "message": ("text",), "content": ("text",),
    "blend": ("prompts",), "weights": ("prompts",),
    "seg": ("segment",), "index": ("segment", "cue"), "number": ("cue", "segment"),
    "recording": ("on",), "enabled": ("on",), "enable": ("on",), "start": ("on",),
    "tempo": ("bpm",), "steps": ("blocks",), "quantise": ("quantize",), "request_id": ("id",),
}
# where a hint says what goes in the field meant (else: did you mean it?)
FIELD_ROLES = {
    "text": "the prompt's text goes in \"text\"",
    "prompts": "a blend goes in \"prompts\" (a list of {text, weight})",
    "segment": "the segment's number goes in \"segment\"",
    "cue": "the cue's number goes in \"cue\"",
    "on": "\"on\" is true to start recording and false to stop it",
    "bpm": "the tempo goes in \"bpm\"",
    "blocks": "the transition's length in blocks goes in \"blocks\"",
    "id": "the request's id goes in \"id\"",
}


def _no_field(where: str, key: Any, names: tuple[str, ...] | list[str]) -> str:
    """The sentence for a field `where` does not have: with the field likely meant, when there
    is one (`'prompt' has no field 'prompt'; the prompt's text goes in "text"`), else with the
    fields it has."""
    name = str(key)
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower().replace("-", "_")    # Text, beatsPerBar
    meant = None
    for guess in (snake, snake[:-1] if snake.endswith("s") else ""):                  # segments
        meant = guess if guess in names else next((m for m in FIELD_MISTAKES.get(guess, ()) if m in names), None)
        if meant is not None:
            break
    said = f"{where} has no field {_short(name)!r}"
    if meant is not None:
        return f"{said}; " + FIELD_ROLES.get(meant, f'did you mean "{meant}"?')
    return f"{said} ({', '.join(names)})"
