"""How much server CPU an audience costs: `longlive serve` (the embedded default) with 0, 1, 5 and
20 WebRTC viewers on loopback, each an aiortc peer that decodes what it gets.

    .venv/bin/python tools/viewer_load.py [--viewers 0 1 5 20] [--seconds 10] [-- SERVE ARGS]

For each count it connects the viewers, lets them settle for a few seconds, then measures
over `--seconds`: the server process's CPU (user + system time from /proc, as % of one core)
and the frames each viewer received per second (min and median). It prints a table for
docs/PERFORMANCE.md. All traffic stays on 127.0.0.1 (the server's default bind; the viewers
gather on loopback only). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from server.addresses import gathering_on  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS       # utime + stime


class Viewer:
    def __init__(self, url: str, http: aiohttp.ClientSession):
        self.url, self.http = url, http
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.arrivals: list[float] = []
        self.task: asyncio.Task | None = None

    async def open(self) -> "Viewer":
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.createDataChannel("control")
        self.pc.on("track", lambda track: setattr(self, "task", asyncio.ensure_future(self._read(track))))
        with gathering_on(("127.0.0.1",)):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        async with self.http.post(self.url + "/api/offer", json={"sdp": self.pc.localDescription.sdp,
                                                                "type": "offer"}) as r:
            body = await r.json()
        self.session = body["session"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
        return self

    async def _read(self, track) -> None:
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            self.arrivals.append(time.monotonic())

    def fps(self, t0: float, t1: float) -> float:
        return sum(1 for t in self.arrivals if t0 <= t < t1) / (t1 - t0)

    async def close(self) -> None:
        async with self.http.delete(f"{self.url}/api/sessions/{self.session}"):
            pass
        await self.pc.close()


async def measure(url: str, pid: int, counts: list[int], seconds: float, settle: float) -> list[dict]:
    rows = []
    async with aiohttp.ClientSession() as http:
        for n in counts:
            viewers = [await Viewer(url, http).open() for _ in range(n)]
            await asyncio.sleep(settle)
            t0, c0 = time.monotonic(), cpu_seconds(pid)
            await asyncio.sleep(seconds)
            t1, c1 = time.monotonic(), cpu_seconds(pid)
            rates = [v.fps(t0, t1) for v in viewers]
            rows.append({"viewers": n, "cpu_pct": 100 * (c1 - c0) / (t1 - t0),
                         "fps_min": min(rates) if rates else None,
                         "fps_median": statistics.median(rates) if rates else None})
            print(f"{n:3d} viewers: server CPU {rows[-1]['cpu_pct']:5.1f}% of a core, "
                  + (f"fps per viewer min {min(rates):.1f} median {statistics.median(rates):.1f}" if rates else ""),
                  flush=True)
            for v in viewers:
                await v.close()
            await asyncio.sleep(1.0)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--viewers", type=int, nargs="+", default=[0, 1, 5, 20])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--settle", type=float, default=4.0)
    p.add_argument("serve_args", nargs="*", help="more arguments for longlive serve (after --)")
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "longlive", "serve", "--port", str(port), "--no-ai",
                               "--log-level", "warning", *args.serve_args], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, "LONGLIVE_WEIGHTS": ""})
    try:
        for line in server.stdout:
            if "serving on" in line:
                break
        else:
            print("the server did not start", file=sys.stderr)
            return 1
        asyncio.run(measure(f"http://127.0.0.1:{port}", server.pid, args.viewers, args.seconds, args.settle))
    finally:
        server.terminate()
        server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
