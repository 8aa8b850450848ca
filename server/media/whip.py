"""WHIP publish (RFC 9725): push the stream into an SFU or a media server.

`longlive serve --whip URL [--whip-token T]` makes one `WhipPublisher`. It is one aiortc
`RTCPeerConnection` with one send-only video transceiver (VP8 preferred), and it does what
the RFC asks of a non-trickle client:

1. gather every ICE candidate first (aiortc's `setLocalDescription` returns when gathering
   is complete), so the offer carries them all;
2. `POST` the offer to the endpoint URL, `Content-Type: application/sdp`, with
   `Authorization: Bearer T` when a token is given;
3. take the `201 Created` answer, whose `Location` header names the WHIP resource (a
   relative `Location` is resolved against the endpoint URL);
4. on shutdown, `DELETE` that resource, then close the connection.

If the SFU goes away (the `POST` fails or is refused, the connection does not come up within
`connect_timeout_s`, or its state becomes failed or closed) the publisher tears the attempt
down (a `DELETE` of the old resource, best effort, so the SFU frees the endpoint) and tries
again after a back-off: 1, 2, 4, 8, 16, then every 30 s; a connection that came up resets it
to 1 s. Each failure is one log line. None of this touches the generator: the publisher runs
on the event loop, reads the frame bus through its own track (latest frame, never a queue,
like any viewer) and the engine never waits for it.

The media comes from `make_track()`, called once per attempt (a stopped track cannot be
reused): today a `BusVideoTrack` of the stream (aiortc encodes it, once, for the SFU, which
fans it out); with the shared encoder (`server.media.stream_encoder`) it becomes
`lambda: encoder.subscribe()`, whose track yields pre-encoded VP8 packets.

The token never reaches a log line, an event or an error message: URLs are logged without
user info, query or fragment (`safe_url`), and every message this module makes is scrubbed
of the token (`WhipPublisher._scrub`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterator
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from ..addresses import gathering_on
from .webrtc import vp8_preferences

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
CONNECT_TIMEOUT_S = 20.0          # from the answer to a connected peer connection
HTTP_TIMEOUT_S = 10.0             # one POST or DELETE
DELETE_ON_STOP_TIMEOUT_S = 5.0    # the shutdown DELETE
ERROR_BODY_CHARS = 200            # of a refusal's body, in its log line

Sleep = Callable[[float], Awaitable[object]]


class WhipError(Exception):
    """One attempt that failed; the message is one sentence, with no token in it."""


@dataclass(frozen=True)
class WhipOptions:
    """Where and how to publish. `url`: the WHIP endpoint (http or https). `token`: the
    Bearer token, if the endpoint wants one (never shown: not in `repr`, logs or errors).
    `ice_servers`: stun:/turn: URLs for the publisher's connection (none by default: no
    third-party STUN server is contacted). `ice_addresses`: the host addresses to offer
    candidates on (None: every address of the machine, aioice's choice, which leaves out
    127.0.0.1; the tests give ("127.0.0.1",))."""

    url: str
    token: str | None = field(default=None, repr=False)
    ice_servers: tuple[str, ...] = ()
    ice_addresses: tuple[str, ...] | None = None
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    first_backoff_s: float = FIRST_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S


def safe_url(url: str) -> str:
    """`url` as it may be logged: scheme, host, port and path; no user info, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<invalid URL>"
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def backoff_delays(first: float = FIRST_BACKOFF_S, cap: float = MAX_BACKOFF_S) -> Iterator[float]:
    """The waits between failed attempts: first, 2 first, 4 first ..., then cap for ever."""
    delay = first
    while True:
        yield min(delay, cap)
        delay = min(delay * 2, cap)


class WhipPublisher:
    """Publishes `make_track()`'s video to `options.url` until `stop()`, reconnecting with back-off.

    `start()` returns at once (the work is one task); `stop()` deletes the WHIP resource and
    closes the connection. `sleep` is the back-off's wait (injected by the tests). The
    counters (`attempts`, `publishes`, `failures`, `deletes`), `state` and `last_error` are
    for monitoring (`stats()`)."""

    def __init__(self, options: WhipOptions, make_track: Callable[[], MediaStreamTrack], *,
                 sleep: Sleep = asyncio.sleep, on_sender: Callable[[Any], None] | None = None):
        if urlsplit(options.url).scheme not in ("http", "https"):
            raise ValueError(f"a WHIP endpoint is an http:// or https:// URL, not {safe_url(options.url)!r}")
        self.options = options
        self.make_track = make_track
        self.on_sender = on_sender                 # gets each attempt's RTCRtpSender (the shared encoder's PLI hook)
        self._sleep = sleep
        self.url = safe_url(options.url)           # for logs and stats
        self.state = "idle"                        # idle | connecting | publishing | waiting | stopped
        self.attempts = 0                          # POSTs tried
        self.publishes = 0                         # connections that came up
        self.failures = 0                          # attempts that failed or connections that ended
        self.deletes = 0                           # resources deleted (on a teardown or at stop)
        self.last_error: str | None = None
        self.resource: str | None = None           # the WHIP resource's URL (from Location)
        self.pc: RTCPeerConnection | None = None
        self.track: MediaStreamTrack | None = None
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None
        self._since: float | None = None           # when the connection came up

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None:
            return
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))
        self._task = asyncio.create_task(self._run(), name="whip-publisher")
        log.info("WHIP: starting to publish to %s", self.url)

    async def stop(self) -> None:
        """Delete the WHIP resource (if there is one), close the connection, end the task."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.state = "stopped"
        await self._teardown(timeout_s=DELETE_ON_STOP_TIMEOUT_S, why="shutting down")
        if self._http is not None:
            await self._http.close()
            self._http = None

    def stats(self) -> dict[str, object]:
        return {"url": self.url, "state": self.state, "attempts": self.attempts, "publishes": self.publishes,
                "failures": self.failures, "deletes": self.deletes, "last_error": self.last_error,
                "publishing_s": round(time.monotonic() - self._since, 1) if self._since is not None else 0.0,
                "frames_sent": getattr(self.track, "sent", None)}     # by this connection's track

    # -- the loop --------------------------------------------------------------------------------
    async def _run(self) -> None:
        delays = self._delays()
        while True:
            ended = asyncio.Event()
            try:
                await self._publish(ended)
                self.publishes += 1
                self._since = time.monotonic()
                self.state = "publishing"
                log.info("WHIP: publishing to %s (connection %d)", self.url, self.publishes)
                delays = self._delays()             # it came up: the next wait is the first again
                await ended.wait()
                raise WhipError(f"the connection to the SFU {self.pc.connectionState if self.pc else 'ended'}")
            except asyncio.CancelledError:
                raise
            except Exception as e:                  # WhipError, aiohttp's, aiortc's: one line each
                self.failures += 1
                self._since = None
                message = self._scrub(str(e) if isinstance(e, WhipError) else self._describe(e))
                self.last_error = message
                delay = next(delays)
                self.state = "waiting"
                log.warning("WHIP: %s: %s; trying again in %g s", self.url, message, delay)
                await self._teardown(timeout_s=HTTP_TIMEOUT_S, why="a failed attempt")
                await self._sleep(delay)

    def _delays(self) -> Iterator[float]:
        return backoff_delays(self.options.first_backoff_s, self.options.max_backoff_s)

    async def _publish(self, ended: asyncio.Event) -> None:
        """One attempt: offer, POST, answer, connected. Raises WhipError when it does not get there."""
        self.state = "connecting"
        self.attempts += 1
        opts = self.options
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(urls=u) for u in opts.ice_servers]))
        connected = asyncio.Event()

        @pc.on("connectionstatechange")
        def on_state() -> None:
            log.debug("WHIP: connection %s", pc.connectionState)
            if pc.connectionState == "connected":
                connected.set()
            elif pc.connectionState in ("failed", "closed"):
                ended.set()

        self.track = self.make_track()
        transceiver = pc.addTransceiver(self.track, direction="sendonly")
        transceiver.setCodecPreferences(vp8_preferences())
        if self.on_sender is not None:
            self.on_sender(transceiver.sender)
        with gathering_on(opts.ice_addresses):       # non-trickle: returns once gathering is complete
            await pc.setLocalDescription(await pc.createOffer())

        headers = {"Content-Type": "application/sdp"}
        if opts.token:
            headers["Authorization"] = f"Bearer {opts.token}"
        assert self._http is not None
        async with self._http.post(opts.url, data=pc.localDescription.sdp.encode(), headers=headers,
                                   allow_redirects=True) as response:
            body = await response.text(errors="replace")
            if response.status != 201:
                reason = " ".join(body.split())[:ERROR_BODY_CHARS]
                raise WhipError(f"the endpoint answered {response.status} {response.reason or ''}".rstrip()
                                + (f" ({reason})" if reason else ""))
            location = response.headers.get("Location")
            if location:
                self.resource = urljoin(str(response.url), location)
            else:
                log.warning("WHIP: %s answered without a Location: the resource cannot be deleted", self.url)
        if "v=0" not in body:
            raise WhipError("the endpoint's 201 has no SDP answer in its body")
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        except Exception as e:
            raise WhipError(f"the endpoint's answer is unusable: {self._describe(e)}") from None
        try:
            await asyncio.wait_for(self._first(connected, ended), opts.connect_timeout_s)
        except asyncio.TimeoutError:
            raise WhipError(f"no connection to the SFU within {opts.connect_timeout_s:g} s") from None
        if not connected.is_set():
            raise WhipError(f"the connection to the SFU {pc.connectionState} before it came up")

    @staticmethod
    async def _first(*events: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _teardown(self, *, timeout_s: float, why: str) -> None:
        """DELETE the resource (best effort), close the connection, stop the track."""
        resource, self.resource = self.resource, None
        pc, self.pc = self.pc, None
        track, self.track = self.track, None
        if resource is not None and self._http is not None:
            headers = {"Authorization": f"Bearer {self.options.token}"} if self.options.token else {}
            try:
                async with self._http.delete(resource, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                    if response.status < 300:
                        self.deletes += 1
                        log.info("WHIP: deleted the resource %s (%s)", safe_url(resource), why)
                    else:
                        log.info("WHIP: deleting the resource %s (%s) answered %d", safe_url(resource), why,
                                 response.status)
            except Exception as e:
                log.info("WHIP: could not delete the resource %s (%s): %s", safe_url(resource), why,
                         self._scrub(self._describe(e)))
        if pc is not None:
            await pc.close()
        if track is not None:
            track.stop()

    # -- messages --------------------------------------------------------------------------------
    def _describe(self, e: BaseException) -> str:
        """An exception in one sentence without the URL's secrets (aiohttp's messages carry URLs)."""
        if isinstance(e, aiohttp.ClientConnectorError):
            return f"cannot connect to {e.host}:{e.port} ({e.os_error.strerror or type(e.os_error).__name__})"
        if isinstance(e, aiohttp.ClientResponseError):
            return f"HTTP {e.status} {e.message}"
        if isinstance(e, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            return "the endpoint did not answer in time"
        if isinstance(e, aiohttp.ClientError):
            return f"HTTP error ({type(e).__name__})"
        text = " ".join(str(e).split())
        return f"{type(e).__name__}: {text}" if text else type(e).__name__

    def _scrub(self, text: str) -> str:
        token = self.options.token
        if token:
            text = text.replace(token, "***")
        return text.replace(self.options.url, self.url)
