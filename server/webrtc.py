"""WebRTC sessions: one peer connection per viewer, made from the browser's offer.

The browser offers a receive-only video transceiver and a data channel labelled
"control"; the answer sends it a `BusVideoTrack` (its own reader of the shared frame bus)
and the control channel is handed to the control hub. Gathering is not trickled: the
answer carries all of the server's candidates. No STUN or TURN server is used (the server
is meant for the same machine or a LAN), so nothing leaves the machine.

A session ends with `DELETE /api/sessions/{id}`, when its connection fails or closes, or
when the server shuts down; ending it closes the peer connection, which stops the track
and every task aiortc started for it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Callable

from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from streaming.errors import UserError

from .framebus import FrameBus
from .track import BusVideoTrack

log = logging.getLogger(__name__)

CONTROL_LABEL = "control"


class OfferError(UserError, ValueError):
    """An offer we cannot answer; the message is one sentence for the client."""


@dataclass
class Session:
    id: str
    pc: RTCPeerConnection
    track: BusVideoTrack
    created: float = field(default_factory=time.time)
    channel: RTCDataChannel | None = None


class SessionManager:
    def __init__(self, bus: FrameBus, size: tuple[int, int],
                 on_control_channel: Callable[[RTCDataChannel], object] | None = None):
        self.bus = bus
        self.size = size
        self.on_control_channel = on_control_channel
        self._sessions: dict[str, Session] = {}

    @property
    def count(self) -> int:
        return len(self._sessions)

    def skipped(self) -> int:
        return sum(s.track.skipped for s in self._sessions.values())

    def __iter__(self):
        return iter(list(self._sessions.values()))

    async def answer(self, sdp: str, kind: str = "offer") -> tuple[Session, RTCSessionDescription]:
        """Answer a browser's offer: a new session streaming the bus."""
        if kind != "offer":
            raise OfferError(f"expected an SDP offer, got type {kind!r}")
        if not isinstance(sdp, str) or "m=" not in sdp:
            raise OfferError("the offer has no media sections (is it an SDP offer?)")
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        session = Session(secrets.token_urlsafe(12), pc, BusVideoTrack(self.bus, self.size))
        self._sessions[session.id] = session

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label != CONTROL_LABEL:
                log.info("session %s: ignoring data channel %r", session.id, channel.label)
                return
            session.channel = channel
            if self.on_control_channel is not None:
                self.on_control_channel(channel)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.info("session %s: connection %s", session.id, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                await self.close(session.id)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            if not any(t.kind == "video" for t in pc.getTransceivers()):
                raise OfferError("the offer has no video section (add a receive-only video transceiver)")
            pc.addTrack(session.track)
            await pc.setLocalDescription(await pc.createAnswer())
        except OfferError:
            await self.close(session.id)
            raise
        except Exception as e:  # aiortc raises ValueError, KeyError, ... for offers it cannot use
            await self.close(session.id)
            raise OfferError(f"cannot answer this offer: {e or type(e).__name__}") from None
        log.info("session %s: answered (%d viewers)", session.id, self.count)
        return session, pc.localDescription

    async def close(self, session_id: str) -> bool:
        """End a session; False if there is no such session (or it is already ending)."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        session.track.stop()
        await session.pc.close()
        log.info("session %s: closed (%d viewers)", session_id, self.count)
        return True

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close(sid) for sid in list(self._sessions)), return_exceptions=True)
