"""WHIP publish (server/media/whip.py): into a tiny in-process WHIP server, and into a real SFU.

The unit tests run a small aiohttp WHIP endpoint on 127.0.0.1 (real HTTP) whose answerer is
an aiortc peer that decodes what it gets, and a `WhipPublisher` offering 127.0.0.1 candidates
only; the back-off's sleep is injected (it records the waits and returns at once), so no test
asserts on wall-clock time. They check the POST (content type, Bearer header, a complete
non-trickle offer, VP8 first), the 201 handling (a relative Location), a refusal or a dead
endpoint becoming one log line and a retry with back-off, a lost connection reconnecting, the
DELETE on stop, the app's startup and shutdown, the CLI's refusals, and that the token is in
no log line.

`test_whip_into_janus_fans_out_reconnects_and_deletes` runs `tests/janus/scenario.py` inside a
network namespace of its own (`unshare -n`): Janus 1.1.2 (Debian) with simple-whip-server in
front, `longlive serve --whip`, aiortc viewers subscribing through Janus. It needs root,
Janus and `make janus`'s simple-whip-server; it skips without them, unless
LONGLIVE_REQUIRE_JANUS is set (`make test` sets it and installs them), where it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from longlive import cli
from server.app import WHIP, create_app
from server.engine import Engine
from server.serve import whip_options
from server.addresses import gathering_on
from server.media.whip import WhipOptions, WhipPublisher, backoff_delays, safe_url
from test_engine import FakePipeline

REPO = Path(__file__).resolve().parent.parent
SCENARIO = REPO / "tests" / "janus" / "scenario.py"
WHIP_SERVER = REPO / ".cache" / "simple-whip-server" / "app" / "server.js"
DEADLINE_S = 30.0             # on any one wait (never a timing assertion)
TOKEN = "tok-3f9a61c2-never-in-a-log"
LOOPBACK = ("127.0.0.1",)


# -- a tiny WHIP endpoint ---------------------------------------------------------------------------------
@dataclass
class Resource:
    pc: RTCPeerConnection
    frames: int = 0
    deleted: bool = False


@dataclass
class FakeWhip:
    """A WHIP endpoint at /whip/endpoint and its resources at /whip/resource/N. `refusals`
    are answered first, one per POST ((status, body)); then each POST gets an aiortc answerer
    that decodes the video. Every request is kept (method, path, headers, body)."""

    refusals: list[tuple[int, str]] = field(default_factory=list)
    requests: list[tuple[str, str, dict, str]] = field(default_factory=list)
    resources: dict[str, Resource] = field(default_factory=dict)
    on_delete: list = field(default_factory=list)      # callables run when a DELETE arrives

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/whip/endpoint", self.post)
        app.router.add_delete("/whip/resource/{n}", self.delete)
        return app

    async def post(self, request: web.Request) -> web.Response:
        body = await request.text()
        self.requests.append(("POST", request.path, dict(request.headers), body))
        if self.refusals:
            status, text = self.refusals.pop(0)
            return web.Response(status=status, text=text)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        n = str(len(self.resources) + 1)
        resource = self.resources[n] = Resource(pc)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            async def read() -> None:
                with contextlib.suppress(MediaStreamError):
                    while True:
                        await track.recv()
                        resource.frames += 1
            asyncio.ensure_future(read())

        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="offer"))
        with gathering_on(LOOPBACK):
            await pc.setLocalDescription(await pc.createAnswer())
        return web.Response(status=201, body=pc.localDescription.sdp.encode(),
                            headers={"Content-Type": "application/sdp", "Location": f"/whip/resource/{n}",
                                     "ETag": f'"{n}"'})

    async def delete(self, request: web.Request) -> web.Response:
        self.requests.append(("DELETE", request.path, dict(request.headers), ""))
        for hook in self.on_delete:
            hook()
        resource = self.resources.get(request.match_info["n"])
        if resource is None or resource.deleted:
            return web.Response(status=404, text="no such resource")
        resource.deleted = True
        await resource.pc.close()
        return web.Response(status=200)

    def posts(self) -> list[tuple[str, str, dict, str]]:
        return [r for r in self.requests if r[0] == "POST"]

    def deletes(self) -> list[tuple[str, str, dict, str]]:
        return [r for r in self.requests if r[0] == "DELETE"]

    async def close(self) -> None:
        for r in self.resources.values():
            await r.pc.close()


@contextlib.asynccontextmanager
async def fake_whip(**kwargs):
    whip = FakeWhip(**kwargs)
    server = TestServer(whip.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield whip, f"http://127.0.0.1:{server.port}/whip/endpoint"
    finally:
        await whip.close()
        await server.close()


class GreyTrack(MediaStreamTrack):
    """64x48 frames at 16 fps, a new grey each frame."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self.started: float | None = None

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.started is None:
            self.started = time.monotonic()
        await asyncio.sleep(max(0.0, self.started + self.n / 16 - time.monotonic()))
        frame = VideoFrame.from_ndarray(np.full((48, 64, 3), self.n % 256, np.uint8), format="rgb24")
        frame.pts, frame.time_base = self.n * 90000 // 16, Fraction(1, 90000)
        self.n += 1
        return frame


class RecordedSleep:
    """The back-off's sleep: records each wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0.01)


async def until(predicate, what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def options(url: str, **kwargs) -> WhipOptions:
    return WhipOptions(url=url, ice_addresses=LOOPBACK, **kwargs)


def no_token_anywhere(caplog, *more: str) -> None:
    texts = [r.getMessage() for r in caplog.records] + [caplog.text, *more]
    assert not [t for t in texts if TOKEN in t], "the token reached a log line or a message"


def whip_lines(caplog, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "server.media.whip" and r.levelno >= level]


# -- the unit tests ----------------------------------------------------------------------------------------
@pytest.mark.integration
def test_publish_posts_a_complete_sdp_offer_with_the_bearer_token_and_deletes_on_stop(caplog):
    caplog.set_level(logging.DEBUG)

    async def main():
        async with fake_whip() as (whip, url):
            publisher = WhipPublisher(options(url, token=TOKEN), GreyTrack, sleep=RecordedSleep())
            await publisher.start()
            await until(lambda: publisher.state == "publishing", "the publisher to connect")
            await until(lambda: whip.resources["1"].frames >= 10, "the endpoint to decode 10 frames")
            (_, path, headers, offer), = whip.posts()
            assert headers["Content-Type"] == "application/sdp"
            assert headers["Authorization"] == f"Bearer {TOKEN}"
            assert offer.startswith("v=0")
            video = offer[offer.index("m=video"):]
            assert "a=sendonly" in video and "m=audio" not in offer
            payloads = video.split("\r\n", 1)[0].split()[3:]
            rtpmap = dict(line[len("a=rtpmap:"):].split(" ", 1) for line in video.split("\r\n")
                          if line.startswith("a=rtpmap:"))
            assert rtpmap[payloads[0]].startswith("VP8/"), "VP8 is the preferred codec"
            assert {rtpmap[p].split("/")[0] for p in payloads} <= {"VP8", "rtx"}
            candidates = [line.split()[4] for line in offer.split("\r\n") if line.startswith("a=candidate:")]
            assert candidates and set(candidates) == {"127.0.0.1"}, "non-trickle: every candidate is in the offer"
            assert publisher.resource == url.replace("/whip/endpoint", "/whip/resource/1"), \
                "the relative Location is resolved against the endpoint"

            await publisher.stop()
            (_, path, headers, _), = whip.deletes()
            assert path == "/whip/resource/1" and headers["Authorization"] == f"Bearer {TOKEN}"
            assert whip.resources["1"].deleted
            assert publisher.state == "stopped" and publisher.pc is None and publisher.deletes == 1
            stats = publisher.stats()
            assert stats["publishes"] == 1 and stats["failures"] == 0
            no_token_anywhere(caplog, json.dumps(stats), repr(publisher.options))

    asyncio.run(main())


@pytest.mark.integration
def test_refusals_and_a_dead_endpoint_are_one_line_each_and_retried_with_back_off(caplog):
    caplog.set_level(logging.DEBUG)

    async def main():
        async with fake_whip(refusals=[(403, "Unauthorized"), (404, "Invalid endpoint ID"),
                                       (503, "Janus unavailable")]) as (whip, url):
            sleep = RecordedSleep()
            publisher = WhipPublisher(options(url, token=TOKEN), GreyTrack, sleep=sleep)
            await publisher.start()
            await until(lambda: publisher.state == "publishing", "the publisher to get through")
            assert len(whip.posts()) == 4
            assert sleep.waits == [1, 2, 4]
            lines = whip_lines(caplog)
            assert len(lines) == 3, lines
            for line, (status, text) in zip(lines, [(403, "Unauthorized"), (404, "Invalid endpoint ID"),
                                                    (503, "Janus unavailable")]):
                assert f"answered {status}" in line and text in line and "\n" not in line
            assert "trying again in 2 s" in lines[1]
            assert publisher.failures == 3 and publisher.publishes == 1
            await publisher.stop()

        # nothing listens there any more: connection refused, one line per attempt, the waits double
        sleep = RecordedSleep()
        publisher = WhipPublisher(options(url, token=TOKEN), GreyTrack, sleep=sleep)
        caplog.clear()
        await publisher.start()
        await until(lambda: len(sleep.waits) >= 7, "seven retries")
        await publisher.stop()
        assert sleep.waits[:7] == [1, 2, 4, 8, 16, 30, 30]
        lines = whip_lines(caplog)
        assert len(lines) >= 7 and all("cannot connect to 127.0.0.1" in line for line in lines), lines[:2]
        assert publisher.deletes == 0 and publisher.state == "stopped"
        no_token_anywhere(caplog, publisher.last_error or "")

    asyncio.run(main())


@pytest.mark.integration
def test_a_lost_connection_is_torn_down_and_published_again(caplog):
    caplog.set_level(logging.DEBUG)

    async def main():
        async with fake_whip(refusals=[(503, "busy"), (503, "busy")]) as (whip, url):
            sleep = RecordedSleep()
            publisher = WhipPublisher(options(url, token=TOKEN), GreyTrack, sleep=sleep)
            await publisher.start()
            await until(lambda: whip.resources.get("1") and whip.resources["1"].frames >= 5, "frames at the SFU")
            assert sleep.waits == [1, 2]
            first_track = publisher.track
            await whip.resources["1"].pc.close()        # the SFU drops us
            await until(lambda: publisher.publishes == 2, "the publisher to publish again")
            await until(lambda: whip.resources["2"].frames >= 5, "frames at the SFU again")
            assert sleep.waits == [1, 2, 1], "a connection that came up resets the back-off"
            assert first_track.readyState == "ended", "each attempt has a track of its own"
            assert [r[1] for r in whip.deletes()] == ["/whip/resource/1"], "the old resource is deleted"
            lines = whip_lines(caplog)
            assert len(lines) == 3 and "the connection to the SFU closed" in lines[2], lines
            await publisher.stop()
            assert [r[1] for r in whip.deletes()] == ["/whip/resource/1", "/whip/resource/2"]
            no_token_anywhere(caplog)

    asyncio.run(main())


@pytest.mark.integration
def test_the_app_publishes_from_startup_and_deletes_before_the_engine_stops(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)

    async def main():
        async with fake_whip() as (whip, url):
            engine = Engine(FakePipeline(size=(64, 48)), prompt="start", seed=1)
            running_at_delete: list[bool] = []
            whip.on_delete.append(lambda: running_at_delete.append(engine.running))
            app = create_app(engine, recordings=tmp_path / "recordings", whip=options(url, token=TOKEN))
            async with TestClient(TestServer(app, host="127.0.0.1")) as client:
                publisher = app[WHIP]
                await until(lambda: publisher.state == "publishing", "the app's publisher to connect")
                await until(lambda: whip.resources["1"].frames >= 5, "the stream's frames at the SFU")
                health = await (await client.get("/api/health")).json()
                assert health["whip"]["state"] == "publishing" and health["whip"]["url"] == url
                assert TOKEN not in json.dumps(health)
            assert running_at_delete == [True], "the resource is deleted while the engine still runs"
            assert not engine.running and whip.resources["1"].deleted
            no_token_anywhere(caplog)

    asyncio.run(main())


def test_back_off_doubles_up_to_thirty_seconds_and_urls_are_logged_without_secrets():
    delays = backoff_delays()
    assert [next(delays) for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert safe_url("https://user:pw@sfu.example.com:8443/whip/ep?access_token=abc#x") == \
        "https://sfu.example.com:8443/whip/ep"
    assert safe_url("http://[::1]:7080/whip") == "http://[::1]:7080/whip"
    assert TOKEN not in repr(WhipOptions("http://h/whip", token=TOKEN))
    with pytest.raises(ValueError, match="http:// or https://"):
        WhipPublisher(WhipOptions("ftp://h/whip"), GreyTrack)


@pytest.mark.parametrize("url", ["ftp://sfu/whip", "sfu.example.com/whip", "http://", "https://h:99999/w",
                                 "rtmp://user:secret@h/x"])
def test_cli_refuses_a_whip_url_that_is_not_http_in_one_sentence(url, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["serve", "--whip", url])
    assert exit_.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "argument --whip: the WHIP endpoint must be an http:// or https:// URL" in err
    assert "secret" not in err


def test_cli_whip_and_token_become_the_publishers_options(monkeypatch):
    args = cli.build_parser().parse_args(["serve", "--whip", "https://sfu/whip/endpoint/a", "--whip-token", TOKEN])
    opts = whip_options(args)
    assert opts.url == "https://sfu/whip/endpoint/a" and opts.token == TOKEN and opts.ice_addresses is None
    assert whip_options(cli.build_parser().parse_args(["serve"])) is None
    monkeypatch.setenv("LONGLIVE_WHIP_TOKEN", "from-env")
    args = cli.build_parser().parse_args(["serve", "--whip", "http://127.0.0.1:7080/whip/endpoint/a"])
    assert whip_options(args).token == "from-env"


# -- into a real SFU: Janus with simple-whip-server in front --------------------------------------------------
def janus_missing() -> str | None:
    """Why the Janus scenario cannot run here, or None."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return "the Janus test needs root (a network namespace of its own, `unshare -n`)"
    for tool in ("janus", "node", "unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: `make janus` installs Janus and simple-whip-server"
    if not WHIP_SERVER.exists():
        return f"{WHIP_SERVER.relative_to(REPO)} is missing: `make janus` prepares simple-whip-server"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make a network namespace (unshare -n: {probe.stderr.strip() or probe.returncode})"
    return None


@pytest.mark.integration
@pytest.mark.slow
def test_whip_into_janus_fans_out_reconnects_and_deletes(tmp_path):
    why = janus_missing()
    if why is not None:
        if os.environ.get("LONGLIVE_REQUIRE_JANUS"):      # `make test` installs it: missing there is a failure
            pytest.fail(why)
        pytest.skip(why)
    proc = subprocess.run(["unshare", "-n", "--", sys.executable, str(SCENARIO), "--work", str(tmp_path),
                           "--token", TOKEN], capture_output=True, text=True, timeout=150, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, f"the scenario failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n" \
                                           f"{proc.stderr[-3000:]}"
    result = json.loads(lines[-1])
    print("\nWHIP into Janus:", json.dumps(result, indent=1))
    fps = result["fps"]
    assert len(fps["1"]) == 1 and len(fps["5"]) == 5
    for n in ("1", "5"):
        sent = result["sent_fps"][n]
        assert all(f >= 0.9 * sent for f in fps[n]), f"Janus carries all the publisher sends ({sent} fps): {fps[n]}"
        # 16 fps when the machine is ours (15.7-16.2 measured); slack for other jobs on a shared 2-core machine
        assert all(13.0 <= f <= 17.5 for f in fps[n]), f"every viewer near 16 fps with {n} viewers: {fps[n]}"
    cpu = result["cpu_percent"]
    assert cpu["5"] < 2 * cpu["1"], f"our server's CPU with 5 viewers {cpu['5']}% vs 1 viewer {cpu['1']}%"
    assert result["reconnected"] and result["reconnect_fps"] >= 10.0, result
    assert result["publisher"]["publishes"] >= 2 and result["publisher"]["failures"] >= 1, result["publisher"]
    assert all(a.startswith("127.") for a in result["listening"]), f"listening beyond loopback: {result['listening']}"
    assert result["deleted"], "the WHIP resource was DELETEd at SIGTERM"
    assert result["participants_after_stop"] == 0
    assert not result["token_in_server_log"], "the token reached our server's log"
