"""Control clients: data channels and WebSockets that steer the stream and hear its events.

The `ControlHub` is where every control message lands, whatever carried it: it decodes and
validates it (`protocol.read_command`), answers anything invalid with an `error` event
(nothing else happens, the stream goes on), hands valid commands to the engine and acks
them once the engine has queued them (a command the engine refuses, because it is
restarting, stopped or has a full queue, or because it names what is not there, a segment
that is not kept, is answered with an `error` carrying the command's id instead, never an
ack; so is an empty cue or a recording that cannot start or stop, here), and fans the
engine's events plus a `stats` event about once a second out to every connected client.
Each client is an `Endpoint` whose `send` never blocks: a client that cannot keep up loses
messages, it never slows the others.

Replies use the format of the client's latest message (msgpack after a binary message,
JSON after a text one); before the first message, a client gets msgpack unless it asked
for JSON (WebSocket `?format=json`, data channel protocol "json").

A WebRTC session's data channel also carries its viewer's `presented` reports, from which
the hub measures prompt-to-photon at that viewer (server.media.photon) and answers `photon`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from aiohttp import web
from aiortc import RTCDataChannel

from streaming.blend import Blend, TransitionSpec

from ..performing.cues import Cue, CueBank, CueError
from ..engine import CommandRefused, Engine
from ..protocol import (MAX_MESSAGE_BYTES, MAX_PROMPT_CHARS, PROTOCOL_VERSION, Ack, ArmCommand, Command, ConflictError,
                       CueCommand, EnhanceCommand, EnhancedEvent, ErrorEvent, Event, FireCommand, Hello, PromptCommand,
                       PhotonEvent, PresentedReport, PromptApplied, ProtocolError, RecordCommand, RewindCommand,
                       StateEvent, Stats, StatusCommand, TapCommand, TempoCommand, TransitionCommand, encode,
                       read_command)
from ..media.photon import NEEDS_VIDEO, Photon, PhotonMeter
from ..keeping.recorder import Recorder, RecordingError
from ..door.roles import NEEDS_PERFORMER, PERFORMER
from ..performing.tempo import LinkTempo, TempoClock

log = logging.getLogger(__name__)

WS_QUEUE = 256                    # messages waiting for one slow WebSocket client
RATE_WINDOW_S = 5.0               # generated and delivered fps are measured over about this long
DC_MAX_BUFFERED = 1 << 20         # bytes waiting in one data channel before messages are dropped
STATE_GAP_S = 0.05                # full state broadcasts at most this often; changes in between go out as one


@dataclass(frozen=True)
class ServerInfo:
    """What does not change while the server runs."""

    config: str
    width: int
    height: int
    fps: float
    embedded_default: bool
    about: str = ""          # what the embedded default is, in a sentence (its preset's `about`)


class ViewerSource(Protocol):
    @property
    def count(self) -> int: ...

    def skipped(self) -> int: ...

    def delivered(self) -> dict[str, int]: ...     # per viewer: distinct new frames sent so far

    def presented_frame(self, session_id: str, rtp_timestamp: int) -> int | None: ...


class Endpoint:
    """One control client. `send` queues or drops; it never blocks and never raises."""

    kind = "endpoint"

    def __init__(self, binary: bool = True, role: str = PERFORMER):
        self.binary = binary
        self.closed = False
        self.role = role                  # performer | viewer (server.door.roles): what it may do
        self.session: str | None = None   # the WebRTC session whose data channel this is

    def send(self, event: Event) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True


class DataChannelEndpoint(Endpoint):
    kind = "datachannel"

    def __init__(self, channel: RTCDataChannel, role: str = PERFORMER):
        super().__init__(binary=channel.protocol != "json", role=role)
        self.channel = channel

    def send(self, event: Event) -> None:
        if self.closed or self.channel.readyState != "open":
            return
        if self.channel.bufferedAmount > DC_MAX_BUFFERED:
            log.debug("data channel %s is backed up; dropping a %s message", self.channel.label, event.TYPE)
            return
        try:
            self.channel.send(encode(event, self.binary))
        except Exception as e:  # the transport went away under us
            log.debug("data channel send failed: %s", e)


class WebSocketEndpoint(Endpoint):
    kind = "websocket"

    def __init__(self, ws: web.WebSocketResponse, binary: bool = True, role: str = PERFORMER):
        super().__init__(binary, role)
        self.ws = ws
        self._queue: asyncio.Queue[bytes | str | None] = asyncio.Queue(WS_QUEUE)
        self._writer = asyncio.create_task(self._write(), name="longlive-ws-writer")

    def send(self, event: Event) -> None:
        if self.closed:
            return
        try:
            self._queue.put_nowait(encode(event, self.binary))
        except asyncio.QueueFull:
            log.debug("WebSocket client is backed up; dropping a %s message", event.TYPE)
        except Exception as e:      # an event that cannot be encoded must not reach the hub (send never raises)
            log.debug("WebSocket send failed: %s", e)

    async def _write(self) -> None:
        while True:
            data = await self._queue.get()
            if data is None or self.ws.closed:
                return
            try:
                if isinstance(data, bytes):
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_str(data)
            except (ConnectionError, RuntimeError) as e:
                log.debug("WebSocket send failed: %s", e)
                return

    def close(self) -> None:
        super().close()
        self._writer.cancel()

    async def wait_closed(self) -> None:
        self._writer.cancel()
        try:
            await self._writer
        except asyncio.CancelledError:
            pass


class ControlHub:
    def __init__(self, engine: Engine, info: ServerInfo, *, viewers: ViewerSource | None = None,
                 stats_interval: float = 1.0, recorder: Recorder | None = None, enhancer: Any = None,
                 cues: CueBank | None = None, tempo: TempoClock | None = None, link: bool = False,
                 wall_clock: Callable[[], float] = time.time, clock: Callable[[], float] = time.monotonic):
        self.engine = engine
        self._clock = clock               # spaces the state broadcasts (STATE_GAP_S)
        self._state_delta: dict[str, Any] = {}      # changes waiting for the next state broadcast
        self._state_timer: asyncio.TimerHandle | None = None
        self._state_sent_at = -float("inf")
        self.state_broadcasts = 0
        self.photon = PhotonMeter()       # prompt-to-photon per viewer
        self.photon_observers: list[Callable[[Photon], None]] = []   # (metrics)
        self._wall = wall_clock           # the clock of prompt_applied.time
        self.cues = cues if cues is not None else CueBank()
        self.tempo = tempo if tempo is not None else TempoClock(clock=engine.clock)
        self.default_transition = TransitionSpec(0)     # switches that name no transition: cuts
        self._want_link = link
        self.link: LinkTempo | None = None
        self._tempo_notice: str | None = None
        self.enhancer_errors = 0          # AI rewrites that fell back to the text as written
        self.info = info
        self.viewers = viewers
        self.recorder = recorder
        self.enhancer = enhancer          # server.enhance.AsyncPromptEnhancer (None: no AI enhancement)
        self._marks: list[tuple[int, int]] = []   # (blocks generated when a prompt joined the history, mark before)
        self._tasks: set[asyncio.Task] = set()
        self.stats_interval = stats_interval
        self._endpoints: set[Endpoint] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._stats_task: asyncio.Task | None = None
        self._last_stats: Stats | None = None
        self.message_limit: Any = None    # server.door.limits.RateLimit per endpoint (create_app sets it; None: no limit)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._unsubscribe = self.engine.subscribe(self.broadcast, asyncio.get_running_loop())
        if self._want_link:
            self.link, self._tempo_notice = LinkTempo.open(self.tempo, asyncio.get_running_loop())
            if self.link is not None:
                self.link.start()
                log.info("following Ableton Link (%d peers)", self.link.peers())
            else:
                log.warning("%s", self._tempo_notice)
        self._stats_task = asyncio.create_task(self._stats_loop(), name="longlive-stats")
        if self.enhancer is not None:
            self.enhancer.session.set_grounding(self.engine.state().prompt)   # the stream's first prompt anchors it
            if self.enhancer.notice:
                log.info("%s", self.enhancer.notice)

    async def stop(self) -> None:
        if self._state_timer is not None:
            self._state_timer.cancel()
            self._state_timer = None
        for task in list(self._tasks):
            task.cancel()
        if self.link is not None:
            await self.link.close()
            self.link = None
        if self._unsubscribe:
            self._unsubscribe()
            self._unsubscribe = None
        if self._stats_task:
            self._stats_task.cancel()
            try:
                await self._stats_task
            except asyncio.CancelledError:
                pass
            self._stats_task = None
        for ep in list(self._endpoints):
            self.detach(ep)

    # -- clients -------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return len(self._endpoints)

    def attach(self, ep: Endpoint) -> None:
        self._endpoints.add(ep)
        ep.send(Hello(protocol=PROTOCOL_VERSION, state={**self.state(), "role": ep.role}))

    def detach(self, ep: Endpoint) -> None:
        self._endpoints.discard(ep)
        if ep.session is not None:
            self.photon.leave(ep.session)
        ep.close()

    def attach_channel(self, channel: RTCDataChannel, role: str = PERFORMER,
                       session: str | None = None) -> DataChannelEndpoint:
        """Serve a WebRTC data channel (hello goes out as soon as it is open); `session`: the
        WebRTC session it belongs to, whose viewer may report what it presents."""
        ep = DataChannelEndpoint(channel, role)
        ep.session = session
        if session is not None:
            self.photon.join(session, self.engine.bus.playhead())

        @channel.on("message")
        def on_message(message: bytes | str) -> None:
            self.receive(ep, message)

        @channel.on("close")
        def on_close() -> None:
            self.detach(ep)

        if channel.readyState == "open":
            self.attach(ep)
        else:
            channel.once("open", lambda: None if ep.closed else self.attach(ep))
        return ep

    def receive(self, ep: Endpoint, data: bytes | str) -> None:
        """One message from a client: validate, then act and acknowledge, or answer an error."""
        ep.binary = not isinstance(data, str)
        over = self.message_limit is not None and not self.message_limit.allow(ep)   # dropped, with an error
        try:
            command = read_command(data)
        except ProtocolError as e:
            log.debug("rejected a control message: %s", e)   # the client hears it; a flood must not fill the log
            ep.send(ErrorEvent(id=e.id, message=self.message_limit.refusal() if over else str(e)))
            return
        if over:
            ep.send(ErrorEvent(id=command.id, message=self.message_limit.refusal()))
            return
        if isinstance(command, PresentedReport) and ep.session is not None:
            self._presented(ep, command)
            return
        self.dispatch(command, ep.send, ep.role)

    def _presented(self, ep: Endpoint, report: PresentedReport) -> None:
        """A viewer's frame on screen: `photon` if it is the first of a switch it had not seen."""
        frame = self.viewers.presented_frame(ep.session, report.rtp_timestamp) if self.viewers else None
        photon = None
        if frame is not None:
            photon = self.photon.presented(ep.session, frame, self._wall() - report.age_ms / 1e3)
        if photon is None:
            ep.send(Ack(id=report.id, command=report.TYPE))
            return
        for observe in self.photon_observers:
            observe(photon)
        ep.send(PhotonEvent(id=photon.switch.id, frame=photon.switch.frame, shown=photon.shown,
                            viewer=photon.viewer, latency_ms=round(photon.latency_s * 1e3, 1)))

    def dispatch(self, command: Command, reply: Callable[[Event], None], role: str = PERFORMER) -> None:
        """Act on a valid command from a peer of `role`: a viewer may ask for the state, and
        every other command of a viewer is answered with an error (roles are checked here,
        where every path's commands enter, and nowhere else). A command's first reply is its
        ack or an `error` with its id, never both, so a refusal the server can know now (an
        empty cue, a segment that is not kept: a `ConflictError`) is made here, for every
        path, before any ack. (The engine's one later refusal: a rewind whose segment the
        shelf drops before the next block boundary; see `Engine.submit`.)"""
        if isinstance(command, StatusCommand):
            reply(StateEvent(id=command.id, state=self.state()))
            return
        if isinstance(command, PresentedReport):
            reply(ErrorEvent(id=command.id, message=NEEDS_VIDEO))
            return
        if role != PERFORMER:
            reply(ErrorEvent(id=command.id, message=NEEDS_PERFORMER.format(command=command.TYPE)))
            return
        if isinstance(command, RecordCommand):
            self._record(command, reply)
            return
        if isinstance(command, EnhanceCommand) or (isinstance(command, PromptCommand) and command.enhance):
            self._spawn(self._enhance_and_reply(command, reply))
            return
        stage = self._STAGE.get(type(command))
        if stage is not None:
            stage(self, command, reply)
            return
        if self._submit(command, reply):
            reply(Ack(id=command.id, command=command.TYPE))

    def _submit(self, command: Command, reply: Callable[[Event], None], **how: Any) -> bool:
        """Hand a command to the engine (a prompt naming no transition gets the default one);
        False, with an error replied, when the engine refuses it (a `ConflictError` when it
        names what is not there: a rewind to a segment that is not kept)."""
        blocks = self.engine.state().blocks
        if isinstance(command, PromptCommand) and command.transition is None and self.default_transition.blocks > 1:
            command = dataclasses.replace(command, transition=self.default_transition)
        try:
            self.engine.submit(command, **how)
        except CommandRefused as e:
            reply((ConflictError if e.conflict else ErrorEvent)(id=command.id, message=str(e)))
            return False
        if self.enhancer is not None and isinstance(command, PromptCommand):
            # every prompt that goes live joins the enhancer's history, so later rewrites stay consistent
            self._marks.append((blocks, self.enhancer.session.mark()))
            self.enhancer.session.accept(command.label)
        elif self.enhancer is not None and isinstance(command, RewindCommand):
            self._revert_history(command.segment)
        return True

    def _ack(self, command: Command, reply: Callable[[Event], None], state_changed: bool = True) -> None:
        reply(Ack(id=command.id, command=command.TYPE))
        if state_changed:
            self.broadcast(StateEvent(state={}))

    # -- the stage: cues, tempo, the default transition -------------------------------------------
    def _set_cue(self, command: CueCommand, reply: Callable[[Event], None]) -> None:
        self.cues.set(command)
        self._ack(command, reply)

    def _arm(self, command: ArmCommand, reply: Callable[[Event], None]) -> None:
        """Encode the cue's conditioning now, beside generation, so firing it costs no encoder time."""
        try:
            cue = self.cues.get(command.cue)
        except CueError as e:
            reply(ConflictError(id=command.id, message=str(e)))
            return
        job = self.engine.encoder.prepare(_conditioning(cue))
        self.cues.arm(command.cue, job)
        loop = asyncio.get_running_loop()
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(self._armed_ready, command.cue))
        self._ack(command, reply)

    def _armed_ready(self, number: int) -> None:
        if self.cues.armed == number:
            self.broadcast(StateEvent(state={}))

    def _fire(self, command: FireCommand, reply: Callable[[Event], None]) -> None:
        """Switch to a cue: at the next block, or quantised to the tempo's next beat or bar."""
        try:
            cue = self.cues.get(command.cue)
        except CueError as e:
            reply(ConflictError(id=command.id, message=str(e)))
            return
        ready = self.cues.take_armed(command.cue)
        blend = cue.prompt
        prompt = PromptCommand(id=command.id, text=blend.single, prompts=None if blend.single is not None else blend,
                               transition=cue.transition)
        due = None if command.quantize == "none" else self.tempo.next(self.engine.clock(), command.quantize)
        if self._submit(prompt, reply, ready=ready, due=due, cue=(command.cue, command.quantize)):
            self._ack(command, reply)
        elif ready is not None:
            self.cues.arm(command.cue, ready)    # refused: it stays armed

    def _set_tempo(self, command: TempoCommand, reply: Callable[[Event], None]) -> None:
        self.tempo.set(command.bpm, command.beats_per_bar)
        if self.link is not None:
            self.link.propose(command.bpm)
        self._ack(command, reply)

    def _tap(self, command: TapCommand, reply: Callable[[Event], None]) -> None:
        # the connection is the tapper (its `send`'s owner): its own clock measures its taps
        self.tempo.tap(command.at, getattr(reply, "__self__", None))
        self._ack(command, reply)

    def _set_transition(self, command: TransitionCommand, reply: Callable[[Event], None]) -> None:
        self.default_transition = TransitionSpec(command.blocks, command.method)
        self._ack(command, reply)

    _STAGE: dict[type, Callable[..., None]] = {CueCommand: _set_cue, ArmCommand: _arm, FireCommand: _fire,
                                               TempoCommand: _set_tempo, TapCommand: _tap,
                                               TransitionCommand: _set_transition}

    def stage_state(self) -> dict[str, Any]:
        """Cues, tempo and the default transition, for the state."""
        armed = self.cues.armed
        tempo = {**self.tempo.state(), "notice": self._tempo_notice,
                 "peers": self.link.peers() if self.link is not None else None}
        t = self.default_transition
        return {"cues": self.cues.listed(), "armed": armed, "armed_ready": self.cues.armed_ready(),
                "tempo": tempo, "transition_default": {"blocks": t.blocks, "method": t.method}}

    # -- AI enhancement ----------------------------------------------------------------------------
    async def enhance(self, command: EnhanceCommand | PromptCommand) -> EnhancedEvent:
        """The AI's rewrite of a command's text (the text itself when there is no enhancer or it fails)."""
        if self.enhancer is None or not self.enhancer.available:
            return EnhancedEvent(id=command.id, input=command.text, text=command.text, source="raw",
                                 error=None if self.enhancer is None else self.enhancer.notice)
        res = await self.enhancer.enhance(command.text)
        if len(res.text.strip()) > MAX_PROMPT_CHARS:     # a prompt's limit holds for the AI's rewrite too
            res = dataclasses.replace(res, text=command.text, source="raw",
                                      error=f"the AI's rewrite is {len(res.text.strip())} characters long; the limit "
                                            f"is {MAX_PROMPT_CHARS}, so the text is used as written")
        if res.error:
            self.enhancer_errors += 1
        return EnhancedEvent(id=command.id, input=command.text, text=res.text, source=res.source, error=res.error,
                             input_tokens=res.input_tokens, output_tokens=res.output_tokens,
                             cost_usd=round(res.cost_usd, 6), ms=round(res.ms, 1))

    async def _enhance_and_reply(self, command: EnhanceCommand | PromptCommand,
                                 reply: Callable[[Event], None]) -> None:
        event = await self.enhance(command)
        reply(event)
        if isinstance(command, PromptCommand):      # enhance: true: what comes back goes live
            live = PromptCommand(id=command.id, text=event.text, transition=command.transition)
            if self._submit(live, reply):
                reply(Ack(id=command.id, command=command.TYPE))

    def _revert_history(self, segment: int) -> None:
        """A rewind: the history goes back to what it was when that segment began."""
        point = next((p for p in self.engine.state().segments if p["segment"] == segment), None)
        if point is None:
            return                      # the engine answers that rewind with an error
        while self._marks and self._marks[-1][0] > point["index"]:
            _, mark = self._marks.pop()
            self.enhancer.session.revert(mark)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="longlive-enhance")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _record(self, command: RecordCommand, reply: Callable[[Event], None]) -> None:
        """Recording on: starts at once (the `recording` event follows). Off: acknowledged at
        once; the files are finalised off the event loop and a `recording` event says when."""
        if self.recorder is None:
            reply(ConflictError(id=command.id, message="this server has no recordings folder"))
            return
        if command.on:
            try:
                self.recorder.start()
            except RecordingError as e:
                reply(ConflictError(id=command.id, message=str(e)))
                return
        elif not self.recorder.recording:
            reply(ConflictError(id=command.id, message="nothing is being recorded"))
            return
        else:
            asyncio.get_running_loop().run_in_executor(None, self.recorder.stop)
        reply(Ack(id=command.id, command=command.TYPE))

    def broadcast(self, event: Event) -> None:
        """Send an event to every client. A state change (a `state` without an id) goes out as
        the whole state at once, unless one went out less than STATE_GAP_S ago: then the
        changes wait and go out together when the gap ends, so a burst of commands (taps, cue
        edits, a MIDI fader) costs one state per gap for every client, not one per command."""
        if isinstance(event, PromptApplied):
            self.photon.applied(event)
        if isinstance(event, StateEvent) and event.id is None:
            self._state_delta.update(event.state)
            if self._state_timer is not None:
                return                                   # one is due: it carries this change too
            wait = self._state_sent_at + STATE_GAP_S - self._clock()
            if wait > 0:
                try:
                    self._state_timer = asyncio.get_running_loop().call_later(wait, self._send_state)
                    return
                except RuntimeError:                     # no event loop (a synchronous caller): now
                    pass
            self._send_state()
            return
        for ep in list(self._endpoints):
            ep.send(event)

    def _send_state(self) -> None:
        self._state_timer = None
        delta, self._state_delta = self._state_delta, {}
        self._state_sent_at = self._clock()
        self.state_broadcasts += 1
        event = StateEvent(state={**self.state(), **delta})
        for ep in list(self._endpoints):
            ep.send(event)

    # -- state and stats -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        s = self.engine.state()
        t = self.engine.timing()
        return {
            "protocol": PROTOCOL_VERSION,
            "config": self.info.config,
            "embedded_default": self.info.embedded_default,
            "about": self.info.about,
            "width": self.info.width,
            "height": self.info.height,
            "fps": self.info.fps,
            "prompt": s.prompt,
            "seed": s.seed,
            "paused": s.paused,
            "running": s.running,
            "engine": s.status,
            "failed": s.failed,
            "restarts": s.restarts,
            "pending_prompt": s.pending_prompt,
            "block": t.block,
            "frame": self.engine.bus.playhead(),
            "generated": self.engine.bus.next_seq,
            "lead_blocks": self.engine.lead_blocks,
            "viewers": self.viewers.count if self.viewers else 0,
            "viewers_by_kind": self.viewers.counts() if hasattr(self.viewers, "counts") else None,
            "encoder": self.viewers.encoder.stats() if hasattr(self.viewers, "encoder") else None,
            "controllers": self.count,
            "prompts": s.history,
            "segments": s.segments,
            "timeline": s.timeline,
            "transition": s.transition,
            "last_fire": s.last_fire,
            **self.stage_state(),
            "recording": self.recorder.status() if self.recorder else None,
            "enhancer": None if self.enhancer is None else {"available": self.enhancer.available,
                                                            "notice": self.enhancer.notice},
            "stats": self._last_stats.to_wire() if self._last_stats else None,
            "limits": {"message_bytes": MAX_MESSAGE_BYTES, "prompt_chars": MAX_PROMPT_CHARS},
        }

    async def _stats_loop(self) -> None:
        bus = self.engine.bus
        prev_t, prev_seq = time.monotonic(), bus.playhead()
        rates = FrameRates(RATE_WINDOW_S)
        rates.add(prev_t, bus.next_seq, self.viewers.delivered() if self.viewers else {})
        # after a pause, resume, seed or engine restart (each announced with a `state` event) the rates
        # are measured from then on, not across it; a pause and resume within one interval included.
        # Other state events (a prompt applied) leave the window alone.
        state_changed = asyncio.Event()
        s = self.engine.state()
        stream = [(s.seed, s.paused, getattr(s, "status", None), getattr(s, "restarts", None))]

        def on_event(event: Event) -> None:
            if isinstance(event, StateEvent):
                now = tuple(event.state.get(k, old) for k, old in zip(("seed", "paused", "engine", "restarts"),
                                                                      stream[0]))
                if now != stream[0]:
                    stream[0] = now
                    state_changed.set()

        unsubscribe = self.engine.subscribe(on_event, asyncio.get_running_loop())
        paused = bus.paused
        try:
            while True:
                await asyncio.sleep(self.stats_interval)
                now, seq = time.monotonic(), bus.playhead()
                fps = (seq - prev_seq) / (now - prev_t) if prev_seq >= 0 and now > prev_t else 0.0
                prev_t, prev_seq = now, seq
                if state_changed.is_set() or bus.paused != paused:
                    state_changed.clear()
                    paused = bus.paused
                    rates.reset()
                rates.add(now, bus.next_seq, self.viewers.delivered() if self.viewers else {})
                self._publish_stats(rates, fps, seq)
        finally:
            unsubscribe()

    def _publish_stats(self, rates: FrameRates, fps: float, seq: int) -> None:
        bus = self.engine.bus
        t = self.engine.timing()
        delivered = rates.delivered_fps()
        recording = self.recorder.status() if self.recorder else None
        self._last_stats = Stats(
            fps=round(fps, 2), gen_fps=round(t.gen_fps, 1), block_ms=round(t.block_ms, 1),
            dit_ms=round(t.dit_ms, 1), decode_ms=round(t.decode_ms, 1),
            generated_fps=_round(rates.generated_fps()),
            delivered_fps=_round(statistics.median(delivered) if delivered else None),
            delivered_fps_min=_round(min(delivered) if delivered else None),
            rate_window_s=round(rates.span(), 2),
            viewers=self.viewers.count if self.viewers else 0, controllers=self.count,
            block=t.block, frame=seq, buffered=int(bus.ahead()),
            skipped=self.viewers.skipped() if self.viewers else 0, paused=bus.paused,
            recording_s=recording["seconds"] if recording else None)
        self.broadcast(self._last_stats)


class FrameRates:
    """Generated and delivered frame rates over a sliding window of samples (for `Stats`).

    Each sample is (time, frames published to the bus so far, {viewer: distinct frames
    delivered so far}). The window reaches back to the newest sample at least `window_s`
    old, so a rate covers whole blocks more often than not: blocks arrive 12 frames at a
    time, and over one second the count would jump between 12 and 24 at 16 fps.
    """

    def __init__(self, window_s: float):
        self.window_s = window_s
        self._samples: collections.deque[tuple[float, int, dict[str, int]]] = collections.deque()

    def reset(self) -> None:
        self._samples.clear()

    def add(self, t: float, generated: int, delivered: dict[str, int]) -> None:
        self._samples.append((t, generated, dict(delivered)))
        while len(self._samples) > 2 and t - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def span(self) -> float:
        """Seconds the rates cover (0 until there are two samples)."""
        return self._samples[-1][0] - self._samples[0][0] if len(self._samples) > 1 else 0.0

    def generated_fps(self) -> float | None:
        """Frames the engine published per second of wall time, from the first sample in the
        window after the first frame ever (the time before the stream started is not counted);
        None until measurable."""
        if not self._samples:
            return None
        t1, g1, _ = self._samples[-1]
        t0, g0 = next(((t, g) for t, g, _ in self._samples if g > 0), (t1, g1))
        return (g1 - g0) / (t1 - t0) if t1 > t0 else None

    def delivered_fps(self) -> list[float]:
        """Per viewer now watching: distinct new frames sent per second, from the first sample in
        the window at which it had been sent a frame (connecting, and a viewer that got its first
        frame since the last sample, are left out)."""
        t1, _, now = self._samples[-1] if self._samples else (0.0, 0, {})
        out = []
        for viewer, count in now.items():
            first = next(((t, d[viewer]) for t, _, d in self._samples if d.get(viewer, 0) > 0), None)
            if first is not None and t1 > first[0]:
                out.append((count - first[1]) / (t1 - first[0]))
        return out


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _conditioning(cue: Cue) -> str | Blend:
    return cue.prompt.single if cue.prompt.single is not None else cue.prompt
