"""OSC over UDP, both ways: OSC messages steer the stream, and the stream's state goes back as OSC.

Receiving (`--osc PORT`, on `--osc-host`, 127.0.0.1 unless told): each UDP datagram is an
OSC message or bundle, read with python-osc. Every message's address is looked up in one
table (`ADDRESSES`), its arguments become a protocol map (`{"type": "seed", "seed": 3}`)
and that map goes through `protocol.parse_command`, like a message on any other path, so
the types, the ranges and the error sentences are the protocol's. The command then goes to
`ControlHub.dispatch`. Anything that cannot be used (an unknown address, the wrong number
of arguments, a wrong type, a packet over `MAX_PACKET_BYTES`, bytes that are not OSC, a
bundle with more than `MAX_BUNDLE_MESSAGES` messages) is refused: nothing changes and the
stream goes on. Refusals are logged at debug level only, so a flood cannot fill the log.

Replying (`--osc-reply HOST:PORT`): acks (`/longlive/ack s`, the command's type) and
refusals (`/longlive/error s`, the sentence) of OSC commands go there, and an `Endpoint`
attached to the hub turns the stream's events into OSC messages (`REPLIES`): the prompt,
the armed cue, fps, bpm, the engine's status, recording, prompts applied. A small task sends
`/longlive/state/beat` (1..beats_per_bar) on each beat of the hub's tempo clock. Sending
never blocks and never raises: with no one listening, or a socket backed up, messages drop.

Bundles: their messages are all checked first and applied together (one bad message refuses
the whole bundle); time tags are not waited for, a bundle is applied when it arrives. OSC
address patterns (`*`, `?`, `[...]`, `{...}`) are not expanded: addresses match exactly.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

from pythonosc import osc_message, osc_message_builder
from pythonosc.parsing import osc_types

from streaming.errors import UserError, one_line

from .hub import Endpoint
from ..protocol import (Ack, Command, ErrorEvent, Event, Hello, Notice, PromptApplied, ProtocolError, RecordingEvent,
                       StateEvent, Stats, parse_command)

log = logging.getLogger(__name__)

PREFIX = "/longlive/"
MAX_PACKET_BYTES = 4096          # one UDP datagram (larger ones are refused unread)
MAX_BUNDLE_MESSAGES = 32         # messages in one packet, nested bundles included
MAX_BUNDLE_DEPTH = 4             # bundles within bundles
BEAT_POLL_S = 0.1                # the beat task looks at the tempo at least this often (a BPM change lands)
# the OSC type tags python-osc reads (i h f d s b r m t T F N and arrays); others are refused before reading
READABLE_TAGS = frozenset("ihfdsbrmtTFN[]")
_BUNDLE = b"#bundle\x00"


# -- the address table ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Arg:
    name: str                     # the protocol field it becomes
    tags: str                     # the OSC type tags that fit ("if": an int or a float)
    doc: str


@dataclass(frozen=True)
class Address:
    path: str
    command: str                  # the protocol command type it becomes
    args: tuple[Arg, ...] = ()
    optional: int = 0             # how many of the last args may be left out
    example: tuple[Any, ...] = ()
    doc: str = ""
    convert: Callable[[list[Any]], dict[str, Any]] | None = None   # args -> fields, when not one to one

    @property
    def signature(self) -> str:
        """The arguments as `cue: i, [quantize: s]`."""
        required = len(self.args) - self.optional
        return ", ".join(f"{a.name}: {a.tags}" if i < required else f"[{a.name}: {a.tags}]"
                         for i, a in enumerate(self.args))

    def to_map(self, args: list[Any]) -> dict[str, Any]:
        """The protocol map for these arguments (the count checked; the types are parse_command's)."""
        required = len(self.args) - self.optional
        if not required <= len(args) <= len(self.args):
            raise ProtocolError(f"{self.path} takes {_count(required, len(self.args))}"
                                f"{f' ({self.signature})' if self.args else ''}, not {len(args)}")
        fields = self.convert(args) if self.convert else {a.name: v for a, v in zip(self.args, args)}
        return {"type": self.command, **fields}

    def describe(self) -> dict[str, Any]:
        """One row of GET /api/osc."""
        required = len(self.args) - self.optional
        example_map = self.to_map(list(self.example))
        return {"address": self.path, "command": self.command, "doc": self.doc,
                "args": [{"name": a.name, "tags": a.tags, "required": i < required, "doc": a.doc}
                         for i, a in enumerate(self.args)],
                "typetags": ["," + "".join(a.tags for a in self.args[:n]) for n in range(required, len(self.args) + 1)],
                "example": {"args": list(self.example), "message": " ".join([self.path, *map(_show, self.example)]),
                            "command": example_map}}


def _record(args: list[Any]) -> dict[str, Any]:
    value = args[0]
    if isinstance(value, bool):              # T / F
        return {"on": value}
    if isinstance(value, int) and value in (0, 1):
        return {"on": value == 1}
    what = repr(value) if isinstance(value, (int, float)) else _kind(value)
    raise ProtocolError(f"/longlive/record takes 1 (start) or 0 (stop), not {what}")


ADDRESSES: tuple[Address, ...] = (
    Address(PREFIX + "prompt", "prompt", (Arg("text", "s", "the new prompt"),),
            example=("a lighthouse in a storm at night",), doc="switch to a new prompt at the next block"),
    Address(PREFIX + "cue", "fire", (Arg("cue", "i", "cue number, 1..99"),
                                     Arg("quantize", "s", "none | beat | bar (default none)")),
            optional=1, example=(1, "bar"), doc="fire a stored cue, now or on the next beat or bar"),
    Address(PREFIX + "arm", "arm", (Arg("cue", "i", "cue number, 1..99"),),
            example=(2,), doc="arm a cue: encode its prompt now, so firing it costs nothing"),
    Address(PREFIX + "transition", "transition", (Arg("blocks", "i", "blocks a switch glides over, 0: cut"),),
            example=(4,), doc="set the default transition"),
    Address(PREFIX + "seed", "seed", (Arg("seed", "i", "the new noise seed (h for 64-bit)"),),
            example=(42,), doc="restart the stream with a new seed, keeping the prompt"),
    Address(PREFIX + "pause", "pause", doc="freeze playback; generation stops at the next block"),
    Address(PREFIX + "resume", "resume", doc="continue playback and generation"),
    Address(PREFIX + "record", "record", (Arg("on", "i", "1 starts recording, 0 stops it (T/F too)"),),
            example=(1,), doc="start or stop recording", convert=_record),
    Address(PREFIX + "rewind", "rewind", (Arg("segment", "i", "a kept prompt segment's number"),),
            example=(0,), doc="go back to the start of a kept prompt segment"),
    Address(PREFIX + "tempo", "tempo", (Arg("bpm", "f", "beats per minute, 20..300 (an int is fine)"),),
            example=(128.0,), doc="set the tempo"),
    Address(PREFIX + "tap", "tap", doc="tap tempo: a beat is now"),
)
BY_PATH: dict[str, Address] = {a.path: a for a in ADDRESSES}

# what the server sends to the reply target: address, type tags, what it carries
REPLIES: tuple[tuple[str, str, str], ...] = (
    (PREFIX + "ack", "s", "an OSC command was queued: its command type"),
    (PREFIX + "error", "s", "an OSC command was refused, or the stream reported an error: the sentence"),
    (PREFIX + "notice", "s", "something to know that is not an error"),
    (PREFIX + "applied", "s", "a prompt reached the stream (prompt_applied): its text"),
    (PREFIX + "state/prompt", "s", "the current prompt"),
    (PREFIX + "state/armed", "i", "the armed cue, 0: none"),
    (PREFIX + "state/engine", "s", "the engine's status (running, restarting, stopped, ...)"),
    (PREFIX + "state/recording", "i", "1 while recording, else 0"),
    (PREFIX + "state/fps", "f", "frames played per second (each stats event, about once a second)"),
    (PREFIX + "state/bpm", "f", "the tempo, when it changes"),
    (PREFIX + "state/beat", "i", "on each beat: the beat within the bar, 1..beats_per_bar"),
)


def to_command(address: str, args: list[Any]) -> Command:
    """One OSC message (address, arguments) -> its typed command, or ProtocolError."""
    entry = BY_PATH.get(address)
    if entry is None:
        names = ", ".join(a.path[len(PREFIX):] for a in ADDRESSES)
        raise ProtocolError(f"unknown OSC address {_short(address)!r}; the addresses are {PREFIX} + one of {names}")
    return parse_command(entry.to_map(list(args)))


# -- reading packets --------------------------------------------------------------------------------
def read_packet(data: bytes) -> list[tuple[str, list[Any]]]:
    """One UDP datagram -> its messages as (address, arguments), bundles flattened in order; or ProtocolError."""
    if len(data) > MAX_PACKET_BYTES:
        raise ProtocolError(f"the OSC packet is {len(data)} bytes; the limit is {MAX_PACKET_BYTES}")
    if not (data.startswith(b"/") or data.startswith(_BUNDLE)):
        raise ProtocolError("the packet is not OSC: a message starts with '/' and a bundle with '#bundle'")
    out: list[tuple[str, list[Any]]] = []
    try:
        _read(data, out, 0)
    except ProtocolError:
        raise
    except Exception as e:        # python-osc raises its ParseErrors, and UnicodeDecodeError for bad strings
        raise ProtocolError(f"the packet is not valid OSC ({_short(_reason(e), 80)})") from None
    return out


def _read(data: bytes, out: list[tuple[str, list[Any]]], depth: int) -> None:
    if data.startswith(_BUNDLE):
        if depth >= MAX_BUNDLE_DEPTH:
            raise ProtocolError(f"the OSC bundle nests more than {MAX_BUNDLE_DEPTH} bundles deep")
        _, index = osc_types.get_date(data, len(_BUNDLE))
        while index < len(data):
            size, index = osc_types.get_int(data, index)
            if size <= 0 or index + size > len(data):
                raise ProtocolError("the packet is not valid OSC (a bundle element's size is wrong)")
            _read(data[index:index + size], out, depth + 1)
            index += size
        return
    if not data.startswith(b"/"):
        raise ProtocolError("the packet is not valid OSC (a bundle element is neither a message nor a bundle)")
    if len(out) >= MAX_BUNDLE_MESSAGES:
        raise ProtocolError(f"the OSC bundle holds more than the limit of {MAX_BUNDLE_MESSAGES} messages")
    # the type tags are checked before python-osc reads the message: it logs a warning for each one it cannot read
    _, index = osc_types.get_string(data, 0)
    if index < len(data):
        tags, _ = osc_types.get_string(data, index)
        bad = sorted(set(tags[1:]) - READABLE_TAGS) if tags.startswith(",") else []
        if bad:
            raise ProtocolError(f"OSC type tag {bad[0]!r} is not supported (i, h, f, d, s, b, T, F, N)")
    message = osc_message.OscMessage(data)
    out.append((message.address, message.params))


def build(address: str, *args: Any) -> bytes:
    """One OSC message's bytes (python-osc): str -> s, bool -> T/F, int -> i (h when large), float -> f."""
    builder = osc_message_builder.OscMessageBuilder(address=address)
    for value in args:
        builder.add_arg(value)
    return builder.build().dgram


# -- the options and the server ---------------------------------------------------------------------
@dataclass
class OscOptions:
    """What `longlive serve --osc ...` asked for (create_app's `osc=`)."""

    port: int | None = None                    # UDP port to listen on; None: not listening, 0: any free port
    host: str = "127.0.0.1"
    reply: tuple[str, int] | None = None       # where acks, errors and state go; None: nowhere
    sock: socket.socket | None = field(default=None, repr=False)   # already bound (serve takes the port early)
    allow: frozenset[str] | None = None        # the sender addresses taken (None: any that reaches the port)

    @property
    def enabled(self) -> bool:
        return self.port is not None or self.sock is not None or self.reply is not None


def options_from_args(args: Any) -> OscOptions | None:
    """The OSC options from parsed `serve` arguments (None when no OSC flag was given). The port is bound
    here, so a port in use is said before the model loads."""
    port, host, reply = getattr(args, "osc", None), getattr(args, "osc_host", "127.0.0.1"), \
        getattr(args, "osc_reply", None)
    if port is None and reply is None:
        return None
    allow = set(getattr(args, "osc_allow", None) or ())
    if getattr(args, "token", None) or allow:       # a locked server takes OSC from this machine and the listed
        allow |= {"127.0.0.1", "::1"}
    return OscOptions(port=port, host=host, reply=reply, sock=None if port is None else bind(host, port),
                      allow=frozenset(allow) if allow else None)


def bind(host: str, port: int) -> socket.socket:
    """A UDP socket bound to host:port, or UserError in one sentence."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, kind, proto)
    except socket.gaierror:
        raise UserError(f"cannot listen for OSC on {host}:{port}: unknown host {host!r}") from None
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"UDP port {port} on {host} is already in use; pick another with --osc") from None
        raise UserError(f"cannot listen for OSC on {host}:{port}: {e.strerror or e}") from None
    sock.setblocking(False)
    return sock


def format_target(target: tuple[str, int] | None) -> str | None:
    if target is None:
        return None
    host, port = target
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class OscServer:
    """OSC for one hub: `start()` binds and attaches, `stop()` closes; `handle(data)` is one datagram."""

    def __init__(self, hub: Any, options: OscOptions):
        self.hub = hub
        self.options = options
        self._receiver: asyncio.DatagramTransport | None = None
        self._sender: _Sender | None = None
        self._endpoint: OscEndpoint | None = None
        self._beats: asyncio.Task | None = None
        self.address: tuple[str, int] | None = None     # where it listens, once started
        self.received = 0                                # datagrams
        self.refused = 0                                 # datagrams or messages refused
        self.limit: Any = None          # server.door.limits.RateLimit per sender address (create_app sets it)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        opts = self.options
        if opts.sock is not None or opts.port is not None:
            sock = opts.sock if opts.sock is not None else bind(opts.host, opts.port)
            opts.sock = None
            self._receiver, _ = await loop.create_datagram_endpoint(lambda: _Receiver(self), sock=sock)
            self.address = sock.getsockname()[:2]
        if opts.reply is not None:
            try:
                transport, self._sender = await loop.create_datagram_endpoint(_Sender, remote_addr=opts.reply)
            except OSError as e:
                await self.stop()
                raise UserError(f"cannot send OSC to {format_target(opts.reply)}: "
                                f"{getattr(e, 'strerror', None) or one_line(e)}") from None
            self._endpoint = OscEndpoint(self._sender)
            self.hub.attach(self._endpoint)
            self._beats = loop.create_task(self._beat_loop(), name="longlive-osc-beats")
        if self.address or self._sender:
            log.info("OSC: %s%s", f"listening on {format_target(self.address)}" if self.address else "not listening",
                     f", replies to {format_target(opts.reply)}" if opts.reply else "")

    async def stop(self) -> None:
        if self._beats is not None:
            self._beats.cancel()
            try:
                await self._beats
            except asyncio.CancelledError:
                pass
            self._beats = None
        if self._endpoint is not None:
            self.hub.detach(self._endpoint)
            self._endpoint = None
        if self._receiver is not None:
            self._receiver.close()
            self._receiver = None
        if self._sender is not None:
            self._sender.close()
            self._sender = None

    # -- receiving ----------------------------------------------------------------------------------
    def handle(self, data: bytes, source: str | None = None) -> None:
        """One datagram (from address `source`): every message checked first, then each command
        dispatched; or one refusal."""
        self.received += 1
        allow = self.options.allow
        if source is not None and source.startswith("::ffff:"):     # an IPv4 sender on a dual-stack socket
            source = source[len("::ffff:"):]
        if allow is not None and source is not None and source not in allow:
            self.refused += 1
            log.debug("refused OSC from %s (not in --osc-allow)", source)
            self.send(PREFIX + "error", f"OSC from {source} is not taken: this server takes OSC from "
                                        f"{', '.join(sorted(allow))} (--osc-allow)")
            return
        if self.limit is not None and not self.limit.allow(source or "?"):
            self.refused += 1
            self.send(PREFIX + "error", self.limit.refusal())
            return
        try:
            commands = [to_command(address, args) for address, args in read_packet(bytes(data))]
        except ProtocolError as e:
            self.refused += 1
            log.debug("refused an OSC packet: %s", e)    # the reply target hears it; a flood must not fill the log
            self.send(PREFIX + "error", str(e))
            return
        for command in commands:
            self.hub.dispatch(command, self._reply)

    def _reply(self, event: Event) -> None:
        if isinstance(event, Ack):
            self.send(PREFIX + "ack", event.command)
        elif isinstance(event, ErrorEvent):
            self.refused += 1
            log.debug("an OSC command was refused: %s", event.message)
            self.send(PREFIX + "error", event.message)

    def send(self, address: str, *args: Any) -> None:
        if self._sender is not None:
            self._sender.send(build(address, *args))

    # -- the beat --------------------------------------------------------------------------------
    async def _beat_loop(self) -> None:
        """`/longlive/state/beat` on each beat of hub.tempo (and `/longlive/state/bpm` when the tempo changes)."""
        last_beat: int | None = None
        last_bpm: float | None = None
        while True:
            tempo = getattr(self.hub, "tempo", None)
            if tempo is None:
                await asyncio.sleep(BEAT_POLL_S * 5)
                continue
            bpm = float(tempo.bpm)
            if bpm != last_bpm:
                last_bpm = bpm
                self.send(PREFIX + "state/bpm", bpm)
            now = tempo.clock()
            beat = math.floor(tempo.beat_at(now) + 1e-9)
            if last_beat is not None and beat > last_beat:
                last_beat = beat
                self.send(PREFIX + "state/beat", beat % max(1, int(tempo.beats_per_bar)) + 1)
            elif last_beat is None or beat < last_beat:
                last_beat = beat          # the first look, or the clock moved back (a tap, a Link jump)
            wait = tempo.next_beat(now + 1e-6) - now
            await asyncio.sleep(min(max(wait, 0.0), BEAT_POLL_S) + 1e-4)

    # -- GET /api/osc -----------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return describe(self.options, self.address, listening=self._receiver is not None)


def describe(options: OscOptions | None, address: tuple[str, int] | None = None,
             listening: bool = False) -> dict[str, Any]:
    """What GET /api/osc answers: whether OSC is on, where, and the address table."""
    return {
        "enabled": bool(options and options.enabled),
        "listening": listening,
        "host": address[0] if address else (options.host if options else None),
        "port": address[1] if address else (options.port if options else None),
        "reply": format_target(options.reply) if options else None,
        "limits": {"packet_bytes": MAX_PACKET_BYTES, "bundle_messages": MAX_BUNDLE_MESSAGES,
                   "bundle_depth": MAX_BUNDLE_DEPTH},
        "addresses": [a.describe() for a in ADDRESSES],
        "replies": [{"address": path, "tags": tags, "doc": doc} for path, tags, doc in REPLIES],
    }


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, server: OscServer):
        self.server = server

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self.server.handle(data, addr[0] if isinstance(addr, tuple) and addr else None)
        except Exception:        # a bug here must not end the endpoint
            log.exception("OSC packet handling failed")

    def error_received(self, exc: Exception) -> None:
        log.debug("OSC socket error: %s", exc)


class _Sender(asyncio.DatagramProtocol):
    """The reply socket: `send` drops while the socket is backed up or gone; it never raises."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.paused = False
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport      # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def error_received(self, exc: Exception) -> None:
        log.debug("OSC reply not delivered: %s", exc)    # nobody listening (ICMP port unreachable) and the like

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def send(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing() or self.paused:
            self.dropped += 1
            return
        try:
            self.transport.sendto(data)
        except OSError as e:
            log.debug("OSC reply not sent: %s", e)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class OscEndpoint(Endpoint):
    """The hub's events as OSC messages to the reply target."""

    kind = "osc"

    def __init__(self, sender: _Sender):
        super().__init__(binary=True)
        self.sender = sender

    def send(self, event: Event) -> None:
        if self.closed:
            return
        try:
            for address, *args in self.messages(event):
                self.sender.send(build(address, *args))
        except Exception as e:  # an event this mapping does not expect must not reach the hub
            log.debug("OSC: could not send a %s event: %s", event.TYPE, e)

    @staticmethod
    def messages(event: Event) -> list[tuple[Any, ...]]:
        """The OSC messages (address, args...) an event becomes."""
        if isinstance(event, (Hello, StateEvent)):
            return _state_messages(event.state)
        if isinstance(event, Stats):
            return [(PREFIX + "state/fps", float(event.fps))]
        if isinstance(event, PromptApplied):
            return [(PREFIX + "applied", event.text), (PREFIX + "state/prompt", event.text)]   # it is live now
        if isinstance(event, RecordingEvent):
            return [(PREFIX + "state/recording", 1 if event.status == "started" else 0)]
        if isinstance(event, ErrorEvent):
            return [(PREFIX + "error", event.message)]
        if isinstance(event, Notice):
            return [(PREFIX + "notice", event.message)]
        return []


def _state_messages(state: dict[str, Any]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(state.get("prompt"), str):
        out.append((PREFIX + "state/prompt", state["prompt"]))
    armed = state.get("armed")
    if isinstance(armed, dict):
        armed = armed.get("cue")
    out.append((PREFIX + "state/armed", armed if isinstance(armed, int) and not isinstance(armed, bool) else 0))
    if isinstance(state.get("engine"), str):
        out.append((PREFIX + "state/engine", state["engine"]))
    if "recording" in state:
        rec = state["recording"]
        out.append((PREFIX + "state/recording", 1 if isinstance(rec, dict) and not rec.get("stopping") else 0))
    tempo = state.get("tempo")
    bpm = tempo.get("bpm") if isinstance(tempo, dict) else None
    if isinstance(bpm, (int, float)) and not isinstance(bpm, bool):
        out.append((PREFIX + "state/bpm", float(bpm)))
    return out


# -- helpers ------------------------------------------------------------------------------------------------
def _reason(exc: BaseException) -> str:
    """The innermost message of a python-osc ParseError (they wrap one another in their args)."""
    while True:
        inner = next((a for a in reversed(exc.args) if isinstance(a, BaseException)), None)
        if inner is None:
            return one_line(exc)
        exc = inner


def _count(lo: int, hi: int) -> str:
    if hi == 0:
        return "no arguments"
    if lo == hi:
        return f"{lo} argument{'s' if lo != 1 else ''}"
    return f"{lo} or {hi} arguments" if hi == lo + 1 else f"{lo} to {hi} arguments"


def _kind(value: Any) -> str:
    return {str: "a string", float: "a float", bytes: "a blob", type(None): "nil", list: "an array"}.get(
        type(value), type(value).__name__)


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n] + "..."
