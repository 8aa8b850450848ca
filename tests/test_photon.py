"""Prompt-to-photon per viewer: a viewer's RTP timestamps name the server's frames, and its
reports of what it showed give the switch-to-screen latency, answered with `photon` and
exported by /metrics per viewer.

The matching is tested on plain numbers; the mapping with the app in-process (fake pipeline
whose frames carry their number in their colour, real engine, real WebRTC on 127.0.0.1) and
aiortc viewers that decode what they get, so a mapping one frame off shows as a wrong colour."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import msgpack
import numpy as np
from aiohttp.test_utils import TestServer
from aiortc.mediastreams import MediaStreamError
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.app import HUB, SESSIONS, create_app
from server.engine import Engine
from server.media.photon import PhotonMeter
from server.protocol import PromptApplied
from server.media.stream_encoder import sent_rtp_origin
from test_engine import FakePipeline
from test_stream_encoder import until
from test_webrtc import Viewer

GREEN_STEP = 40          # the colour of frame n is (40 n) mod 256: neighbours differ by 40 levels


def applied(frame: int, time: float, latency_ms: float, id: str = "p") -> PromptApplied:
    return PromptApplied(id=id, text="t", block=1, frame=frame, latency_ms=latency_ms, plays_in_ms=0.0, time=time)


def test_the_first_frame_shown_at_or_after_a_switch_measures_it_once():
    m = PhotonMeter()
    assert m.join("a", on_air=10) == 1 and m.join("b", on_air=10) == 2
    m.applied(applied(frame=21, time=100.0, latency_ms=500.0))          # requested at 99.5
    assert m.presented("a", 20, shown_at=100.2) is None                  # still the old prompt
    p = m.presented("a", 22, shown_at=100.7)                             # skipped 21: 22 is its first
    assert (p.switch.frame, p.shown, p.viewer) == (21, 22, 1) and abs(p.latency_s - 1.2) < 1e-9
    assert m.presented("a", 23, shown_at=100.8) is None                  # measured once
    assert m.latest == {1: p.latency_s}
    m.leave("a")
    assert m.latest == {} and m.presented("a", 24, shown_at=101.0) is None   # gone: its reports count no more


def test_a_viewer_measures_only_switches_after_it_joined_and_the_newest_it_reached():
    m = PhotonMeter()
    m.applied(applied(frame=5, time=10.0, latency_ms=0.0, id="old"))
    m.join("late", on_air=8)                                  # frame 5 was on air before it came
    assert m.presented("late", 9, shown_at=11.0) is None
    m.applied(applied(frame=30, time=20.0, latency_ms=0.0, id="x"))
    m.applied(applied(frame=42, time=21.0, latency_ms=0.0, id="y"))
    p = m.presented("late", 43, shown_at=21.5)                # it never saw x on its own: y is measured
    assert p.switch.id == "y" and abs(p.latency_s - 0.5) < 1e-9
    assert m.presented("late", 44, shown_at=21.6) is None     # x is not measured afterwards either


def test_the_sender_origin_is_its_last_timestamp_less_the_last_pts():
    class Sender:        # what aiortc's RTCRtpSender keeps (name-mangled) after sending a frame
        _RTCRtpSender__packet_count = 7
        _RTCRtpSender__rtp_timestamp = 100

    assert sent_rtp_origin(Sender(), last_pts=5625) == (100 - 5625) % 2**32
    Sender._RTCRtpSender__packet_count = 0
    assert sent_rtp_origin(Sender(), last_pts=5625) is None              # nothing sent yet
    assert sent_rtp_origin(None, last_pts=0) is None


class NumberedFrames(FakePipeline):
    """Green is the frame's number in the stream times GREEN_STEP (so a frame one off reads 40 levels off)."""

    def next_frames(self):
        first = self.frames_out
        block = super().next_frames()
        for i in range(len(block.frames)):
            block.frames[i, ..., 1] = ((first + i) * GREEN_STEP) % 256
        return block


class ReportingViewer(Viewer):
    """Decodes what it gets and keeps (the frame's RTP timestamp on the wire, its green level)."""

    def __init__(self, url, http, label="control"):
        super().__init__(url, http)
        self.label = label
        self.shown: list[tuple[int, float]] = []

    async def open(self):
        if self.label != "control":          # (Viewer.open makes a "control" channel: rename it first)
            real = self.pc.createDataChannel
            self.pc.createDataChannel = lambda name, **kw: real(self.label, **kw)
        return await super().open()

    async def _read(self, track) -> None:
        receiver = next(r for r in self.pc.getReceivers() if r.track is track)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            # aiortc's receiver counts pts from the first timestamp it saw: add that back for the wire's
            origin = receiver._RTCRtpReceiver__timestamp_mapper._origin
            rtp = (frame.pts + origin) % 2**32
            self.frames.append((0.0, frame.pts, frame.width, frame.height))
            self.shown.append((rtp, float(frame.to_ndarray(format="rgb24")[..., 1].mean())))


def green_of(seq: int) -> float:
    return float((seq * GREEN_STEP) % 256)


@contextlib.asynccontextmanager
async def serving():
    """The app on 127.0.0.1 over the numbered fake pipeline: (app, its URL, an HTTP session)."""
    engine = Engine(NumberedFrames(size=(64, 32)), prompt="start", seed=1)
    app = create_app(engine)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as http:
        yield app, str(server.make_url("")).rstrip("/"), http
        await app[SESSIONS].close_all()


@pytest.mark.integration
def test_a_viewers_rtp_timestamps_name_the_frames_it_decoded():
    async def main():
        async with serving() as (app, url, http):
            viewer = await ReportingViewer(url, http).open()
            await until(lambda: len(viewer.shown) >= 40, "40 decoded frames")
            sessions = app[SESSIONS]
            named = [(sessions.presented_frame(viewer.session, rtp), green) for rtp, green in viewer.shown[-24:]]
            assert all(seq is not None for seq, _ in named), named
            off = [(seq, green) for seq, green in named if abs(green_of(seq) - green) > 8]
            assert not off, f"frames named wrongly (seq, decoded green): {off}"
            assert sessions.presented_frame("no-such-session", viewer.shown[-1][0]) is None
            await viewer.close()
    asyncio.run(main())


@pytest.mark.integration
def test_a_viewer_reports_what_it_shows_and_the_server_measures_and_exports_its_latency():
    async def main():
        async with serving() as (app, url, http):
            performer = await ReportingViewer(url, http).open()
            watcher = await ReportingViewer(url, http, label="telemetry").open()      # a /watch page
            await until(lambda: len(performer.shown) >= 24 and len(watcher.shown) >= 24, "frames at both")
            # the telemetry channel steers nothing
            mark = watcher.send({"type": "prompt", "text": "not from a watcher", "id": "w"})
            refused = await watcher.wait_for(lambda m: m["type"] == "error" and m.get("id") == "w", start=mark)
            assert "viewer" in refused["message"]
            # reports on a connection without video are refused with a sentence
            async with http.post(f"{url}/api/command", json={"type": "presented", "rtp_timestamp": 1}) as r:
                assert r.status == 400 and "data channel" in (await r.json())["error"]

            mark = performer.send({"type": "prompt", "text": "a new prompt", "id": "p1"})
            switch = await performer.wait_for(lambda m: m["type"] == "prompt_applied" and m["id"] == "p1",
                                              start=mark)
            photons = {}
            for v in (performer, watcher):
                answers_from = len(v.messages)
                reported = 0
                while v not in photons:          # what a page does: report each frame it shows, until answered
                    await until(lambda: len(v.shown) > reported, "the next frame")
                    for rtp, _ in v.shown[reported:]:
                        v.send({"type": "presented", "rtp_timestamp": rtp, "age_ms": 0, "id": f"r{reported}"})
                        reported += 1
                    await asyncio.sleep(0.05)
                    got = [m for m in v.messages[answers_from:] if m["type"] == "photon"]
                    if got:
                        photons[v] = got[0]
                    assert reported < 200, "no photon after 200 frames reported"
                acks = [m for m in v.messages[answers_from:] if m["type"] == "ack" and m["command"] == "presented"]
                assert acks, "the frames before the switch are acknowledged"
            for v, p in photons.items():
                assert p["id"] == "p1" and p["frame"] == switch["frame"], (p, switch)
                assert p["shown"] >= switch["frame"]
                # the frame it names as the first one shown under the new prompt is one this viewer decoded
                assert any(abs(green_of(p["shown"]) - g) <= 8 for _, g in v.shown), p
                # on screen after it was generated (and after it was due on air)
                assert p["latency_ms"] >= switch["latency_ms"], (p, switch)
            assert {p["viewer"] for p in photons.values()} == {1, 2}

            async with http.get(f"{url}/metrics") as r:
                families = {f.name: f for f in text_string_to_metric_families(await r.text())}
            per_viewer = {s.labels["viewer"]: s.value for s in families["longlive_viewer_prompt_to_photon_seconds"]
                          .samples}
            assert per_viewer == {str(p["viewer"]): p["latency_ms"] / 1e3 for p in photons.values()} or \
                all(abs(per_viewer[str(p["viewer"])] - p["latency_ms"] / 1e3) < 1e-3 for p in photons.values())
            count = next(s.value for s in families["longlive_prompt_to_photon_seconds"].samples
                         if s.name.endswith("_count"))
            assert count == 2

            await watcher.close()
            await until(lambda: len(app[HUB].photon.latest) == 1, "the watcher's figure to go with it")
            await performer.close()
    asyncio.run(main())
