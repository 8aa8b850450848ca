"""WebRTC sessions: one peer connection per viewer, made from the viewer's offer.

A page offers a receive-only video transceiver and a data channel labelled "control"; a
WHEP player (`server/media/whep.py`) offers the video alone. The answer sends the viewer a
`PacketTrack` of the stream's one shared encoder (`stream_encoder.StreamEncoder`: VP8,
encoded once for every viewer), and a control channel goes to the control hub. Gathering is
not trickled: the answer carries all of the server's candidates. ICE servers are used only
when configured (`ice_servers`; the server is meant for the same machine or a LAN).

Media stays where the server was told to listen. The `SessionManager` knows the address
the HTTP socket is bound to and offers ICE host candidates on that address only
(`ice_host_addresses`): bound to 127.0.0.1 (the default) the answer carries 127.0.0.1
candidates and nothing else, bound to 192.168.1.5 it carries 192.168.1.5, bound to
0.0.0.0 or :: it carries every address of the machine (aioice's own choice, which leaves
127.0.0.1 out). aioice has no setting for this, so `gathering_on` (server.addresses) scopes its host-address
lookup (`aioice.ice.get_host_addresses`) with a context variable: only gathering started
inside that block (one `setLocalDescription`) sees the restricted list; every other peer
connection in the process gathers as before. A loopback-bound server also leaves out the
offer's candidates it could not reach from loopback (other addresses, mDNS `.local`
names, which would otherwise be resolved with multicast queries on the LAN); a browser on
the same machine still connects: its checks reach 127.0.0.1 and are answered where they
came from (a peer-reflexive candidate), which for Chromium's any-address sockets is
127.0.0.1 too.

A session ends with `DELETE /api/sessions/{id}`, when its connection fails or closes, when
it has not connected within `CONNECT_TIMEOUT_S` of its offer, or when the server shuts
down; ending it closes the peer connection, which stops the track and every task aiortc
started for it. The deadline matters: aioice reports a failure only after the remote side
signals end-of-candidates, so a peer that goes away before connecting with an offer
without `a=end-of-candidates` (or whose candidates were all left out as unreachable) would
otherwise hold its session, a viewer slot and its sockets for ever.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Callable

from aiortc import (RTCConfiguration, RTCDataChannel, RTCIceServer, RTCPeerConnection, RTCRtpSender,
                    RTCSessionDescription)
from aiortc.exceptions import InvalidStateError

from streaming.errors import UserError

from ..addresses import gathering_on, ice_host_addresses
from ..framebus import FrameBus
from ..door.roles import PERFORMER, VIEWER
from .stream_encoder import DEFAULT_BITRATE, KEYFRAME_INTERVAL_S, PacketTrack, StreamEncoder

log = logging.getLogger(__name__)

CONTROL_LABEL = "control"
TELEMETRY_LABEL = "telemetry"   # a watching page's channel: events in, `presented` reports out, nothing steers
CONNECT_TIMEOUT_S = 20.0     # a session not connected this long after its offer is ended


class OfferError(UserError, ValueError):
    """An offer we cannot answer; the message is one sentence for the client."""


class ViewersFull(OfferError):
    """The server already has its `max_viewers`."""


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:     # a name (mDNS .local), not an address
        return False


def reachable_candidates(sdp: str, addresses: tuple[str, ...] | None) -> str:
    """The offer without the candidates a server gathering on `addresses` cannot reach:
    when it offers loopback only, every remote candidate that is not a loopback address."""
    if addresses is None or not all(_is_loopback(a) for a in addresses):
        return sdp

    def unreachable(line: str) -> bool:      # a=candidate:foundation component transport priority ADDRESS port ...
        parts = line.split()
        return line.startswith("a=candidate:") and (len(parts) < 5 or not _is_loopback(parts[4]))
    return "".join(line for line in sdp.splitlines(keepends=True) if not unreachable(line))


async def close_peer(pc: RTCPeerConnection) -> None:
    """`pc.close()`, which never raises: aiortc's own close stops half way on a peer connection
    an offer left half set up (a transport it never made, for an offer it could not use), so
    whatever transports there are then get stopped one by one (their sockets and tasks freed)."""
    connecting = _connect_tasks(pc)
    try:
        await pc.close()
        return
    except Exception as e:
        log.debug("closing a peer connection failed (%s: %s); stopping its transports one by one",
                  type(e).__name__, e)
    finally:
        for task in connecting:       # closed under aiortc's connect task: it raises "is closed"; expected
            task.add_done_callback(_closed_under)
    parts: list = []
    for transceiver in pc.getTransceivers():
        dtls = getattr(transceiver.receiver, "transport", None)
        parts += [transceiver, dtls, getattr(dtls, "transport", None)]
    sctp = pc.sctp
    if sctp is not None:
        dtls = getattr(sctp, "transport", None)
        parts += [sctp, dtls, getattr(dtls, "transport", None)]
    for part in parts:
        if part is None:
            continue
        try:
            await part.stop()
        except Exception as e:   # each is stopped on its own: one that cannot be must not keep the others
            log.debug("stopping %s failed: %s", type(part).__name__, e)
    pc.remove_all_listeners()


def _connect_tasks(pc: RTCPeerConnection) -> list[asyncio.Task]:
    """aiortc's tasks connecting `pc` (RTCPeerConnection.__connect, started by set*Description): a pc
    closed while one runs makes it raise InvalidStateError ("RTCIceTransport is closed": it does not
    look again whether the pc was closed between its steps), and nobody awaits that task."""
    out = []
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        frame = getattr(coro, "cr_frame", None)
        if getattr(coro, "__qualname__", "") == "RTCPeerConnection.__connect" and frame is not None \
                and frame.f_locals.get("self") is pc:
            out.append(task)
    return out


def _closed_under(task: asyncio.Task) -> None:
    """Take the connect task's exception (so asyncio does not log "Task exception was never
    retrieved" and a traceback for an ordinary goodbye); anything but "closed" is logged."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, InvalidStateError):
        log.warning("connecting a closed peer connection failed: %s: %s", type(exc).__name__, exc)


def quiet_sctp_goodbyes(loop: asyncio.AbstractEventLoop) -> None:
    """aiortc's SCTP transport sends from fire-and-forget tasks (`RTCSctpTransport._transmit`
    after a retransmission timer, `_send_chunk`, `_data_channel_flush`); when a viewer's
    connection has just closed under one, it raises ConnectionError ("Cannot send encrypted
    data, not connected") that nobody retrieves, and asyncio logs "Task exception was never
    retrieved" with a traceback for what is an ordinary goodbye. This loop exception handler
    logs exactly those at debug level and passes everything else to the handler before it."""
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        task = context.get("future") or context.get("task")
        coro = task.get_coro() if isinstance(task, asyncio.Task) else None
        name = getattr(coro, "__qualname__", "") or ""
        if isinstance(context.get("exception"), ConnectionError) \
                and name.rpartition(".")[0].endswith("RTCSctpTransport"):
            log.debug("a data channel's send after its connection closed: %s: %s", name, context["exception"])
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


@dataclass
class Session:
    id: str
    pc: RTCPeerConnection
    track: PacketTrack
    kind: str = "page"                  # page | whep
    role: str = PERFORMER               # what its control channel may do (server.door.roles)
    created: float = field(default_factory=time.time)
    channel: RTCDataChannel | None = None
    etag: str = field(default_factory=lambda: f'"{secrets.token_urlsafe(9)}"')
    deadline: asyncio.TimerHandle | None = field(default=None, repr=False)   # ends it unless it connects


@dataclass(frozen=True)
class MediaOptions:
    """How video goes out: the shared encoder's bitrate (bits per second) and keyframe
    interval, and the ICE servers (stun:/turn: URLs) to use and to announce."""

    bitrate: int = DEFAULT_BITRATE
    keyframe_interval_s: float = KEYFRAME_INTERVAL_S
    ice_servers: tuple[str, ...] = ()


def vp8_preferences() -> list:
    """The codec list a viewer's video is answered with: VP8 (and its retransmissions), the
    one codec the shared encoder makes."""
    codecs = RTCRtpSender.getCapabilities("video").codecs
    vp8 = [c for c in codecs if c.mimeType.lower() == "video/vp8"]
    rtx = [c for c in codecs if c.mimeType.lower() == "video/rtx"]
    return vp8 + rtx


class SessionManager:
    def __init__(self, bus: FrameBus, size: tuple[int, int],
                 on_control_channel: Callable[[RTCDataChannel, str], object] | None = None, *,
                 host: str | None = "127.0.0.1", bitrate: int = DEFAULT_BITRATE,
                 keyframe_interval_s: float = KEYFRAME_INTERVAL_S, ice_servers: tuple[str, ...] = (),
                 max_viewers: int | None = None, connect_timeout_s: float = CONNECT_TIMEOUT_S):
        """`host`: the address the server is bound to; ICE offers candidates there only
        (`ice_host_addresses`; None or "0.0.0.0" for every address). `bitrate` and
        `keyframe_interval_s` set the shared encoder; `ice_servers` (stun:/turn: URLs) are
        used by the server's peer connections and announced to WHEP players. A session that
        has not connected `connect_timeout_s` after its offer is ended."""
        self.bus = bus
        self.size = size
        self.on_control_channel = on_control_channel
        self.addresses = ice_host_addresses(host)
        self.ice_servers = tuple(ice_servers)
        self.max_viewers = max_viewers
        self.connect_timeout_s = connect_timeout_s
        self._closing: set[asyncio.Task] = set()
        self.encoder = StreamEncoder(bus, size, bitrate=bitrate, keyframe_interval_s=keyframe_interval_s)
        self._sessions: dict[str, Session] = {}

    @property
    def count(self) -> int:
        return len(self._sessions)

    def counts(self) -> dict[str, int]:
        """Viewers by kind (page, whep)."""
        out = {"page": 0, "whep": 0}
        for s in self._sessions.values():
            out[s.kind] = out.get(s.kind, 0) + 1
        return out

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def presented_frame(self, session_id: str, rtp_timestamp: int) -> int | None:
        """The frame-bus number of the frame session `session_id`'s viewer reports by its RTP
        timestamp (None: no such session, its sender's origin not known yet, or too old)."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        return self.encoder.frame_at_rtp(session.track, rtp_timestamp)

    def skipped(self) -> int:
        return sum(s.track.skipped for s in self._sessions.values())

    def delivered(self) -> dict[str, int]:
        """Per session: distinct new frames its track has handed to its encoder so far."""
        return {sid: s.track.delivered for sid, s in self._sessions.items()}

    def __iter__(self):
        return iter(list(self._sessions.values()))

    async def answer(self, sdp: str, kind: str = "offer", *, viewer: str = "page", role: str = PERFORMER,
                     dtls_server: bool = False) -> tuple[Session, RTCSessionDescription]:
        """Answer a viewer's offer: a new session streaming the shared encoder's packets.
        `viewer` is the kind of session (page, whep); `dtls_server` makes the answer take the
        DTLS server role (`a=setup:passive`), which RFC 5763 allows the answerer: GStreamer's
        webrtcbin (an RSA certificate) can only be the DTLS client of aiortc."""
        if kind != "offer":
            raise OfferError(f"expected an SDP offer, got type {kind!r}")
        if not isinstance(sdp, str) or "m=" not in sdp:
            raise OfferError("the offer has no media sections (is it an SDP offer?)")
        if self.max_viewers is not None and self.count >= self.max_viewers:
            raise ViewersFull(f"this server already has its {self.max_viewers} viewers (--max-viewers); "
                              f"try again when one leaves")
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(urls=u) for u in self.ice_servers]))
        session = Session(secrets.token_urlsafe(12), pc, self.encoder.subscribe(), viewer, role)
        self._sessions[session.id] = session
        session.deadline = asyncio.get_running_loop().call_later(self.connect_timeout_s, self._expire, session.id)

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label not in (CONTROL_LABEL, TELEMETRY_LABEL):
                log.debug("session %s: ignoring data channel %r", session.id, channel.label)
                return
            session.channel = channel
            if self.on_control_channel is not None:
                self.on_control_channel(channel, session.role if channel.label == CONTROL_LABEL else VIEWER,
                                        session.id)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.debug("session %s: connection %s", session.id, pc.connectionState)
            if pc.connectionState == "connected" and session.deadline is not None:
                session.deadline.cancel()
                session.deadline = None
            if pc.connectionState in ("failed", "closed"):
                await self.close(session.id)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=reachable_candidates(sdp, self.addresses),
                                                                type="offer"))
            video = next((t for t in pc.getTransceivers() if t.kind == "video"), None)
            if video is None:
                raise OfferError("the offer has no video section (add a receive-only video transceiver)")
            sender = pc.addTrack(session.track)
            session.track.sender = sender            # (its RTP timestamps name frames: presented_frame)
            self.encoder.watch_keyframe_requests(sender)
            video.setCodecPreferences(vp8_preferences())
            if dtls_server:
                for t in pc.getTransceivers():      # aiortc answers as the DTLS client unless told
                    t.receiver.transport._set_role("server")
                if pc.sctp is not None:
                    pc.sctp.transport._set_role("server")
            with gathering_on(self.addresses):
                await pc.setLocalDescription(await pc.createAnswer())
            if "VP8" not in pc.localDescription.sdp:
                raise OfferError("the offer does not accept VP8 video, the one codec this server sends")
        except OfferError:
            await self.close(session.id)
            raise
        except Exception as e:  # aiortc raises ValueError, KeyError, ... for offers it cannot use
            await self.close(session.id)
            raise OfferError(f"cannot answer this offer: {e or type(e).__name__}") from None
        log.info("%s session %s opened (%d viewers)", viewer, session.id, self.count)
        return session, pc.localDescription

    def _expire(self, session_id: str) -> None:
        """The connect deadline passed: end the session unless it connected meanwhile."""
        session = self._sessions.get(session_id)
        if session is None or session.pc.connectionState == "connected":
            return
        log.info("session %s did not connect within %.0f s (%s); ending it", session_id, self.connect_timeout_s,
                 session.pc.connectionState)
        task = asyncio.get_running_loop().create_task(self.close(session_id), name="longlive-session-expire")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self, session_id: str) -> bool:
        """End a session; False if there is no such session (or it is already ending)."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        if session.deadline is not None:
            session.deadline.cancel()
            session.deadline = None
        session.track.stop()
        await close_peer(session.pc)
        t = session.track
        log.info("session %s closed after %.0f s: %d frames delivered, %d skipped, %d repeated (%d viewers)",
                 session_id, time.time() - session.created, t.delivered, t.skipped, t.repeated, self.count)
        return True

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close(sid) for sid in list(self._sessions)), return_exceptions=True)
        await self.encoder.close()
