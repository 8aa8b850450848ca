"""Roles: with a performer token, a peer without it only watches, on every path (data channel,
WebSocket, HTTP, WHEP, OSC from addresses not allowed); with a viewer token, watching needs a
token too; --max-viewers refuses the next viewer with a sentence. Tokens never reach a log.
The app runs in-process on 127.0.0.1 (fake pipeline, real engine thread, HTTP and WebRTC)."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from server.app import SESSIONS, create_app
from server.engine import Engine
from server.control.osc import OscOptions, OscServer, build
from server.door.roles import PERFORMER, VIEWER, Access, presented_token
from test_engine import FakePipeline
from test_webrtc import Viewer
from test_whep import WhepPlayer

PERFORMER_TOKEN = "stage-door-7d1f"
VIEWER_TOKEN = "ticket-0c55e2"
DEADLINE_S = 60.0       # a deadline on any one wait, never a timing assertion


def test_who_gets_which_role():
    open_door = Access()
    assert open_door.role(None) == PERFORMER and not open_door.locked
    locked = Access(token=PERFORMER_TOKEN)
    assert locked.role(PERFORMER_TOKEN) == PERFORMER
    assert locked.role(None) == VIEWER and locked.role("guess") == VIEWER
    ticketed = Access(token=PERFORMER_TOKEN, viewer_token=VIEWER_TOKEN)
    assert ticketed.role(VIEWER_TOKEN) == VIEWER and ticketed.role(PERFORMER_TOKEN) == PERFORMER
    assert ticketed.role(None) is None and ticketed.role("guess") is None
    assert PERFORMER_TOKEN not in repr(ticketed) and VIEWER_TOKEN not in repr(ticketed)
    assert presented_token({"Authorization": "Bearer abc"}, {}) == "abc"
    assert presented_token({"Authorization": "Basic abc"}, {"token": "q"}) == "q"
    assert presented_token({}, {}) is None


async def serving(access: Access):
    engine = Engine(FakePipeline(size=(32, 16)), prompt="start", seed=3)
    app = create_app(engine, access=access)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return app, engine, server, str(server.make_url("")).rstrip("/")


async def next_of(ws, kind: str) -> dict:
    async def read():
        while True:
            msg = await ws.receive_json()
            if msg["type"] == kind:
                return msg
    return await asyncio.wait_for(read(), DEADLINE_S)


@pytest.mark.integration
def test_without_the_performer_token_every_path_only_watches(caplog):
    caplog.set_level(logging.DEBUG)

    async def main():
        app, engine, server, url = await serving(Access(token=PERFORMER_TOKEN, max_viewers=2))
        performer = {"Authorization": f"Bearer {PERFORMER_TOKEN}"}
        try:
            async with aiohttp.ClientSession() as http:
                # HTTP: a viewer reads the state, and its commands are refused (403) without any effect
                r = await http.get(url + "/api/state")
                assert r.status == 200 and (await r.json())["prompt"] == "start"
                for path, body in (("/api/command", {"type": "prompt", "text": "stranger"}),
                                   ("/api/prompt", {"text": "stranger"}),
                                   ("/api/command", {"type": "seed", "seed": 9}),
                                   ("/api/command", {"type": "enhance", "text": "stranger"})):
                    r = await http.post(url + path, json=body)
                    reply = await r.json()
                    assert r.status == 403 and "needs the performer token" in reply["message"], reply
                r = await http.post(url + "/api/command", json={"type": "status"})
                assert r.status == 200
                # WebSocket: the same, and ?token= makes it the performer's
                ws = await http.ws_connect(url + "/api/control?format=json")
                await next_of(ws, "hello")
                await ws.send_json({"type": "prompt", "text": "stranger", "id": 1})
                refused = await next_of(ws, "error")
                assert refused["id"] == 1 and "this connection is a viewer" in refused["message"]
                stage = await http.ws_connect(url + f"/api/control?format=json&token={PERFORMER_TOKEN}")
                await next_of(stage, "hello")
                await stage.send_json({"type": "prompt", "text": "from the stage", "id": 2})
                assert (await next_of(stage, "ack"))["id"] == 2
                applied = await next_of(ws, "prompt_applied")          # the viewer hears what the performer did
                assert applied["text"] == "from the stage"
                # a page's data channel: a viewer without the token, the performer with it
            async with aiohttp.ClientSession() as http, aiohttp.ClientSession(headers=performer) as stage_http:
                watcher = await Viewer(url, http).open()
                mark = watcher.send({"type": "prompt", "text": "stranger", "id": 3})
                msg = await watcher.wait_for(lambda m: m.get("id") == 3, start=mark)
                assert msg["type"] == "error" and "needs the performer token" in msg["message"]
                performer_page = await Viewer(url, stage_http).open()
                mark = performer_page.send({"type": "seed", "seed": 5, "id": 4})
                msg = await performer_page.wait_for(lambda m: m.get("id") == 4, start=mark)
                assert msg["type"] == "ack"
                # two viewers: the third is refused with a sentence, as a page and as a WHEP player
                r = await http.post(url + "/api/offer", json={"sdp": watcher.offer_sdp, "type": "offer"})
                assert r.status == 503 and "already has its 2 viewers" in (await r.json())["error"]
                r = await http.post(url + "/whep", data=watcher.offer_sdp, headers={"Content-Type": "application/sdp"})
                assert r.status == 400 or r.status == 503
                assert "already has its 2 viewers" in await r.text()
                await watcher.close()
                await performer_page.close()
            assert engine.state().prompt == "from the stage" and engine.state().seed == 5
        finally:
            await app[SESSIONS].close_all()
            await server.close()
    asyncio.run(main())
    assert PERFORMER_TOKEN not in caplog.text


@pytest.mark.integration
def test_with_a_viewer_token_watching_needs_a_token(caplog):
    caplog.set_level(logging.DEBUG)

    async def main():
        app, engine, server, url = await serving(Access(token=PERFORMER_TOKEN, viewer_token=VIEWER_TOKEN))
        try:
            async with aiohttp.ClientSession() as http:
                for method, path in (("GET", "/api/state"), ("POST", "/api/offer"), ("GET", "/api/recordings")):
                    r = await http.request(method, url + path, json={"sdp": "v=0", "type": "offer"})
                    assert r.status == 401 and "asks viewers for a token" in (await r.json())["message"]
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
                r = await http.get(url + "/api/control")
                assert r.status == 401
                r = await http.post(url + "/whep", data="v=0\r\nm=video", headers={"Content-Type": "application/sdp"})
                assert r.status == 401 and "asks viewers for a token" in await r.text()
                r = await http.get(url + f"/api/state?token={VIEWER_TOKEN}")
                assert r.status == 200
                player = await WhepPlayer(http, url + "/whep").play({"Authorization": f"Bearer {VIEWER_TOKEN}"})
                deadline = time.monotonic() + DEADLINE_S
                while player.frames < 8:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                r = await http.post(url + "/api/command", json={"type": "pause"},
                                    headers={"Authorization": f"Bearer {VIEWER_TOKEN}"})
                assert r.status == 403                     # a ticket to watch, not to steer
                await player.close()
        finally:
            await app[SESSIONS].close_all()
            await server.close()
    asyncio.run(main())
    assert PERFORMER_TOKEN not in caplog.text and VIEWER_TOKEN not in caplog.text


def test_osc_is_taken_only_from_allowed_addresses():
    dispatched = []

    class Hub:
        def dispatch(self, command, reply, role=PERFORMER):
            dispatched.append(command.TYPE)

    osc = OscServer(Hub(), OscOptions(port=None, allow=frozenset({"127.0.0.1", "::1"})))
    sent = []
    osc.send = lambda address, *args: sent.append((address, args))
    osc.handle(build("/longlive/pause"), "192.168.1.50")
    assert dispatched == [] and sent[0][0] == "/longlive/error" and "192.168.1.50 is not taken" in sent[0][1][0]
    osc.handle(build("/longlive/pause"), "::ffff:127.0.0.1")
    osc.handle(build("/longlive/pause"), "127.0.0.1")
    assert dispatched == ["pause", "pause"] and osc.refused == 1
