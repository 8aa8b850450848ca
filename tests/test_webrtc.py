"""WebRTC end to end: `longlive serve` (tiny default) in a subprocess, Python aiortc peers as viewers."""

from __future__ import annotations

import asyncio
import json
import os
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

REPO = Path(__file__).resolve().parent.parent
FPS = 16
TICK = 90_000 // FPS          # 90 kHz clock ticks per frame


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*args: str) -> tuple[subprocess.Popen, str]:
    """`longlive serve` (tiny default) on a free port; returns the process and its URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "longlive", "serve", "--port", str(port), "--log-level", "warning",
                             *args],
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
            assert any("tiny embedded default" in ln for ln in lines), lines
            # keep draining its output so a chatty server never blocks on a full pipe
            drain = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
            drain.start()
            proc.output, proc.drain = lines, drain  # type: ignore[attr-defined]
            return proc, line.split("serving on ")[1].split()[0].rstrip("/")
    proc.kill()
    pytest.fail("the server did not start:\n" + "".join(lines) + (proc.stdout.read() or ""))


def stop_server(proc: subprocess.Popen) -> str:
    """SIGTERM, which must end the server cleanly (exit 0, no traceback) within 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the server did not stop within 30 s of SIGTERM")
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

        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with self.http.post(f"{self.url}/api/offer", json={"sdp": self.pc.localDescription.sdp,
                                                                "type": self.pc.localDescription.type}) as r:
            body = await r.json()
            assert r.status == 200, body
        assert body["type"] == "answer" and body["session"]
        self.session = body["session"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
        await self.wait_for(lambda m: m["type"] == "hello", timeout=20)
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

    async def wait_frames(self, n: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.frames) < n:
            assert time.monotonic() < deadline, f"only {len(self.frames)} frames in {timeout} s"
            await asyncio.sleep(0.05)

    def rate(self, t0: float, t1: float) -> float:
        return sum(1 for t, *_ in self.frames if t0 <= t < t1) / (t1 - t0)

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


def test_one_viewer_gets_16_fps_steers_the_stream_and_survives_garbage(server):
    async def main():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            viewer = await Viewer(server, http).open()
            hello = next(m for m in viewer.messages if m["type"] == "hello")
            assert hello["protocol"] == 1 and hello["state"]["embedded_default"] is True
            await viewer.wait_frames(8)
            t0 = time.monotonic()

            # a prompt switch: acknowledged, then applied
            await asyncio.sleep(2)
            mark = viewer.send({"type": "prompt", "text": "a lighthouse in a storm", "id": "p1"})
            ack = await viewer.wait_for(lambda m: m["type"] in ("ack", "error"), start=mark)
            assert ack == {"type": "ack", "id": "p1", "command": "prompt"}
            applied = await viewer.wait_for(lambda m: m["type"] == "prompt_applied", start=mark)
            assert applied["id"] == "p1" and applied["text"] == "a lighthouse in a storm"
            assert 0 <= applied["latency_ms"] < 5000

            # garbage and wrong types: an error for each, with the id when there is one
            t_bad = time.monotonic()
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
            state = await viewer.wait_for(lambda m: m["type"] == "state",
                                          start=viewer.send({"type": "status", "id": "st"}))
            assert state["state"]["prompt"] == "a lighthouse in a storm" and state["state"]["seed"] == 0

            stats = await viewer.wait_for(lambda m: m["type"] == "stats")
            assert stats["viewers"] >= 1

            while time.monotonic() < t0 + 10:
                await asyncio.sleep(0.1)
            t1 = time.monotonic()
            rate = viewer.rate(t0, t1)
            after_garbage = viewer.rate(t_bad, t1)
            print(f"\nreceived {rate:.2f} fps over {t1 - t0:.1f} s ({after_garbage:.2f} fps after the garbage)")
            assert FPS * 0.8 <= rate <= FPS * 1.2
            assert after_garbage >= FPS * 0.8

            # frames: the stream's size, timestamps on the 90 kHz clock at 16 fps
            w, h = viewer.frames[-1][2:]
            assert (w, h) == (320, 192)
            steps = [(b[1] - a[1]) % 2**32 for a, b in zip(viewer.frames, viewer.frames[1:])]
            assert all(s % TICK == 0 for s in steps), steps[:20]
            assert sum(steps) / len(steps) == pytest.approx(TICK, rel=0.2)

            await viewer.close()
            for _ in range(50):
                if (await health(http, server))["sessions"] == 0:
                    break
                await asyncio.sleep(0.1)
            assert (await health(http, server))["sessions"] == 0

    asyncio.run(main())


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
            applied = [await v.wait_for(lambda m: m["type"] == "prompt_applied", start=k)
                       for v, k in zip(viewers, marks)]
            assert len({(a["block"], a["frame"], a["text"]) for a in applied}) == 1

            t0 = time.monotonic()
            await asyncio.sleep(3)
            rates = [v.rate(t0, time.monotonic()) for v in viewers]
            print(f"\nfive viewers: {', '.join(f'{r:.1f}' for r in rates)} fps")
            assert all(r >= FPS * 0.8 for r in rates), rates
            stats = await viewers[1].wait_for(lambda m: m["type"] == "stats", start=len(viewers[1].messages))
            assert stats["viewers"] == 5
            assert FPS * 0.8 <= stats["fps"] <= FPS * 1.2

            # three say goodbye with DELETE, two just close their peer connection
            await asyncio.gather(*(v.close(delete=i < 3) for i, v in enumerate(viewers)))
            deadline = time.monotonic() + 20
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
