"""Control clients: data channels and WebSockets that steer the stream and hear its events.

The `ControlHub` is where every control message lands, whatever carried it: it decodes and
validates it (`protocol.read_command`), answers anything invalid with an `error` event
(nothing else happens, the stream goes on), hands valid commands to the engine and acks
them, and fans the engine's events plus a `stats` event about once a second out to every
connected client. Each client is an `Endpoint` whose `send` never blocks: a client that
cannot keep up loses messages, it never slows the others.

Replies use the format of the client's latest message (msgpack after a binary message,
JSON after a text one); before the first message, a client gets msgpack unless it asked
for JSON (WebSocket `?format=json`, data channel protocol "json").
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from aiohttp import web
from aiortc import RTCDataChannel

from .engine import Engine
from .protocol import (MAX_MESSAGE_BYTES, MAX_PROMPT_CHARS, PROTOCOL_VERSION, Ack, Command, ErrorEvent, Event, Hello,
                       ProtocolError, StateEvent, Stats, StatusCommand, encode, read_command)

log = logging.getLogger(__name__)

WS_QUEUE = 256                    # messages waiting for one slow WebSocket client
DC_MAX_BUFFERED = 1 << 20         # bytes waiting in one data channel before messages are dropped


@dataclass(frozen=True)
class ServerInfo:
    """What does not change while the server runs."""

    config: str
    width: int
    height: int
    fps: float
    embedded_default: bool


class ViewerSource(Protocol):
    @property
    def count(self) -> int: ...

    def skipped(self) -> int: ...


class Endpoint:
    """One control client. `send` queues or drops; it never blocks and never raises."""

    kind = "endpoint"

    def __init__(self, binary: bool = True):
        self.binary = binary
        self.closed = False

    def send(self, event: Event) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True


class DataChannelEndpoint(Endpoint):
    kind = "datachannel"

    def __init__(self, channel: RTCDataChannel):
        super().__init__(binary=channel.protocol != "json")
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

    def __init__(self, ws: web.WebSocketResponse, binary: bool = True):
        super().__init__(binary)
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
                 stats_interval: float = 1.0):
        self.engine = engine
        self.info = info
        self.viewers = viewers
        self.stats_interval = stats_interval
        self._endpoints: set[Endpoint] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._stats_task: asyncio.Task | None = None
        self._last_stats: Stats | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._unsubscribe = self.engine.subscribe(self.broadcast, asyncio.get_running_loop())
        self._stats_task = asyncio.create_task(self._stats_loop(), name="longlive-stats")

    async def stop(self) -> None:
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
        ep.send(Hello(protocol=PROTOCOL_VERSION, state=self.state()))

    def detach(self, ep: Endpoint) -> None:
        self._endpoints.discard(ep)
        ep.close()

    def attach_channel(self, channel: RTCDataChannel) -> DataChannelEndpoint:
        """Serve a WebRTC data channel (hello goes out as soon as it is open)."""
        ep = DataChannelEndpoint(channel)

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
        try:
            command = read_command(data)
        except ProtocolError as e:
            log.info("rejected a control message: %s", e)
            ep.send(ErrorEvent(id=e.id, message=str(e)))
            return
        self.dispatch(command, ep.send)

    def dispatch(self, command: Command, reply: Callable[[Event], None]) -> None:
        if isinstance(command, StatusCommand):
            reply(StateEvent(id=command.id, state=self.state()))
            return
        self.engine.submit(command)
        reply(Ack(id=command.id, command=command.TYPE))

    def broadcast(self, event: Event) -> None:
        if isinstance(event, StateEvent) and event.id is None:
            event = StateEvent(state={**self.state(), **event.state})
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
            "width": self.info.width,
            "height": self.info.height,
            "fps": self.info.fps,
            "prompt": s.prompt,
            "seed": s.seed,
            "paused": s.paused,
            "running": s.running,
            "failed": s.failed,
            "block": t.block,
            "frame": self.engine.bus.playhead(),
            "lead_blocks": self.engine.lead_blocks,
            "viewers": self.viewers.count if self.viewers else 0,
            "controllers": self.count,
            "prompts": s.history,
            "stats": self._last_stats.to_wire() if self._last_stats else None,
            "limits": {"message_bytes": MAX_MESSAGE_BYTES, "prompt_chars": MAX_PROMPT_CHARS},
        }

    async def _stats_loop(self) -> None:
        bus = self.engine.bus
        prev_t, prev_seq = time.monotonic(), bus.playhead()
        while True:
            await asyncio.sleep(self.stats_interval)
            now, seq = time.monotonic(), bus.playhead()
            fps = (seq - prev_seq) / (now - prev_t) if prev_seq >= 0 and now > prev_t else 0.0
            prev_t, prev_seq = now, seq
            t = self.engine.timing()
            self._last_stats = Stats(
                fps=round(fps, 2), gen_fps=round(t.gen_fps, 1), block_ms=round(t.block_ms, 1),
                dit_ms=round(t.dit_ms, 1), decode_ms=round(t.decode_ms, 1),
                viewers=self.viewers.count if self.viewers else 0, controllers=self.count,
                block=t.block, frame=seq, buffered=int(bus.ahead()),
                skipped=self.viewers.skipped() if self.viewers else 0, paused=bus.paused)
            self.broadcast(self._last_stats)
