"""Prompt-to-photon at each viewer: when the first frame of a new prompt was really on its screen.

The engine knows when a prompt was asked for and which frame starts it (`prompt_applied`:
`frame`, `time`, `latency_ms`); only the viewer knows when that frame was shown. A page
watches the frames its video element presents (requestVideoFrameCallback gives each frame's
RTP timestamp and when it is displayed) and, after each `prompt_applied`, reports them with
`presented` until the server answers `photon`. The server turns the RTP timestamp back into
the frame bus's numbering in two steps: the viewer's sender adds a random origin to every
packet's pts (learnt from the sender once it has sent a frame, `PacketTrack.rtp_origin`),
and the shared encoder remembers which bus frame each of its pictures carried
(`StreamEncoder.frame_at`). The first presented frame at or after a switch's first frame
gives that viewer's latency: when the report arrived, less how long before that the frame
was displayed, less when the command was received. So the figure includes the one-way trip
of the report (a few ms on a LAN) and is never optimistic.

`PhotonMeter` is the matching, on plain numbers (no clock of its own, no I/O).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from ..protocol import PromptApplied, RequestIdValue

KEEP_SWITCHES = 16          # the newest switches a late report can still be matched to
NEEDS_VIDEO = "presented reports come on a WebRTC session's data channel (this connection carries no video)"


@dataclass(frozen=True)
class Switch:
    id: RequestIdValue
    frame: int              # the bus number of its first frame
    requested: float        # server wall clock (s) when its command was received


@dataclass(frozen=True)
class Photon:
    """One viewer saw one switch."""

    switch: Switch
    viewer: int
    shown: int              # the first frame of it this viewer saw
    latency_s: float


class PhotonMeter:
    def __init__(self, keep: int = KEEP_SWITCHES):
        self._switches: collections.deque[Switch] = collections.deque(maxlen=keep)
        self._seen: dict[str, int] = {}        # viewer key -> the newest switch frame measured (or on air at join)
        self._numbers: dict[str, int] = {}     # viewer key -> its number
        self._next_number = 1
        self.latest: dict[int, float] = {}     # viewer number -> its last latency, s (viewers connected now)

    def applied(self, event: PromptApplied) -> None:
        """A switch went into the stream (subscribe this to the engine's events)."""
        self._switches.append(Switch(event.id, event.frame, event.time - event.latency_ms / 1e3))

    def join(self, key: str, on_air: int) -> int:
        """A viewer starts reporting; switches whose first frame was already on air (`on_air`,
        a bus number) when it joined are not its to measure. Returns its number."""
        if key not in self._numbers:
            self._numbers[key] = self._next_number
            self._next_number += 1
            self._seen[key] = on_air
        return self._numbers[key]

    def leave(self, key: str) -> None:
        number = self._numbers.pop(key, None)
        self._seen.pop(key, None)
        self.latest.pop(number, None)

    def presented(self, key: str, frame: int, shown_at: float) -> Photon | None:
        """Viewer `key` displayed bus frame `frame` at `shown_at` (server wall clock, s): the
        newest switch it had not yet seen whose first frame is at or before `frame`, if any.
        Older switches it skipped over are not measured (it never saw them on their own)."""
        seen = self._seen.get(key)
        if seen is None:
            return None
        due = [s for s in self._switches if seen < s.frame <= frame]
        if not due:
            return None
        switch = max(due, key=lambda s: s.frame)
        self._seen[key] = switch.frame
        number = self._numbers[key]
        photon = Photon(switch, number, frame, max(0.0, shown_at - switch.requested))
        self.latest[number] = photon.latency_s
        return photon
