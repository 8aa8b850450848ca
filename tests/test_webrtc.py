"""WebRTC end to end: `longlive serve` (tiny default) in a subprocess, Python aiortc peers as viewers;
and the viewer's track and the server's rate figures on their own, on an injected clock.

All traffic stays on 127.0.0.0/8: the server listens on 127.0.0.1 (its default) and so offers
only 127.0.0.1 candidates (checked on every answer), and the viewers gather on 127.0.0.1 only
(`gathering_on`), so their offers carry no other address of the machine either.

No assertion here depends on how fast the machine is: the rates are printed, not checked
(docs/PERFORMANCE.md has the measured figures); what is checked is that frames keep
arriving, with timestamps exactly one frame (90000 / fps ticks) or a whole number of frames
apart, and what the counters say.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import aiohttp
import msgpack
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from server.addresses import gathering_on
from streaming.config import EMBEDDED_DEFAULT

REPO = Path(__file__).resolve().parent.parent
FPS = 16
TICK = 90_000 // FPS          # 90 kHz clock ticks per frame
LOOPBACK = ("127.0.0.1",)     # where every test peer gathers


def candidate_addresses(sdp: str) -> list[str]:
    """The connection address of every `a=candidate` line (RFC 8839: foundation component
    transport priority ADDRESS port typ ...)."""
    return [line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*args: str, prefix: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """`longlive serve` (tiny default) on a free port; returns the process and its URL. `prefix`:
    a command that execs the rest (e.g. into a namespace: the server must stay the process's pid)."""
    port = free_port()
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "longlive", "serve", "--port", str(port),
                             "--log-level", "warning", *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "LONGLIVE_WEIGHTS": ""})
    lines = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "serving on http://" in line:
            assert any(f"({EMBEDDED_DEFAULT} embedded default)" in ln for ln in lines), lines
            # keep draining its output so a chatty server never blocks on a full pipe
            drain = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
            drain.start()
            proc.output, proc.drain = lines, drain  # type: ignore[attr-defined]
            return proc, line.split("serving on ")[1].split()[0].rstrip("/")
    proc.kill()
    pytest.fail("the server did not start:\n" + "".join(lines) + (proc.stdout.read() or ""))


STOP_S = 120.0


def stop_server(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> str:
    """SIGTERM (or `sig`: SIGINT is Ctrl-C), which must end the server cleanly (exit 0, no traceback).
    The deadline only bounds a hung server: on a loaded machine a clean stop has taken over 30 s."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the server did not stop within {STOP_S:.0f} s of {signal.Signals(sig).name}")
    proc.drain.join(5)  # type: ignore[attr-defined]
    out = "".join(proc.output)  # type: ignore[attr-defined]
    assert proc.returncode == 0, out
    assert "stopped" in out and "Traceback" not in out, out
    return out


@pytest.fixture(scope="module")
def server():
    proc, url = start_server("--prompt", "first light")
    yield url
    stop_server(proc)


class Viewer:
    """A browser stand-in: receive-only video + a "control" data channel speaking msgpack."""

    def __init__(self, url: str, http: aiohttp.ClientSession):
        self.url, self.http = url, http
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.frames: list[tuple[float, int, int, int]] = []      # (arrival, pts, width, height)
        self.offer_sdp = self.answer_sdp = ""
        self.messages: list[dict[str, Any]] = []
        self.session: str | None = None
        self._reader: asyncio.Task | None = None
        self._news = asyncio.Event()

    async def open(self) -> "Viewer":
        self.pc.addTransceiver("video", direction="recvonly")
        self.channel = self.pc.createDataChannel("control")

        @self.channel.on("message")
        def on_message(data: bytes | str) -> None:
            self.messages.append(json.loads(data) if isinstance(data, str) else msgpack.unpackb(data, raw=False))
            self._news.set()

        @self.pc.on("track")
        def on_track(track) -> None:
            self._reader = asyncio.create_task(self._read(track))

        with gathering_on(LOOPBACK):      # this peer offers 127.0.0.1 only, not the machine's other addresses
            await self.pc.setLocalDescription(await self.pc.createOffer())
        self.offer_sdp = self.pc.localDescription.sdp
        assert set(candidate_addresses(self.offer_sdp)) == set(LOOPBACK), self.offer_sdp
        async with self.http.post(f"{self.url}/api/offer", json={"sdp": self.pc.localDescription.sdp,
                                                                "type": self.pc.localDescription.type}) as r:
            body = await r.json()
            assert r.status == 200, body
        assert body["type"] == "answer" and body["session"]
        self.session, self.answer_sdp = body["session"], body["sdp"]
        # checked before connecting, so that a server offering other addresses is never contacted there
        assert set(candidate_addresses(self.answer_sdp)) == set(LOOPBACK), self.answer_sdp
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
        await self.wait_for(lambda m: m["type"] == "hello", timeout=120)
        return self

    async def _read(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.frames.append((time.monotonic(), frame.pts, frame.width, frame.height))

    async def wait_for(self, match: Callable[[dict], bool], timeout: float = 10, start: int = 0) -> dict:
        deadline = time.monotonic() + timeout
        seen = start
        while True:
            for msg in self.messages[seen:]:
                if match(msg):
                    return msg
            seen = len(self.messages)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching message within {timeout} s; got {self.messages[start:][-10:]}")
            self._news.clear()
            try:
                await asyncio.wait_for(self._news.wait(), left)
            except asyncio.TimeoutError:
                pass

    def send(self, data: dict | bytes | str) -> int:
        """Send a message; returns the index the replies start at."""
        mark = len(self.messages)
        self.channel.send(msgpack.packb(data) if isinstance(data, dict) else data)
        return mark

    async def wait_frames(self, n: int, timeout: float = 30) -> None:
        """Until `n` frames have arrived in all (generous: a loaded machine is slow, not broken)."""
        deadline = time.monotonic() + timeout
        while len(self.frames) < n:
            assert time.monotonic() < deadline, f"only {len(self.frames)} frames in {timeout} s"
            await asyncio.sleep(0.05)

    def rate(self, t0: float, t1: float) -> float:
        """Frames received per second between t0 and t1 (a figure to print, never to assert)."""
        return sum(1 for t, *_ in self.frames if t0 <= t < t1) / (t1 - t0)

    def check_timestamps(self) -> None:
        """Every frame's pts is a whole number of frames after the one before it: exactly one
        frame (90000 / fps ticks) on the track's clock, more only where the viewer came late
        and skipped (or a packet was lost)."""
        steps = [(b[1] - a[1]) % 2**32 for a, b in zip(self.frames, self.frames[1:])]
        assert steps and all(s > 0 and s % TICK == 0 for s in steps), steps[:40]
        assert TICK in steps, steps[:40]

    async def close(self, delete: bool = True) -> None:
        if delete:
            async with self.http.delete(f"{self.url}/api/sessions/{self.session}") as r:
                assert r.status == 200
        await self.pc.close()
        if self._reader:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


async def health(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(f"{url}/api/health") as r:
        return await r.json()


def own_threads(h: dict) -> list[str]:
    """The server's threads other than the event loop's executor pool (reused, bounded)."""
    return [t for t in h["threads"] if not t.startswith(("asyncio_", "ThreadPoolExecutor"))]


@pytest.mark.integration
def test_the_answer_offers_only_loopback_candidates(server):
    """Bound to 127.0.0.1, the server offers 127.0.0.1 and nothing else (aioice alone would
    offer every other address of the machine and leave 127.0.0.1 out)."""
    async def main():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            session = None
            try:
                pc.addTransceiver("video", direction="recvonly")
                pc.createDataChannel("control")
                with gathering_on(LOOPBACK):
                    await pc.setLocalDescription(await pc.createOffer())
                assert set(candidate_addresses(pc.localDescription.sdp)) == {"127.0.0.1"}
                async with http.post(f"{server}/api/offer", json={"sdp": pc.localDescription.sdp,
                                                                  "type": "offer"}) as r:
                    body = await r.json()
                    assert r.status == 200, body
                session = body["session"]
                candidates = [ln for ln in body["sdp"].splitlines() if ln.startswith("a=candidate:")]
                assert candidates, body["sdp"]
                assert [c.split()[4] for c in candidates] == ["127.0.0.1"] * len(candidates), candidates
                assert all(" typ host" in c for c in candidates), candidates
                # the connection line agrees (never the machine's other addresses)
                assert set(re.findall(r"^c=IN IP[46] (\S+)", body["sdp"], re.M)) == {"127.0.0.1"}, body["sdp"]
            finally:
                await pc.close()       # never connected: the candidates were checked first
                if session:
                    async with http.delete(f"{server}/api/sessions/{session}") as r:
                        assert r.status == 200

    asyncio.run(main())


@pytest.mark.integration
def test_http_bodies_nested_too_deeply_get_400_and_one_sentence(server):
    async def main():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            for path, body in [("/api/prompt", "[" * 100_000 + "]" * 100_000),
                               ("/api/prompt", '{"text": ' + "[" * 50_000 + "]" * 50_000 + "}"),
                               ("/api/offer", '{"sdp": ' + "{\"a\":" * 20_000 + "1" + "}" * 20_000 + "}")]:
                assert len(body) < 256 * 1024
                async with http.post(server + path, data=body, headers={"Content-Type": "application/json"}) as r:
                    assert r.status == 400, (path, r.status, await r.text())
                    error = (await r.json())["error"]
                assert "nested too deeply" in error and "\n" not in error, error
            async with http.get(f"{server}/api/health") as r:      # the server is unharmed
                assert r.status == 200
    # the server's log is checked for tracebacks when the module's server stops
    asyncio.run(main())


@pytest.mark.integration
def test_one_viewer_steers_the_stream_and_survives_garbage(server):
    async def main():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            viewer = await Viewer(server, http).open()
            hello = next(m for m in viewer.messages if m["type"] == "hello")
            assert hello["protocol"] == 1 and hello["state"]["embedded_default"] is True
            await viewer.wait_frames(8)
            t0, n0 = time.monotonic(), len(viewer.frames)

            # a prompt switch: acknowledged, then applied
            mark = viewer.send({"type": "prompt", "text": "a lighthouse in a storm", "id": "p1"})
            ack = await viewer.wait_for(lambda m: m["type"] in ("ack", "error"), start=mark)
            assert ack == {"type": "ack", "id": "p1", "command": "prompt"}
            applied = await viewer.wait_for(lambda m: m["type"] == "prompt_applied", start=mark, timeout=120)
            assert applied["id"] == "p1" and applied["text"] == "a lighthouse in a storm"
            assert applied["latency_ms"] >= 0 and applied["plays_in_ms"] >= 0

            # garbage and wrong types: an error for each, with the id when there is one
            bad: list[tuple[Any, Any]] = [
                (b"\xc1\xff\x00garbage", None),
                ({"type": "prompt", "text": 12, "id": "b1"}, "b1"),
                ({"type": "seed", "seed": "many", "id": "b2"}, "b2"),
                ({"type": "explode", "id": "b3"}, "b3"),
                ("{not json", None),
                (msgpack.packb({"type": "prompt", "text": "x" * 100_000}), None),
            ]
            for data, rid in bad:
                mark = viewer.send(data)
                err = await viewer.wait_for(lambda m: m["type"] in ("error", "ack"), start=mark)
                assert err["type"] == "error" and err["message"] and err.get("id") == rid
            n_bad = len(viewer.frames)
            state = await viewer.wait_for(lambda m: m["type"] == "state",
                                          start=viewer.send({"type": "status", "id": "st"}))
            assert state["state"]["prompt"] == "a lighthouse in a storm" and state["state"]["seed"] == 0

            # the stats tell generated from delivered frames: both come, for this one viewer
            stats = await viewer.wait_for(lambda m: m["type"] == "stats" and m["delivered_fps"] is not None
                                          and m["generated_fps"], timeout=120)
            assert stats["viewers"] >= 1 and not stats["paused"]
            assert {"fps", "gen_fps", "generated_fps", "delivered_fps", "delivered_fps_min",
                    "rate_window_s"} <= set(stats)
            assert stats["delivered_fps_min"] <= stats["delivered_fps"] and stats["rate_window_s"] > 0

            # frames keep arriving after the garbage (how fast is printed, not asserted)
            await viewer.wait_frames(n_bad + 5 * FPS, timeout=120)   # about 5 s of stream, for the figure
            t1 = time.monotonic()
            print(f"\none viewer received {viewer.rate(t0, t1):.2f} fps over {t1 - t0:.1f} s "
                  f"({len(viewer.frames) - n0} frames); server stats: generated {stats['generated_fps']}, "
                  f"delivered {stats['delivered_fps']}, played {stats['fps']} fps")

            # frames: the stream's size, timestamps on the 90 kHz clock, one frame apart
            assert {f[2:] for f in viewer.frames[n0:]} == {(320, 192)}
            viewer.check_timestamps()

            await viewer.close()
            for _ in range(50):
                if (await health(http, server))["sessions"] == 0:
                    break
                await asyncio.sleep(0.1)
            assert (await health(http, server))["sessions"] == 0

    asyncio.run(main())


@pytest.mark.integration
def test_five_viewers_share_one_stream_and_leave_nothing_behind(server):
    async def main():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            before = await health(http, server)
            assert before["sessions"] == 0 and before["peer_connections"] == 0
            viewers = [Viewer(server, http) for _ in range(5)]
            await asyncio.gather(*(v.open() for v in viewers))
            await asyncio.gather(*(v.wait_frames(16) for v in viewers))

            during = await health(http, server)
            assert during["sessions"] == 5 and during["peer_connections"] == 5 and during["controllers"] == 5
            assert own_threads(during) == own_threads(before)          # no thread per viewer
            async with http.get(f"{server}/api/state") as r:
                assert (await r.json())["viewers"] == 5

            # one generation: a prompt from one viewer reaches every viewer at the same block and frame
            marks = [len(v.messages) for v in viewers]
            viewers[0].send({"type": "prompt", "text": "the same for everyone", "id": "all"})
            applied = [await v.wait_for(lambda m: m["type"] == "prompt_applied", start=k, timeout=120)
                       for v, k in zip(viewers, marks)]
            assert len({(a["block"], a["frame"], a["text"]) for a in applied}) == 1

            # every viewer keeps receiving frames; the server counts new frames for all five
            t0, counts = time.monotonic(), [len(v.frames) for v in viewers]
            await asyncio.gather(*(v.wait_frames(n + 24) for v, n in zip(viewers, counts)))
            rates = [v.rate(t0, time.monotonic()) for v in viewers]
            stats = await viewers[1].wait_for(lambda m: m["type"] == "stats" and m["viewers"] == 5
                                              and m["delivered_fps_min"], start=len(viewers[1].messages),
                                              timeout=120)
            print(f"\nfive viewers received {', '.join(f'{r:.1f}' for r in rates)} fps; server stats: generated "
                  f"{stats['generated_fps']}, delivered {stats['delivered_fps']} (slowest "
                  f"{stats['delivered_fps_min']}), played {stats['fps']} fps")
            assert stats["delivered_fps_min"] <= stats["delivered_fps"]
            for v in viewers:
                v.check_timestamps()

            # three say goodbye with DELETE, two just close their peer connection
            await asyncio.gather(*(v.close(delete=i < 3) for i, v in enumerate(viewers)))
            deadline = time.monotonic() + 120
            while True:
                after = await health(http, server)
                settled = (after["sessions"] == 0 and after["peer_connections"] == 0 and after["controllers"] == 0
                           and after["tasks"] <= before["tasks"])
                if settled or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert after["sessions"] == 0 and after["peer_connections"] == 0 and after["controllers"] == 0, after
            assert after["tasks"] <= before["tasks"], (before["task_names"], after["task_names"])
            assert own_threads(after) == own_threads(before)
            assert len(after["threads"]) - len(own_threads(after)) <= 6     # the executor pool stays bounded

    asyncio.run(main())


# -- the viewer's track and the rate figures, on an injected clock (no waiting, no wall time) -------------
class StepClock:
    """A clock that moves only when told to (in frames of the stream: exact binary fractions)."""

    def __init__(self, fps: float = FPS):
        self.fps, self.t = fps, 0.0

    def __call__(self) -> float:
        return self.t

    def to_frame(self, n: int) -> None:
        self.t = n / self.fps


def test_track_stamps_each_frame_one_frame_later_and_counts_what_it_sent():
    import numpy as np

    from server.framebus import FrameBus
    from server.media.track import BusVideoTrack

    def block(first: int, n: int) -> np.ndarray:      # frame k's pixels hold k, so the picture can be checked
        return np.stack([np.full((8, 16, 3), (first + i) % 256, np.uint8) for i in range(n)])

    async def main():
        clock = StepClock()
        bus = FrameBus(FPS, capacity=48, clock=clock)
        track = BusVideoTrack(bus, (16, 8), clock=clock)
        got = []

        async def at(frame: int) -> None:             # the encoder asks for a frame at this tick
            clock.to_frame(frame)
            out = await track.recv()
            got.append((out.pts, int(out.to_ndarray(format="rgb24")[0, 0, 0])))

        await at(0)                                    # before the first block: black, not "delivered"
        assert (track.sent, track.delivered, got[-1]) == (1, 0, (0, 0))
        bus.publish(block(0, 12))                      # frames 0..11, on air from t = 0
        for k in range(1, 12):
            await at(k)
        assert [pts for pts, _ in got] == [k * TICK for k in range(12)]      # exactly one frame apart
        assert [px for _, px in got[1:]] == list(range(1, 12))               # each tick a new frame
        assert (track.sent, track.delivered, track.repeated, track.skipped) == (12, 11, 0, 0)

        await at(12)                                   # a stall: generation is late, the last frame repeats
        await at(13)
        assert [px for _, px in got[-2:]] == [11, 11] and got[-1][0] == 13 * TICK
        assert (track.sent, track.delivered, track.repeated) == (14, 11, 2)

        clock.to_frame(14)
        bus.publish(block(12, 12))                     # the next block restarts playback now (frame 12)
        await at(14)
        assert got[-1] == (14 * TICK, 12) and track.delivered == 12

        await at(18)                                   # the encoder was late: the track jumps to now
        assert got[-1] == (18 * TICK, 16)
        assert (track.sent, track.delivered, track.repeated, track.skipped) == (16, 13, 2, 3)

        bus.pause()                                    # paused: every tick repeats the frame on air
        await at(19)
        await at(20)
        assert [px for _, px in got[-2:]] == [16, 16] and track.repeated == 4 and track.delivered == 13
        track.stop()

    asyncio.run(main())


def test_track_ticks_out_of_step_with_the_playhead_lose_no_frames():
    """The track's ticks and the playhead both run at 16 fps, each with its own phase and some
    timer jitter: ticks that fall alternately just before and just after the playhead moves on
    still deliver every frame once, in order (handing out only the frame on air, every other
    tick would repeat a frame and the next would skip one)."""
    import numpy as np

    from server.framebus import FrameBus
    from server.media.track import BusVideoTrack

    async def main():
        clock = StepClock()
        bus = FrameBus(FPS, capacity=48, clock=clock)
        track = BusVideoTrack(bus, (16, 8), clock=clock)
        bus.publish(np.stack([np.full((8, 16, 3), k, np.uint8) for k in range(24)]))
        shown = []
        for tick in range(21):
            jitter = 1 / 256 if tick % 2 == 0 else -1 / 256     # 4 ms after, then 4 ms before the frame's time
            clock.t = tick / FPS + jitter if tick else 0.0
            out = await track.recv()
            assert out.pts == tick * TICK
            shown.append(int(out.to_ndarray(format="rgb24")[0, 0, 0]))
        assert shown == list(range(21))
        assert (track.delivered, track.repeated, track.skipped) == (21, 0, 0)
        track.stop()

    asyncio.run(main())


def test_frame_rates_tell_generated_from_delivered():
    from server.control.hub import FrameRates

    rates = FrameRates(window_s=5.0)
    assert rates.generated_fps() is None and rates.delivered_fps() == [] and rates.span() == 0
    rates.add(0.0, 0, {})
    rates.add(1.0, 0, {})                               # the first block is still being made
    assert rates.generated_fps() is None                # nothing to measure from yet
    # then 8 viewers' worth of a stall: the engine makes 9 frames a second and viewer "a" is sent
    # 9 new ones (the frame on air repeats on the other 7 ticks); "b" connects at t = 3, gets its
    # first frame by t = 4 and then only 4 a second
    for t in range(2, 11):
        delivered = {"a": 9 * (t - 1)}
        if t >= 3:
            delivered["b"] = 4 * (t - 3)
        rates.add(float(t), 9 * (t - 1), delivered)
    assert rates.span() == 5.0                          # the window: back to the newest sample 5 s old
    assert rates.generated_fps() == 9.0
    assert sorted(rates.delivered_fps()) == [4.0, 9.0]
    rates.add(11.0, 90, {"a": 90, "c": 0})              # "b" left, "c" is connecting: not counted
    assert rates.delivered_fps() == [9.0]

    rates.reset()                                       # a pause: measured again from the next samples
    assert rates.generated_fps() is None and rates.delivered_fps() == []
    rates.add(12.0, 99, {"a": 99})
    rates.add(13.0, 115, {"a": 115})
    assert rates.generated_fps() == 16.0 and rates.delivered_fps() == [16.0] and rates.span() == 1.0

    early = FrameRates(window_s=5.0)                    # the server just started: the time before
    early.add(0.0, 0, {})                               # the first frame does not count
    early.add(1.0, 12, {})
    early.add(3.0, 36, {})
    assert early.generated_fps() == 12.0


# -- where ICE gathers (no connection is made: gathering only binds sockets on loopback) --------------------
def test_ice_offers_the_bind_address_only_and_all_addresses_for_an_all_interfaces_bind():
    from server.addresses import ice_host_addresses

    assert ice_host_addresses("127.0.0.1") == ("127.0.0.1",)
    assert ice_host_addresses("127.0.0.2") == ("127.0.0.2",)
    assert ice_host_addresses("192.168.1.5") == ("192.168.1.5",)
    assert ice_host_addresses("::1") == ("::1",)
    for everywhere in ("0.0.0.0", "::", "", None):
        assert ice_host_addresses(everywhere) is None          # aioice's own list: every address
    with pytest.raises(ValueError, match="numeric address"):
        ice_host_addresses("localhost")


@pytest.mark.integration
def test_gathering_on_is_scoped_to_its_block_and_context():
    """Two peers gathering at once, each restricted to its own loopback address, get exactly
    theirs: the restriction belongs to the `with` block's context, not to the process."""
    import aioice.ice

    async def offer(addresses: tuple[str, ...]) -> list[str]:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.addTransceiver("video", direction="recvonly")
            pc.createDataChannel("control")
            with gathering_on(addresses):
                await asyncio.sleep(0)                # let the other peer's block interleave with this one
                await pc.setLocalDescription(await pc.createOffer())
            return candidate_addresses(pc.localDescription.sdp)
        finally:
            await pc.close()

    async def main():
        a, b = await asyncio.gather(offer(("127.0.0.1",)), offer(("127.0.0.2",)))
        assert a and set(a) == {"127.0.0.1"}
        assert b and set(b) == {"127.0.0.2"}
        # outside any block the hook answers what aioice would (it only reads the interface list)
        from server import addresses
        assert aioice.ice.get_host_addresses is addresses._host_addresses
        assert addresses._host_addresses(True, True) == addresses._aioice_host_addresses(True, True)

    asyncio.run(main())


def test_a_loopback_server_ignores_offered_candidates_it_cannot_reach():
    from server.media.webrtc import reachable_candidates

    offer = ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
             "a=candidate:1 1 udp 2122260223 8d3e2a4f-1c2b-4f7a-9e3a-0a1b2c3d4e5f.local 50000 typ host\r\n"
             "a=candidate:2 1 udp 2122260223 192.0.2.2 50001 typ host\r\n"
             "a=candidate:3 1 udp 2122260223 127.0.0.1 50002 typ host\r\n"
             "a=candidate:4 1 udp 2122260223 ::1 50003 typ host\r\n"
             "a=end-of-candidates\r\n")
    kept = reachable_candidates(offer, ("127.0.0.1",))
    assert candidate_addresses(kept) == ["127.0.0.1", "::1"]
    assert kept.startswith("v=0\r\nm=video") and kept.endswith("a=end-of-candidates\r\n")
    assert reachable_candidates(offer, None) == offer                   # all interfaces: all candidates
    assert reachable_candidates(offer, ("192.168.1.5",)) == offer       # a LAN address: mDNS names stay


def test_an_sctp_send_after_goodbye_is_quiet_and_anything_else_is_still_reported(caplog):
    """aiortc's fire-and-forget SCTP sends raise ConnectionError when the connection closed under
    them; nobody retrieves it, and asyncio would log a traceback at garbage collection (which the
    server tests count as a crash). The server's loop handler quiets exactly that case."""
    import gc
    import logging

    from server.media.webrtc import quiet_sctp_goodbyes

    class RTCSctpTransport:             # the name aiortc's tasks carry
        async def _transmit(self):
            raise ConnectionError("Cannot send encrypted data, not connected")

    async def something_else():
        raise ConnectionError("a real failure")

    async def main() -> list:
        loop = asyncio.get_running_loop()
        seen: list = []
        loop.set_exception_handler(lambda _loop, context: seen.append(context))
        quiet_sctp_goodbyes(loop)
        for coro in (RTCSctpTransport()._transmit(), something_else()):
            task = asyncio.ensure_future(coro)
            await asyncio.wait([task])
            del task, coro
            gc.collect()           # the unretrieved exception is reported when the task goes
        return seen

    caplog.set_level(logging.DEBUG, logger="server.media.webrtc")
    seen = asyncio.run(main())
    assert [str(c["exception"]) for c in seen] == ["a real failure"]
    assert any("send after its connection closed" in r.getMessage() for r in caplog.records)
