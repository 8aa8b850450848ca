"""Encode once for every viewer: one VP8 encoder per stream, its packets shared by all senders.

Without this, aiortc gives every viewer's sender an encoder of its own, so the server's CPU
grows with the audience. Here one `StreamEncoder` reads the frame bus at the stream's fps
(through a `BusVideoTrack`, with its pacing and latest-frame rules), encodes each frame once
with libvpx (PyAV) on a worker thread, and hands the same `av.Packet` to every viewer's
`PacketTrack`; aiortc sends pre-encoded packets as they are (it only packetizes them), so a
viewer costs RTP packetization and SRTP, not encoding.

Keyframes. A viewer can only start decoding at a keyframe, and an inter frame lost on its
way breaks the picture until the next one. So the encoder makes a keyframe:
- when a viewer joins (its track waits for that keyframe and drops the frames before it);
- when a viewer's receiver asks for one (RTCP picture loss or full intra request: aiortc's
  sender calls `_send_keyframe`, which `watch_keyframe_requests` routes here), and when a
  viewer's queue overflowed (it was too slow: it drops what it had and restarts at a keyframe);
- every `keyframe_interval_s` seconds anyway.
Requests are rate-limited: at most one forced keyframe per `min_keyframe_gap_s`; a request
inside the gap is served when the gap ends, so a flood of joins or losses costs one keyframe.

The encoder runs while somebody watches and stops when the last viewer leaves. Bitrate is
fixed (`--bitrate`), since one encoder serves viewers with different networks (a receiver's
bandwidth estimate, REMB, cannot steer a shared encoder); the per-viewer queue protects the
others from a slow one.

Which picture is which. The encoder remembers the frame-bus number of the frame each pts
carried (`frame_at`), and each viewer's track learns the random origin its sender adds to
every pts on the wire (`PacketTrack.rtp_origin`), so an RTP timestamp a viewer reports
names a frame of the stream (server.media.photon: prompt-to-photon per viewer).
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import logging
import time
from typing import Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..framebus import CLOCK_RATE, FrameBus
from .track import BusVideoTrack

log = logging.getLogger(__name__)

TIME_BASE = fractions.Fraction(1, CLOCK_RATE)
DEFAULT_BITRATE = 1_000_000            # bits per second
KEYFRAME_INTERVAL_S = 4.0              # a keyframe at least this often
MIN_KEYFRAME_GAP_S = 0.5               # forced keyframes at most this often
VIEWER_QUEUE = 16                      # packets waiting for one viewer's sender (1 s at 16 fps)
FRAMES_REMEMBERED = 2048               # pts -> bus frame number, the newest (about 2 min at 16 fps)
RTP_CLOCK_WRAP = 1 << 32


class PacketTrack(MediaStreamTrack):
    """One viewer's video: the shared encoder's packets, from a keyframe on, in order."""

    kind = "video"

    def __init__(self, encoder: "StreamEncoder", queue_size: int = VIEWER_QUEUE):
        super().__init__()
        self.encoder = encoder
        self._queue: asyncio.Queue[av.Packet] = asyncio.Queue(queue_size)
        self._waiting_for_keyframe = True
        self.delivered = 0                 # packets handed to the sender (each a new frame)
        self.skipped = 0                   # packets this viewer lost (late joiner before a keyframe, overflow)
        self.repeated = 0                  # (a shared encoder never repeats for one viewer)
        self.sent = 0
        self.overflows = 0
        self.sender = None                 # the aiortc RTCRtpSender sending this track (set by its session)
        self.rtp_origin: int | None = None  # what the sender adds to each pts (RTP timestamp = pts + origin)
        self._last_pts: int | None = None

    def push(self, packet: av.Packet) -> None:
        """A new packet from the encoder (the event loop's thread)."""
        if self.readyState != "live":
            return
        if self._waiting_for_keyframe:
            if not packet.is_keyframe:
                self.skipped += 1
                return
            self._waiting_for_keyframe = False
        try:
            self._queue.put_nowait(packet)
        except asyncio.QueueFull:           # too slow: start again at the next keyframe
            self.overflows += 1
            self.skipped += self._queue.qsize() + 1
            while not self._queue.empty():
                self._queue.get_nowait()
            self._waiting_for_keyframe = True
            self.encoder.request_keyframe("a viewer fell behind")

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self.rtp_origin is None and self._last_pts is not None:
            self.rtp_origin = sent_rtp_origin(self.sender, self._last_pts)
        packet = await self._queue.get()
        if self.readyState != "live":
            raise MediaStreamError
        self.delivered += 1
        self.sent += 1
        self._last_pts = packet.pts
        return packet

    def stop(self) -> None:
        if self.readyState == "live":
            super().stop()
            self.encoder.unsubscribe(self)
            try:                             # wake a recv() waiting on the queue
                self._queue.put_nowait(av.Packet(b""))
            except asyncio.QueueFull:
                pass


def sent_rtp_origin(sender, last_pts: int) -> int | None:
    """The random origin an aiortc sender adds to every pts (90 kHz) on the wire, or None if
    it cannot be known yet. aiortc asks its track for the next frame only once every packet of
    the previous one is sent, so when a track is asked again, the sender's last RTP timestamp
    is the previous frame's: origin = that - its pts. (aiortc 1.x keeps it private: if that
    ever changes, this returns None and per-viewer prompt-to-photon says it cannot measure.)"""
    if sender is None or not getattr(sender, "_RTCRtpSender__packet_count", 0):
        return None
    sent = getattr(sender, "_RTCRtpSender__rtp_timestamp", None)
    if not isinstance(sent, int):
        return None
    return (sent - last_pts) % RTP_CLOCK_WRAP


class _Codec:
    """One run's libvpx context. A run's encoder jobs use its own: when the last viewer leaves and
    another joins at once, the new run starts while the old run's last job may still be in a
    worker thread, and one context fed both runs' timestamps (the new run's restart at 0) is
    what libvpx cannot take (it died of a floating point exception in the churn tests)."""

    context: av.VideoCodecContext | None = None


class StreamEncoder:
    def __init__(self, bus: FrameBus, size: tuple[int, int], *, bitrate: int = DEFAULT_BITRATE,
                 keyframe_interval_s: float = KEYFRAME_INTERVAL_S, min_keyframe_gap_s: float = MIN_KEYFRAME_GAP_S,
                 clock: Callable[[], float] = time.monotonic):
        self.bus, self.size, self.bitrate = bus, size, int(bitrate)
        self.keyframe_interval_s, self.min_keyframe_gap_s = keyframe_interval_s, min_keyframe_gap_s
        self._clock = clock
        self._tracks: set[PacketTrack] = set()
        self._task: asyncio.Task | None = None
        self._last_keyframe = -float("inf")
        self._keyframe_wanted: str | None = "start"
        # what it did, for stats and metrics
        self.frames = 0
        self.keyframes = 0
        self.bytes = 0
        self.encode_s = 0.0                  # total time spent encoding
        self.last_encode_ms = 0.0
        self.starts = 0                      # times the encoder (re)started (viewers came after none)
        self._frames_by_pts: collections.OrderedDict[int, int] = collections.OrderedDict()

    # -- viewers -----------------------------------------------------------------------------------
    @property
    def viewers(self) -> int:
        return len(self._tracks)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def subscribe(self) -> PacketTrack:
        """A new viewer's track (on the event loop); it starts at the next keyframe, made for it."""
        track = PacketTrack(self)
        self._tracks.add(track)
        self.request_keyframe("a viewer joined")
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="longlive-stream-encoder")
        return track

    def unsubscribe(self, track: PacketTrack) -> None:
        self._tracks.discard(track)
        if not self._tracks and self._task is not None:
            self._task.cancel()
            self._task = None

    def frame_at(self, pts: int) -> int | None:
        """The frame-bus number of the frame encoded with this pts (None: not one of the newest
        FRAMES_REMEMBERED, or the black picture before the first block)."""
        return self._frames_by_pts.get(pts)

    def frame_at_rtp(self, track: PacketTrack, rtp_timestamp: int) -> int | None:
        """The frame a viewer's RTP timestamp names (None until its sender's origin is known)."""
        if track.rtp_origin is None:
            return None
        return self.frame_at((rtp_timestamp - track.rtp_origin) % RTP_CLOCK_WRAP)

    def request_keyframe(self, why: str) -> None:
        """Make the next frame (or the first one the rate limit allows) a keyframe."""
        if self._keyframe_wanted is None:
            log.debug("keyframe requested: %s", why)
            self._keyframe_wanted = why

    def watch_keyframe_requests(self, sender) -> None:
        """Route an aiortc sender's keyframe requests (RTCP PLI/FIR from its receiver) here:
        a sender of pre-encoded packets has no encoder of its own to force."""
        sender._send_keyframe = lambda: self.request_keyframe("picture loss at a viewer")

    async def close(self) -> None:
        for track in list(self._tracks):
            track.stop()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    # -- the encoder -----------------------------------------------------------------------------------
    async def _run(self) -> None:
        self.starts += 1
        reader = BusVideoTrack(self.bus, self.size, clock=self._clock)
        loop = asyncio.get_running_loop()
        codec = _Codec()                        # this run's own: a job of the run before may still be encoding
        self._keyframe_wanted = self._keyframe_wanted or "the encoder started"
        self._frames_by_pts.clear()             # a new run's pts start at 0 again
        try:
            while self._tracks:
                frame = await reader.recv()
                if reader.last_seq >= 0:
                    self._frames_by_pts[frame.pts] = reader.last_seq
                    if len(self._frames_by_pts) > FRAMES_REMEMBERED:
                        self._frames_by_pts.popitem(last=False)
                key = self._keyframe_due()
                t0 = time.perf_counter()
                packets = await loop.run_in_executor(None, self._encode, codec, frame, key)
                dt = time.perf_counter() - t0
                self.encode_s += dt
                self.last_encode_ms = dt * 1e3
                for packet in packets:
                    self.frames += 1
                    self.bytes += packet.size
                    if packet.is_keyframe:
                        self.keyframes += 1
                        self._last_keyframe = self._clock()
                    for track in list(self._tracks):
                        track.push(packet)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the stream encoder failed; viewers lose video until one joins again")
        finally:
            reader.stop()

    def _keyframe_due(self) -> bool:
        now = self._clock()
        since = now - self._last_keyframe
        if self._keyframe_wanted is not None and since >= self.min_keyframe_gap_s:
            self._keyframe_wanted = None
            return True
        return since >= self.keyframe_interval_s

    def _encode(self, codec: _Codec, frame: av.VideoFrame, keyframe: bool) -> list[av.Packet]:
        """One frame -> its packets (on a worker thread; PyAV releases the GIL while libvpx works)."""
        if codec.context is None:
            codec.context = self._open(frame.width, frame.height)
        frame = frame.reformat(format="yuv420p")
        frame.pict_type = av.video.frame.PictureType.I if keyframe else av.video.frame.PictureType.NONE
        out = []
        for packet in codec.context.encode(frame):
            packet.pts = frame.pts
            packet.time_base = TIME_BASE
            out.append(packet)
        return out

    def _open(self, width: int, height: int) -> av.VideoCodecContext:
        codec = av.CodecContext.create("libvpx", "w")
        codec.width, codec.height = width, height
        codec.pix_fmt = "yuv420p"
        codec.time_base = TIME_BASE
        codec.bit_rate = self.bitrate
        codec.gop_size = 1 << 30            # keyframes are ours to ask for
        codec.qmin, codec.qmax = 2, 56
        codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "error-resilient": "1",
                         "bufsize": str(self.bitrate), "minrate": str(self.bitrate), "maxrate": str(self.bitrate),
                         "undershoot-pct": "100", "overshoot-pct": "15", "static-thresh": "1"}
        codec.thread_count = 2 if width * height >= 640 * 480 else 1
        return codec

    def stats(self) -> dict[str, float | int]:
        return {"viewers": self.viewers, "frames": self.frames, "keyframes": self.keyframes, "bytes": self.bytes,
                "encode_ms": round(self.encode_s / self.frames * 1e3, 3) if self.frames else 0.0,
                "running": self.running, "starts": self.starts}
