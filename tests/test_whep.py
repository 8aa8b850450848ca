"""WHEP egress: a standard player (an aiortc peer speaking only WHEP, and GStreamer's webrtcbin)
pulls the stream with one POST; DELETE frees the session; bad offers, wrong content types
and trickle attempts get the answers the draft gives. The app runs in-process on 127.0.0.1
(fake pipeline, real engine thread, real HTTP and WebRTC)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from server.app import SESSIONS, create_app
from server.engine import Engine
from server.addresses import gathering_on
from server.media.webrtc import MediaOptions
from test_engine import FakePipeline
from test_webrtc import LOOPBACK, candidate_addresses

DEADLINE_S = 30.0


class WhepPlayer:
    """A WHEP player: a receive-only video offer POSTed as application/sdp, nothing else."""

    def __init__(self, http: aiohttp.ClientSession, endpoint: str):
        self.http, self.endpoint = http, endpoint
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.frames = 0
        self.location = self.etag = None
        self.headers: dict = {}
        self._reader: asyncio.Task | None = None

    async def play(self, headers: dict | None = None) -> "WhepPlayer":
        self.pc.addTransceiver("video", direction="recvonly")

        @self.pc.on("track")
        def on_track(track) -> None:
            self._reader = asyncio.create_task(self._read(track))
        with gathering_on(LOOPBACK):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        async with self.http.post(self.endpoint, data=self.pc.localDescription.sdp,
                                  headers={"Content-Type": "application/sdp", **(headers or {})}) as r:
            answer = await r.text()
            assert r.status == 201, (r.status, answer)
            self.headers = r.headers
        assert self.headers["Content-Type"] == "application/sdp"
        self.location, self.etag = self.headers["Location"], self.headers["ETag"]
        assert set(candidate_addresses(answer)) == set(LOOPBACK), answer
        assert "a=setup:passive" in answer            # the server is the DTLS server (webrtcbin needs it)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        return self

    async def _read(self, track) -> None:
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            self.frames += 1

    async def frames_at_least(self, n: int) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while self.frames < n:
            assert time.monotonic() < deadline, f"only {self.frames} frames"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.pc.close()
        if self._reader:
            self._reader.cancel()


async def serving(**app_kw):
    engine = Engine(FakePipeline(size=(32, 16)), prompt="start", seed=3)
    app = create_app(engine, **app_kw)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return app, server, str(server.make_url("/whep"))


@pytest.mark.integration
def test_a_whep_player_receives_frames_and_delete_frees_its_session():
    async def main():
        app, server, endpoint = await serving()
        try:
            async with aiohttp.ClientSession() as http:
                player = await WhepPlayer(http, endpoint).play()
                await player.frames_at_least(16)
                sessions = app[SESSIONS]
                assert sessions.counts() == {"page": 0, "whep": 1}
                base = endpoint.rsplit("/whep", 1)[0]
                async with http.delete(base + player.location) as r:
                    assert r.status == 200
                assert sessions.count == 0
                deadline = time.monotonic() + DEADLINE_S
                while sessions.encoder.running:          # nobody watches: the encoder stops
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                async with http.delete(base + player.location) as r:
                    assert r.status == 404 and "no such WHEP session" in await r.text()
                await player.close()
        finally:
            await app[SESSIONS].close_all()
            await server.close()
    asyncio.run(main())


@pytest.mark.integration
def test_whep_refusals_preflight_and_ice_server_links():
    async def main():
        app, server, endpoint = await serving(media=MediaOptions(ice_servers=("stun:stun.example.org:3478",)))
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(endpoint, data="v=0\r\nnot an offer", headers={"Content-Type": "application/sdp"}) as r:
                    assert r.status == 400 and "no media sections" in await r.text()
                async with http.post(endpoint, json={"sdp": "v=0"}) as r:
                    assert r.status == 415 and "application/sdp" in await r.text()
                    assert r.headers["Accept-Post"] == "application/sdp"
                async with http.post(endpoint, data=b"m=" + b"x" * (70 * 1024), headers={"Content-Type": "application/sdp"}) as r:
                    assert r.status == 413
                async with http.options(endpoint, headers={"Origin": "https://player.example",
                                                           "Access-Control-Request-Method": "POST"}) as r:
                    assert r.status == 204
                    assert r.headers["Access-Control-Allow-Origin"] == "https://player.example"
                    assert "POST" in r.headers["Access-Control-Allow-Methods"]
                    assert "Location" in r.headers["Access-Control-Expose-Headers"]
                    assert r.headers.getall("Link") == ['<stun:stun.example.org:3478>; rel="ice-server"']
                player = await WhepPlayer(http, endpoint).play()
                assert player.headers.getall("Link") == ['<stun:stun.example.org:3478>; rel="ice-server"']
                base = endpoint.rsplit("/whep", 1)[0]
                async with http.patch(base + player.location, data="a=candidate:1 1 udp 1 127.0.0.1 9 typ host",
                                      headers={"Content-Type": "application/trickle-ice-sdpfrag"}) as r:
                    assert r.status == 405 and "DELETE" in r.headers["Allow"]
                async with http.patch(base + "/whep/nobody") as r:
                    assert r.status == 404
                assert app[SESSIONS].count == 1           # the refusals changed nothing
                await player.close()
        finally:
            await app[SESSIONS].close_all()
            await server.close()
    asyncio.run(main())


# -- GStreamer's webrtcbin as the player ------------------------------------------------------------------
SYSTEM_PYTHON = "/usr/bin/python3"
REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def webrtcbin_missing() -> str | None:
    """Why the webrtcbin player cannot run here (None when it can)."""
    import os
    import shutil
    import subprocess
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs root, unshare and ip to make a network namespace (the player gathers on every interface)"
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0'); "
             "from gi.repository import Gst; Gst.init(None); "
             "assert all(Gst.ElementFactory.find(e) for e in ('webrtcbin', 'vp8dec', 'nicesrc', 'rtpvp8depay'))")
    try:
        subprocess.run([SYSTEM_PYTHON, "-c", probe], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "GStreamer's webrtcbin is not installed for the system Python (make gst-webrtc installs it)"
    return None


@pytest.mark.integration
def test_gstreamer_webrtcbin_plays_the_whep_stream(tmp_path):
    """webrtcbin (libnice) gathers on every interface but loopback ones, so server and player run
    inside a network namespace made here: lo plus a veth holding 127.0.0.2, the address both
    use (libnice neither answers nor checks a 127.0.0.1 peer from there); all traffic stays on
    127.0.0.2 inside it. The answer takes the DTLS server role, without which webrtcbin 1.22
    and aiortc share no cipher."""
    import json
    import subprocess
    import sys
    reason = webrtcbin_missing()
    if reason and __import__("os").environ.get("LONGLIVE_REQUIRE_WEBRTCBIN"):
        pytest.fail(reason + " (make test installs it)")
    if reason:
        pytest.skip(reason)
    seconds = 6
    log = tmp_path / "serve.log"
    script = f"""
set -e
ip link set lo up
ip link add v0 type veth peer name v1
ip addr add 127.0.0.2/32 dev v0
ip link set v0 up
ip link set v1 up
{sys.executable} -m longlive serve --host 127.0.0.2 --port 8090 --log-level warning --no-ai --device cpu > {log} 2>&1 &
server=$!
for i in $(seq 1 200); do curl -sf http://127.0.0.2:8090/api/health > /dev/null && break; sleep 0.3; done
{SYSTEM_PYTHON} {REPO / "tests" / "whep_webrtcbin.py"} http://127.0.0.2:8090/whep {seconds}
curl -sf http://127.0.0.2:8090/api/health
kill -TERM $server
wait $server
"""
    run = subprocess.run(["unshare", "-n", "bash", "-c", script], cwd=REPO, capture_output=True, text=True,
                         timeout=180, env={**__import__("os").environ, "LONGLIVE_WEIGHTS": ""})
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert run.returncode == 0 and len(lines) == 2, (run.stdout, run.stderr, log.read_text())
    played, health = json.loads(lines[0]), json.loads(lines[1])
    print(f"webrtcbin over WHEP: {played['frames']} frames in {seconds} s "
          f"({played['frames'] / seconds:.1f} fps, including the connection), {played['width']}x{played['height']}")
    assert played["status"] == 201 and played["error"] is None, played
    assert (played["width"], played["height"]) == (320, 192)
    assert played["frames"] >= 4 * 16, played        # more than 4 s of 16 fps video in 6 s
    assert health["sessions"] == 0, health             # its DELETE freed the session
    assert "Traceback" not in log.read_text()
