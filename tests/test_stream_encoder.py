"""Encode once for every viewer: N viewers share one encoder, each decodes its frames; a
joining viewer, a picture-loss request and a slow viewer each cost one keyframe, rate-limited.

The app runs in-process (fake pipeline, real engine thread, real HTTP and WebRTC on
127.0.0.1); the viewers are aiortc peers that decode what they get."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import av
import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from aiortc.codecs import vpx
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket

from server.app import SESSIONS, create_app
from server.engine import Engine
from server.media.stream_encoder import PacketTrack, StreamEncoder
from server.media.webrtc import MediaOptions
from test_engine import FakePipeline
from test_webrtc import Viewer

DEADLINE_S = 30.0


class DecodingViewer(Viewer):
    """A viewer that keeps the decoded pictures' channel means."""

    def __init__(self, url, http):
        super().__init__(url, http)
        self.means: list[np.ndarray] = []

    async def _read(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.frames.append((time.monotonic(), frame.pts, frame.width, frame.height))
            self.means.append(frame.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0))


async def until(predicate, what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.integration
def test_viewers_share_one_encoder_and_each_decodes_the_stream(monkeypatch):
    def per_viewer_encoding(self, frame, force_keyframe=False):
        raise AssertionError("a sender encoded a frame of its own")
    monkeypatch.setattr(vpx.Vp8Encoder, "encode", per_viewer_encoding)
    calls = [0]
    real = StreamEncoder._encode

    def counted(self, codec, frame, keyframe):
        calls[0] += 1
        return real(self, codec, frame, keyframe)
    monkeypatch.setattr(StreamEncoder, "_encode", counted)

    async def main():
        pipe = FakePipeline(size=(64, 32))
        engine = Engine(pipe, prompt="start", seed=200)
        app = create_app(engine)
        async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as http:
            url = str(server.make_url("")).rstrip("/")
            viewers = [await DecodingViewer(url, http).open() for _ in range(3)]
            await until(lambda: all(len(v.frames) >= 32 for v in viewers), "32 frames at every viewer")
            encoder = app[SESSIONS].encoder
            most = max(len(v.frames) for v in viewers)
            assert encoder.starts == 1 and encoder.viewers == 3
            # one encoding per frame, not one per viewer and frame (3x): a few frames of slack for timing
            assert calls[0] == encoder.frames and encoder.frames <= most + 8, (calls[0], most)
            for v in viewers:
                v.check_timestamps()
                assert {(w, h) for _, _, w, h in v.frames} == {(64, 32)}
                # the fake pipeline's pixels: red = seed (200), green = frame number: decoded, red stays
                # near 200 and green climbs one level a frame
                means = np.array(v.means[-16:])
                assert np.all(np.abs(means[:, 0] - 200) < 12), means[:, 0]
                rises = np.diff(means[:, 1])
                assert 0.5 < np.median(rises[(rises > -100)]) < 1.5, means[:, 1]
            for v in viewers:
                await v.close()
            await until(lambda: not encoder.running, "the encoder to stop when nobody watches")
            await app[SESSIONS].close_all()
    asyncio.run(main())


@pytest.mark.integration
def test_joins_and_picture_loss_cost_one_rate_limited_keyframe():
    async def main():
        engine = Engine(FakePipeline(size=(32, 16)), prompt="start", seed=3)
        app = create_app(engine, media=MediaOptions(keyframe_interval_s=3600))   # no periodic ones here
        async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as http:
            url = str(server.make_url("")).rstrip("/")
            first = await Viewer(url, http).open()
            await first.wait_frames(24)                 # past the start's keyframe and its rate-limit gap
            encoder = app[SESSIONS].encoder
            assert encoder.keyframes == 1
            tracks = [encoder.subscribe() for _ in range(5)]     # five joins at once: one keyframe for all
            got = [await asyncio.wait_for(t.recv(), DEADLINE_S) for t in tracks]
            assert all(p.is_keyframe for p in got) and encoder.keyframes == 2
            for t in tracks:
                t.stop()
            await first.wait_frames(len(first.frames) + 12)     # 0.75 s: past the gap again
            before = encoder.keyframes
            (session,) = list(app[SESSIONS])
            sender = session.pc.getSenders()[0]
            # what a receiver's RTCP picture loss indication does inside aiortc's sender
            await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=sender._ssrc))
            await until(lambda: encoder.keyframes == before + 1, "a keyframe after the picture loss")
            await first.close()
            await app[SESSIONS].close_all()
    asyncio.run(main())


def test_a_slow_viewer_starts_again_at_a_keyframe_and_the_others_lose_nothing():
    async def main():
        wanted: list[str] = []

        class Encoder:
            def request_keyframe(self, why):
                wanted.append(why)

            def unsubscribe(self, track):
                pass

        def packet(key: bool, n: int) -> av.Packet:
            p = av.Packet(bytes([n % 256]) * 10)
            p.is_keyframe = key
            return p
        slow, fast = PacketTrack(Encoder(), queue_size=4), PacketTrack(Encoder(), queue_size=4)
        fast_got = []
        fast.push(packet(False, 0))                      # before any keyframe: dropped
        assert fast.skipped == 1
        for n in range(1, 8):
            p = packet(n == 1, n)
            slow.push(p)
            fast.push(p)
            fast_got.append(bytes(await fast.recv())[0])
        assert fast_got == list(range(1, 8)) and fast.overflows == 0
        assert slow.overflows == 1 and wanted == ["a viewer fell behind"]
        for n in range(8, 11):                           # inter frames after the overflow: dropped
            slow.push(packet(False, n))
        slow.push(packet(True, 11))
        assert bytes(await slow.recv())[0] == 11   # it restarts at the keyframe
        assert slow.skipped == 5 + 2 + 3                # the queue and the overflowing one, 6-7, 8-10
    asyncio.run(main())


@pytest.mark.parametrize("interval", [4.0])
def test_keyframes_come_on_request_at_most_once_a_gap_and_every_interval(interval):
    t = [0.0]
    enc = StreamEncoder(bus=None, size=(16, 8), keyframe_interval_s=interval, min_keyframe_gap_s=0.5,
                        clock=lambda: t[0])
    made = []

    def frame_at(now: float) -> None:
        t[0] = now
        if enc._keyframe_due():
            enc._last_keyframe = now
            made.append(now)
    frame_at(0.0)                                    # the start
    enc.request_keyframe("join")
    frame_at(0.1)                                    # inside the gap: waits ...
    enc.request_keyframe("join again")               # ... and a second request adds nothing
    frame_at(0.3)
    frame_at(0.5)                                    # served when the gap ends
    frame_at(0.6)
    frame_at(4.4)
    frame_at(4.5)                                    # 4 s after the last one: periodic
    assert made == [0.0, 0.5, 4.5]


def test_a_restarted_encoder_never_feeds_its_codec_the_last_runs_frames(monkeypatch):
    """The last viewer leaves while a frame is still being encoded on a worker thread, and a new
    viewer joins at once: the new run's codec must see only its own frames, in order (one codec
    fed both runs' timestamps died of a floating point exception inside libvpx in the churn test)."""
    import threading

    seen: dict[int, list[int]] = {}            # codec context -> the pts it was given
    hold, held = threading.Event(), threading.Event()
    real = StreamEncoder._encode

    def watched(self, codec, frame, keyframe):
        if not held.is_set() and frame.pts > 0 and codec.context is not None:
            held.set()
            assert hold.wait(DEADLINE_S)         # this job is still running when the run is restarted
        out = real(self, codec, frame, keyframe)
        seen.setdefault(id(codec.context), []).append(frame.pts)
        return out
    monkeypatch.setattr(StreamEncoder, "_encode", watched)

    async def main():
        engine = Engine(FakePipeline(size=(32, 16)), prompt="start", seed=4)
        engine.start()
        try:
            encoder = StreamEncoder(engine.bus, (32, 16))
            first = encoder.subscribe()
            await until(held.is_set, "a frame held in the encoder's worker")
            first.stop()                             # the last viewer leaves: the run is cancelled
            await asyncio.sleep(0)
            second = encoder.subscribe()             # and a new one joins: a new run, pts from 0 again
            await asyncio.wait_for(second.recv(), DEADLINE_S)
            hold.set()                               # the old job finishes now, after the new run began
            for _ in range(6):
                await asyncio.wait_for(second.recv(), DEADLINE_S)
            assert encoder.starts == 2
            for pts in seen.values():
                assert pts == sorted(set(pts)), f"a codec was given timestamps out of order: {pts}"
            second.stop()
            await encoder.close()
        finally:
            hold.set()
            engine.stop()
    asyncio.run(main())
