"""Hypothesis strategies for fuzzing the control paths (tests/test_fuzz.py).

A control message is drawn as a `Draft`: what to put on the wire (a map, or raw bytes or
text) and how its request id is meant (`ID` is a placeholder the sender replaces with a
unique id, so each reply can be matched to its message). The mix leans towards the invalid:
well-shaped commands with wrong or odd field values, missing and unknown fields, unknown
types, deep nesting, huge strings, wrong msgpack and JSON types, and plain random bytes; a
minority of fully valid commands rides along, with the costly ones (prompts, seeds, rewinds,
timelines, recording) rare so the fuzz never becomes a prompt-switch storm, and `pause` never
valid (a paused stream stops its frames on purpose, and the fuzz measures that they flow).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
from hypothesis import strategies as st

from server.protocol import (COMMANDS, MAX_ID_CHARS, MAX_MESSAGE_BYTES, MAX_PROMPT_CHARS, Choice, Flag, Integer,
                             PromptsValue, Real, RequestId, Text, TimelineValue, TransitionValue, command_fields)


class _Id:
    def __repr__(self) -> str:
        return "ID"


ID = _Id()          # replaced by a unique request id when sent


@dataclass(frozen=True)
class Draft:
    body: Any                  # a map/list/scalar to encode, or bytes / str sent as they are
    wire: str                  # "msgpack", "json", "raw"
    note: str                  # what kind of case it is (for the report)


# -- odd values --------------------------------------------------------------------------------------
NASTY_TEXT = ["", " ", "\t\n", "\x00", "a\x00b", "\u202e\u202dRTL", "\ufeff", "\U0001F525" * 3, "é" * 10,
              "\\", '"', "'; DROP TABLE", "%s%n", "{}", "[]", "null", "\r\n\r\n", "\u0085", "\u2028",
              "a" * (MAX_PROMPT_CHARS + 1), " " * 3000 + "x", "x" * (MAX_ID_CHARS + 1), "🦊" * 2001]
NASTY_NUMBERS = [0, -1, 1, 2**31, 2**53, 2**53 - 1, 2**63 - 1, -2**63, 2**64 - 1, -(2**63) - 1,
                 0.5, -0.0, 1e308, -1e308, 5e-324, math.inf, -math.inf, math.nan, 1e6, 20.0, 300.0000001]

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NASTY_NUMBERS),
    st.text(max_size=30),
    st.sampled_from(NASTY_TEXT),
    st.binary(max_size=30),
)
odd_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(["text", "weight", "blocks", "method", "type"])),
                    inner, max_size=4)), max_leaves=8)


def deep(n: int, wire: str) -> Any:
    """n levels of nesting, already on the wire (json.dumps and msgpack would recurse)."""
    if wire == "json":
        return "[" * n + "]" * n
    return b"\x91" * n + b"\xc0"        # fixarray(1) n times, then nil


# -- valid values per spec ---------------------------------------------------------------------------
words = st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N", "Zs"]), min_size=1, max_size=24) \
    .map(lambda s: s.strip() or "x")


def valid_value(s: Any) -> st.SearchStrategy:
    if isinstance(s, Text):
        return words if s.min_chars else st.one_of(st.just(""), words)
    if isinstance(s, Integer):
        return st.integers(s.lo, min(s.hi, s.lo + 64)) | st.just(s.hi) | st.just(s.lo)
    if isinstance(s, Real):
        return st.floats(s.lo, s.hi, allow_nan=False)
    if isinstance(s, Choice):
        return st.sampled_from(s.options)
    if isinstance(s, Flag):
        return st.booleans()
    if isinstance(s, PromptsValue):
        return st.lists(st.fixed_dictionaries({"text": words}, optional={"weight": st.floats(0.1, 100)}),
                        min_size=1, max_size=3)
    if isinstance(s, TransitionValue):
        return st.none() | st.fixed_dictionaries({"blocks": st.integers(0, 4)},
                                                 optional={"method": st.sampled_from(["linear", "slerp"])})
    if isinstance(s, TimelineValue):
        segment = st.fixed_dictionaries({"startTime": st.just(0.0), "endTime": st.floats(1.0, 4.0),
                                         "prompts": st.lists(st.fixed_dictionaries({"text": words}), min_size=1,
                                                             max_size=2)})
        return st.none() | st.builds(lambda seg: {"version": "2.0", "prompts": [seg]}, segment)
    if isinstance(s, RequestId):
        return st.just(ID)
    raise AssertionError(f"no strategy for {s!r}")


# how often each command type is picked when a valid or nearly valid command is drawn: the cheap ones
# often, the ones that cost the generator a re-cache or a restart rarely
# (the stage's commands, cue tempo tap transition arm, each send every client a whole state: kept rarer too)
WEIGHTS = {"status": 14, "tempo": 3, "tap": 2, "transition": 2, "cue": 3, "resume": 6, "enhance": 5,
           "prompt": 4, "arm": 1, "fire": 2, "seed": 1, "rewind": 2, "timeline": 1, "record": 1, "pause": 4,
           "presented": 3}
assert set(WEIGHTS) == set(COMMANDS), set(COMMANDS) ^ set(WEIGHTS)
weighted_types = st.sampled_from([t for t, w in WEIGHTS.items() for _ in range(w)])
# never valid: a paused stream stops its frames (on purpose), and the fuzz measures that frames flow
NEVER_VALID = {"pause"}
# always with a unique id: their replies (state, enhanced, a later error) cannot be told apart otherwise
NEEDS_ID = {"status", "enhance", "rewind", "prompt", "fire", "timeline"}


@st.composite
def valid_command(draw, kind: str | None = None) -> dict[str, Any]:
    kind = kind or draw(weighted_types.filter(lambda t: t not in NEVER_VALID))
    cls = COMMANDS[kind]
    msg: dict[str, Any] = {"type": kind}
    for name, s, required in command_fields(cls):
        if name == "id":
            msg["id"] = ID
        elif required or draw(st.booleans()):
            msg[name] = draw(valid_value(s))
    if kind in ("prompt", "cue"):              # exactly one of text and prompts
        msg.pop("prompts", None)
        msg["text"] = msg.get("text") or draw(words)
        if kind == "prompt":
            msg["enhance"] = False if draw(st.integers(0, 9)) else msg.get("enhance", False)
            if msg.get("transition") is None and "transition" in msg and draw(st.booleans()):
                del msg["transition"]
    if kind == "rewind":
        msg["segment"] = draw(st.integers(0, 3))
        msg.pop("fresh", None)
    if kind == "record":
        msg["on"] = draw(st.booleans())
    if kind in ("cue", "arm", "fire"):
        msg["cue"] = draw(st.integers(1, 12))
    if kind == "seed":
        msg["seed"] = draw(st.integers(0, 1000))
    return msg


@st.composite
def damaged_command(draw) -> dict[str, Any]:
    """A well-shaped command with something wrong: a field's value odd, a field missing, a field
    the type does not have, or the id itself odd."""
    msg = draw(valid_command(draw(weighted_types)))
    fields = [k for k in msg if k not in ("type", "id")]
    how = draw(st.sampled_from(["odd_value", "odd_value", "odd_value", "missing", "unknown_field", "odd_id",
                                "odd_type_value", "nasty_text"]))
    if how == "odd_value" and fields:
        msg[draw(st.sampled_from(fields))] = draw(odd_values)
    elif how == "missing" and fields:
        del msg[draw(st.sampled_from(fields))]
    elif how == "unknown_field":
        msg[draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in msg))] = draw(odd_values)
    elif how == "odd_id":
        msg["id"] = draw(st.one_of(st.booleans(), st.floats(), st.lists(scalars, max_size=2),
                                   st.dictionaries(st.text(max_size=3), scalars, max_size=2),
                                   st.just("i" * (MAX_ID_CHARS + 1)), st.just(2**64), st.just(-(2**63) - 1),
                                   st.binary(max_size=4)))
    elif how == "odd_type_value":
        msg["type"] = draw(st.one_of(scalars, st.lists(scalars, max_size=2)))
    else:
        key = draw(st.sampled_from(fields)) if fields else "text"
        msg[key] = draw(st.sampled_from(NASTY_TEXT))
    return msg


unknown_type = st.builds(lambda t, extra: {"type": t, "id": ID, **extra},
                         st.one_of(st.text(max_size=20), st.sampled_from(["PROMPT", "prompt ", "status\x00", "",
                                                                           "__proto__", "constructor", "ack",
                                                                           "hello", "error"])),
                         st.dictionaries(st.text(max_size=6).filter(lambda k: k not in ("type", "id")), scalars,
                                         max_size=3))
not_a_map = st.one_of(scalars, st.lists(scalars, max_size=5))


@st.composite
def huge(draw, wire: str) -> Draft:
    """A string field near or over the message limit (built, not drawn character by character)."""
    n = draw(st.sampled_from([MAX_PROMPT_CHARS, MAX_PROMPT_CHARS + 1, MAX_MESSAGE_BYTES - 40,
                              MAX_MESSAGE_BYTES + 1, 3 * MAX_MESSAGE_BYTES, 150_000]))
    ch = draw(st.sampled_from(["x", "é", "🦊", " ", "\x00"]))
    where = draw(st.sampled_from(["text", "id", "type", "key"]))
    body: dict[str, Any] = {"type": "prompt", "text": "a", "id": ID}
    if where == "key":
        body[ch * (n // 4)] = 1
    else:
        body[where] = ch * n
    return Draft(body, wire, f"huge {where}")


@st.composite
def control_message(draw, text_ok: bool = True) -> Draft:
    """One message for the data channel or the WebSocket (msgpack in binary frames, JSON in text frames)."""
    wire = draw(st.sampled_from(["msgpack", "msgpack", "json"] if text_ok else ["msgpack"]))
    roll = draw(st.randoms(use_true_random=True)).randrange(100)   # uniform (integers() leans small)
    if roll < 12:
        return Draft(draw(valid_command()), wire, "valid")
    if roll < 52:
        return Draft(draw(damaged_command()), wire, "damaged")
    if roll < 60:
        return Draft(draw(unknown_type), wire, "unknown type")
    if roll < 66:
        return Draft(draw(not_a_map), wire, "not a map")
    if roll < 70:
        return Draft(deep(draw(st.sampled_from([50, 500, 5000, 30_000])), wire), "raw", "deep nesting")
    if roll < 74:
        return draw(huge(wire))
    if roll < 80:      # msgpack's own odd types: bin, ext, timestamps, maps keyed by non-strings
        body = draw(st.dictionaries(st.one_of(st.integers(), st.binary(max_size=4), st.booleans(), st.none()),
                                    scalars, max_size=3))
        if draw(st.booleans()):     # with a type, always with an id: a valid status must be told from a broadcast
            body.update({"type": draw(st.sampled_from(["prompt", "seed", "status"])), "id": ID})
        ext = draw(st.sampled_from([None, msgpack.ExtType(5, b"ab"), msgpack.Timestamp(1, 2)]))
        if ext is not None:
            body[draw(st.sampled_from(["text", "seed", "id"]))] = ext
        return Draft(body, "msgpack", "msgpack types")
    if roll < 86:      # the wrong framing: JSON in a binary frame, or msgpack bytes as text
        obj = draw(valid_command())
        return Draft(obj, "json-as-binary" if draw(st.booleans()) else "msgpack-as-text", "wrong framing")
    if roll < 93:
        return Draft(draw(st.binary(max_size=200)), "raw", "random bytes")
    broken = draw(st.sampled_from(['{"type": "prompt", "text": "a"', '{"type": "status"}}', "{'type': 'status'}",
                                   '{"type": NaN}', '{"type": "seed", "seed": 1e999}', '{"type": "status", "id": "\\ud800"}',
                                   '{"type": "prompt", "text": "\\ud83d", "id": 1}', '{"type":"seed","seed":' + "9" * 5000 + "}",
                                   "", " ", "\x00", "null", "[]", '"status"', "1"]))
    return Draft(draw(st.one_of(st.just(broken), st.text(max_size=80))), "raw", "broken JSON or random text")


def for_http(d: Draft, prompt: bool) -> Draft:
    """A control message as a body for POST /api/command, or (`prompt`) for POST /api/prompt, which
    takes a prompt's fields without its type: JSON text always, whatever framing it had."""
    body = d.body
    if prompt and isinstance(body, dict) and body.get("type") == "prompt":
        body = {k: v for k, v in body.items() if k != "type"}
    return Draft(body, "json" if d.wire in ("msgpack", "json", "json-as-binary", "msgpack-as-text") else d.wire,
                 d.note)


# -- OSC -----------------------------------------------------------------------------------------------
OSC_PATHS = ["/longlive/prompt", "/longlive/cue", "/longlive/arm", "/longlive/transition", "/longlive/seed",
             "/longlive/pause", "/longlive/resume", "/longlive/record", "/longlive/rewind", "/longlive/tempo",
             "/longlive/tap", "/longlive/", "/longlive/nope", "/longlive/*", "/longlive/prompt/x", "/", "//",
             "/LONGLIVE/PROMPT"]
osc_arg = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(2**31, 2**63 - 1),
                    st.floats(width=32, allow_nan=True), st.text(max_size=20), st.sampled_from(NASTY_TEXT[:20]),
                    st.binary(min_size=1, max_size=16), st.booleans(), st.none())


@st.composite
def osc_packet(draw) -> tuple[bytes, str]:
    """One UDP datagram for the OSC port."""
    from pythonosc import osc_bundle_builder, osc_message_builder

    def message(path: str, args: list[Any]) -> bytes:
        try:
            b = osc_message_builder.OscMessageBuilder(address=path)
            for a in args:
                b.add_arg(a)
            return b.build().dgram
        except Exception:      # python-osc will not build it (a NUL inside a string): the bytes by hand
            return osc_raw(path, args)

    roll = draw(st.randoms(use_true_random=True)).randrange(100)   # uniform (integers() leans small)
    if roll < 10:      # valid: cheap addresses mostly (no pause: the fuzz measures that frames flow)
        path, args = draw(st.sampled_from([("/longlive/tap", []), ("/longlive/resume", []),
                                           ("/longlive/transition", [0]), ("/longlive/tempo", [120.0]),
                                           ("/longlive/arm", [1]), ("/longlive/tempo", [97]),
                                           ("/longlive/rewind", [0]), ("/longlive/prompt", ["a kite over dunes"])]))
        return message(path, args), "valid"
    if roll < 55:
        path = draw(st.sampled_from(OSC_PATHS))
        return message(path, draw(st.lists(osc_arg, max_size=4))), "odd arguments"
    if roll < 65:
        data = bytearray(message(draw(st.sampled_from(OSC_PATHS)), draw(st.lists(osc_arg, max_size=3))))
        for _ in range(draw(st.integers(1, 4))):     # flip, cut or grow
            op = draw(st.integers(0, 2))
            if op == 0 and data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
            elif op == 1 and len(data) > 1:
                del data[draw(st.integers(1, len(data) - 1)):]
            else:
                data += draw(st.binary(min_size=1, max_size=8))
        return bytes(data), "mutated"
    if roll < 75:
        bundle = osc_bundle_builder.OscBundleBuilder(osc_bundle_builder.IMMEDIATELY)
        for _ in range(draw(st.sampled_from([1, 2, 5, 33]))):
            bundle.add_content(osc_message_builder.OscMessageBuilder(
                address=draw(st.sampled_from(["/longlive/tap", "/longlive/nope", "/longlive/seed"]))).build())
        return bundle.build().dgram, "bundle"
    if roll < 80:      # bundles nested deeper than allowed, and bundle elements with wrong sizes
        inner = message("/longlive/tap", [])
        depth = draw(st.integers(1, 7))
        for _ in range(depth):
            size = len(inner) if draw(st.integers(0, 4)) else draw(st.sampled_from([0, -1, 2**31 - 1, len(inner) + 4]))
            inner = b"#bundle\x00" + b"\x00" * 7 + b"\x01" + size.to_bytes(4, "big", signed=True) + inner
        return inner, "nested bundles"
    if roll < 84:
        return b"/" + b"a" * draw(st.sampled_from([4096, 5000, 60000])), "too large"
    if roll < 90:      # odd type tags
        tags = draw(st.text(alphabet="ihfdsbrmtTFNIc[]S", max_size=6))
        return b"/longlive/seed\x00\x00," + tags.encode() + b"\x00" * (4 - (len(tags) + 1) % 4) + draw(
            st.binary(max_size=16)), "odd type tags"
    return draw(st.binary(max_size=100)) if draw(st.booleans()) else b"/" + draw(st.binary(max_size=60)), "random bytes"


def osc_raw(path: str, args: list[Any]) -> bytes:
    """An OSC message's bytes as the spec lays them out, whatever the strings hold."""
    def padded(b: bytes) -> bytes:
        return b + b"\x00" * (4 - len(b) % 4)
    tags, data = ",", b""
    for a in args:
        if a is None:
            tags += "N"
        elif isinstance(a, bool):
            tags += "T" if a else "F"
        elif isinstance(a, int):
            tags, data = (tags + "i", data + a.to_bytes(4, "big", signed=True)) if -2**31 <= a < 2**31 else \
                (tags + "h", data + a.to_bytes(8, "big", signed=True))
        elif isinstance(a, float):
            tags, data = tags + "f", data + struct.pack(">f", a)
        elif isinstance(a, str):
            tags, data = tags + "s", data + padded(a.encode("utf-8", "surrogatepass"))
        else:
            tags, data = tags + "b", data + len(a).to_bytes(4, "big") + a + b"\x00" * (-len(a) % 4)
    return padded(path.encode("utf-8", "surrogatepass")) + padded(tags.encode()) + data


# -- offers --------------------------------------------------------------------------------------------
@st.composite
def offer_body(draw, real_offer: str) -> tuple[Any, str]:
    """An offer for POST /api/offer (as its JSON body's "sdp") or POST /whep: a real one mutated
    line by line, random text, or the wrong shape altogether."""
    roll = draw(st.randoms(use_true_random=True)).randrange(100)   # uniform (integers() leans small)
    if roll < 55:
        lines = real_offer.split("\r\n")
        for _ in range(draw(st.integers(1, 5))):
            op = draw(st.integers(0, 5))
            i = draw(st.integers(0, len(lines) - 1))
            if op == 0:
                del lines[i]
            elif op == 1:
                lines.insert(i, lines[draw(st.integers(0, len(lines) - 1))])
            elif op == 2:
                lines[i] = draw(st.sampled_from(["a=", "m=", "m=video 9 UDP/TLS/RTP/SAVPF", "a=rtpmap:96 VP8/90000",
                                                 "a=setup:bogus", "a=fingerprint:sha-256 zz", "a=ice-ufrag:",
                                                 "a=candidate:1 1 udp 1 host.local 9 typ host",
                                                 "a=candidate:x", "c=IN IP4 256.1.1.1", "a=mid:" + "m" * 300,
                                                 "a=group:BUNDLE 7 8 9", "a=sctp-port:-5", "a=max-message-size:0",
                                                 "a=ssrc:1 cname:" + "c" * 1000, "m=audio 9 RTP/AVP 0", "\x00"]))
            elif op == 3:
                lines[i] = lines[i][:draw(st.integers(0, max(0, len(lines[i]) - 1)))]
            elif op == 4:
                lines[i] = lines[i] + draw(st.text(max_size=10))
            else:
                lines.insert(i, draw(st.text(max_size=40)))
        return "\r\n".join(lines), "mutated offer"
    if roll < 75:
        return draw(st.text(max_size=200)), "random text"
    if roll < 85:
        return draw(st.sampled_from(["", "v=0", "m=", "v=0\r\nm=video", "m=" + "x" * 70_000, real_offer * 3,
                                     real_offer.replace("VP8", "XYZ"), real_offer.replace("recvonly", "sendonly")])), \
            "odd offer"
    return draw(odd_values), "wrong type"


def encode(body: Any, wire: str, fallback: bool = True) -> bytes | str:
    """A draft's body on the wire (ID already replaced). A body one format has no form for goes in
    the other; one neither has a form for is a byte msgpack never starts anything with."""
    if wire == "raw":
        return body
    if wire in ("msgpack", "msgpack-as-text"):
        try:
            data = msgpack.packb(body, use_bin_type=True, default=_msgpack_default)
        except (OverflowError, TypeError, ValueError, UnicodeEncodeError, RecursionError):   # no msgpack form
            return encode(body, "json", fallback=False) if fallback else b"\xc1"
        return data.decode("latin-1") if wire == "msgpack-as-text" else data
    try:
        text = json.dumps(body, default=_json_default, allow_nan=True, ensure_ascii=False)
        text.encode("utf-8")
    except UnicodeEncodeError:      # lone surrogates: escaped (\\ud800), which a JSON reader takes
        text = json.dumps(body, default=_json_default, allow_nan=True)
    except (TypeError, ValueError, RecursionError):  # keys JSON has no form for (bytes): msgpack after all
        return encode(body, "msgpack", fallback=False) if fallback else b"\xc1"
    return text.encode("utf-8") if wire == "json-as-binary" else text


def _msgpack_default(value: Any) -> Any:
    if isinstance(value, (msgpack.ExtType, msgpack.Timestamp)):
        return value
    raise TypeError(type(value).__name__)


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return value.decode("latin-1")
    if isinstance(value, msgpack.ExtType):
        return [value.code, value.data.decode("latin-1")]
    if isinstance(value, msgpack.Timestamp):
        return value.to_unix()
    raise TypeError(type(value).__name__)


def with_id(body: Any, rid: str | int) -> tuple[Any, bool]:
    """The body with every ID placeholder replaced by `rid`; and whether `rid` went in as the id."""
    if isinstance(body, dict):
        out, used = {}, False
        for k, v in body.items():
            if v is ID:
                out[k] = rid
                used = used or k == "id"
            else:
                out[k] = v
        return out, used
    return body, False
