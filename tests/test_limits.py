"""Limits (server/door/limits.py): control messages per connection, per client address and per OSC
sender; offers per minute per address; a prompt's length on every path. Over a limit is one
sentence and nothing else: the message is dropped, the connection stays, and a peer that
behaves never notices. Every bucket runs on an injected clock (no wall-clock assertion).

The app runs in-process on 127.0.0.1 (fake pipeline, real engine thread, HTTP and WebSocket).
"""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace

import aiohttp
import pytest

from server.app import HUB, OSC, create_app
from server.control.hub import ControlHub, ServerInfo
from server.engine import Engine
from server.door.limits import Limits, RateLimit
from server.control.osc import OscOptions, OscServer, build
from server.protocol import EnhanceCommand
from server.door.roles import PERFORMER
from studio.enhancer import Enhanced
from test_door import applied, next_of, serving
from test_engine import FakePipeline

LONG = "x" * 2001
TOO_LONG = "2001 characters long; the limit is 2000"


class Clock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_bucket_spends_its_burst_and_refills_on_its_clock():
    clock = Clock()
    limit = RateLimit(2, 4, clock)
    assert [limit.allow("a") for _ in range(5)] == [True, True, True, True, False]
    assert limit.allow("b")                       # every key has its own bucket
    assert limit.retry_after("a") == 1 and limit.refused == 1
    clock.now += 0.5                              # one token back
    assert limit.allow("a") and not limit.allow("a")
    clock.now += 100                              # never more than the burst
    assert sum(limit.allow("a") for _ in range(10)) == 4
    assert limit.refusal() == ("too many control messages: at most 2 a second (bursts of 4) per connection; "
                               "this one was dropped")

    class Peer:
        pass
    weak = RateLimit(1, 1, clock, weak=True)
    peer = Peer()
    assert weak.allow(peer) and not weak.allow(peer)
    del peer
    gc.collect()
    assert len(weak._buckets) == 0                # a closed connection's bucket goes with it

    few = RateLimit(1, 2, clock, max_keys=3)
    for key in ("k1", "k2", "k3", "k4", "k5"):
        few.allow(key)
    assert len(few._buckets) <= 3                 # addresses remembered stay bounded

    per_minute = Limits(offers_per_minute=3, clock=clock).offers()
    assert [per_minute.allow("1.2.3.4") for _ in range(4)] == [True, True, True, False]
    assert per_minute.retry_after("1.2.3.4") == 20
    assert Limits(control_per_second=0).per_connection() is None and Limits(offers_per_minute=0).offers() is None
    with pytest.raises(ValueError):
        RateLimit(0, 1)


@pytest.mark.integration
def test_a_flood_on_the_websocket_gets_errors_and_the_connection_is_kept(tmp_path):
    clock = Clock()

    async def main():
        async with serving(tmp_path, limits=Limits(control_per_second=5, clock=clock)) as (app, engine, url), \
                aiohttp.ClientSession() as http:
            ws = await http.ws_connect(url + "/api/control?format=json")
            await next_of(ws, "hello")
            for i in range(12):                     # a burst of 10 is taken, the rest is over the limit
                await ws.send_json({"type": "status", "id": i})
            replies = {}
            while len(replies) < 12:
                msg = await asyncio.wait_for(ws.receive_json(), 20)
                if msg.get("id") is not None:
                    replies[msg["id"]] = msg
            assert [replies[i]["type"] for i in range(12)] == ["state"] * 10 + ["error"] * 2
            assert replies[11]["message"] == ("too many control messages: at most 5 a second (bursts of 10) per "
                                              "connection; this one was dropped")
            # a garbage message over the limit is dropped the same way
            await ws.send_str("{not json")
            assert (await next_of(ws, "error"))["message"].startswith("too many control messages")
            # another connection has its own bucket
            other = await http.ws_connect(url + "/api/control?format=json")
            await next_of(other, "hello")
            await other.send_json({"type": "status", "id": "o"})
            assert (await next_of(other, "state"))["id"] == "o"
            # the prompt sent over the limit changed nothing; a second later the same connection steers
            await ws.send_json({"type": "prompt", "text": "over the limit", "id": "p0"})
            assert (await next_of(ws, "error"))["id"] == "p0"
            clock.now += 1.0
            await ws.send_json({"type": "prompt", "text": "in time", "id": "p1"})
            assert (await next_of(ws, "ack"))["id"] == "p1"
            assert "over the limit" not in await applied(engine, "in time")
            assert not ws.closed and app[HUB].count == 2
            await ws.close()
            await other.close()
    asyncio.run(main())


@pytest.mark.integration
def test_http_commands_over_the_rate_get_429_and_change_nothing(tmp_path):
    clock = Clock()

    async def main():
        async with serving(tmp_path, limits=Limits(control_per_second=1, clock=clock)) as (app, engine, url), \
                aiohttp.ClientSession() as http:
            for text in ("one", "two"):
                r = await http.post(url + "/api/prompt", json={"text": text})
                assert r.status == 202
            r = await http.post(url + "/api/command", json={"type": "prompt", "text": "three"})
            assert r.status == 429 and r.headers["Retry-After"] == "1"
            assert (await r.json())["error"] == ("too many control messages from 127.0.0.1: at most 1 a second "
                                                 "(bursts of 2) per address; try again in 1 s")
            r = await http.get(url + "/api/state")        # reading is not limited
            assert r.status == 200
            clock.now += 1.0
            r = await http.post(url + "/api/prompt", json={"text": "four"})
            assert r.status == 202
            assert "three" not in await applied(engine, "four")
    asyncio.run(main())


@pytest.mark.integration
def test_offers_over_the_rate_get_429_with_retry_after(tmp_path):
    clock = Clock()

    async def main():
        async with serving(tmp_path, limits=Limits(offers_per_minute=3, clock=clock)) as (app, engine, url), \
                aiohttp.ClientSession() as http:
            bad = {"sdp": "v=0", "type": "offer"}
            for _ in range(2):
                r = await http.post(url + "/api/offer", json=bad)
                assert r.status == 400                 # it is read (and refused for what it says)
            r = await http.post(url + "/whep", data="v=0\r\nm=video", headers={"Content-Type": "application/sdp"})
            assert r.status == 400                     # pages and WHEP players share the address's offers
            r = await http.post(url + "/api/offer", json=bad)
            assert r.status == 429 and r.headers["Retry-After"] == "20"
            assert (await r.json())["error"] == ("too many offers from 127.0.0.1: at most 3 a minute per address; "
                                                 "try again in 20 s")
            r = await http.post(url + "/whep", data="v=0\r\nm=video",
                                headers={"Content-Type": "application/sdp", "Origin": "http://player.example"})
            assert r.status == 429 and "too many offers" in await r.text()
            assert r.headers["Access-Control-Allow-Origin"] == "http://player.example"   # a player can read why
            clock.now += 20
            r = await http.post(url + "/api/offer", json=bad)
            assert r.status == 400
            r = await http.post(url + "/api/prompt", json={"text": "offers do not spend commands"})
            assert r.status == 202
    asyncio.run(main())


@pytest.mark.integration
def test_osc_senders_are_limited_one_by_one():
    clock = Clock()
    dispatched = []

    class Hub:
        def dispatch(self, command, reply, role=PERFORMER):
            dispatched.append(command.TYPE)

    osc = OscServer(Hub(), OscOptions(port=None))
    osc.limit = Limits(control_per_second=2, clock=clock).per_osc_sender()
    sent = []
    osc.send = lambda address, *args: sent.append((address, args))
    for _ in range(5):
        osc.handle(build("/longlive/tap"), "127.0.0.1")
    assert dispatched == ["tap"] * 4 and osc.refused == 1
    assert sent == [("/longlive/error", ("too many control messages: at most 2 a second (bursts of 4) per OSC "
                                         "sender; this one was dropped",))]
    osc.handle(build("/longlive/tap"), "127.0.0.2")          # another sender
    clock.now += 0.5
    osc.handle(build("/longlive/tap"), "127.0.0.1")
    assert dispatched == ["tap"] * 6

    engine = Engine(FakePipeline(size=(32, 16)), prompt="start")
    app = create_app(engine, osc=OscOptions(reply=("127.0.0.1", 9)), limits=Limits(control_per_second=7))
    assert app[OSC].limit is not None and app[OSC].limit.rate == 7       # create_app wires it


@pytest.mark.integration
def test_a_prompt_is_at_most_2000_characters_on_every_path(tmp_path):
    async def main():
        async with serving(tmp_path) as (app, engine, url), aiohttp.ClientSession() as http:
            ws = await http.ws_connect(url + "/api/control?format=json")
            await next_of(ws, "hello")
            for i, msg in enumerate(({"type": "prompt", "text": LONG}, {"type": "enhance", "text": LONG},
                                     {"type": "cue", "cue": 3, "text": LONG},
                                     {"type": "prompt", "prompts": [{"text": LONG, "weight": 1}]},
                                     {"type": "timeline", "timeline": {"prompts": [
                                         {"startTime": 0, "endTime": 5, "prompts": [{"text": LONG, "weight": 100}]}]}})):
                await ws.send_json({**msg, "id": i})
                error = await next_of(ws, "error")
                assert error["id"] == i and TOO_LONG in error["message"], (msg["type"], error)
                r = await http.post(url + "/api/command", json=msg)
                assert r.status == 400 and TOO_LONG in (await r.json())["error"]
            r = await http.post(url + "/api/prompt", json={"text": LONG})
            assert r.status == 400 and TOO_LONG in (await r.json())["error"]
            await ws.close()
            assert engine.state().prompt == "start" and engine.state().timeline is None
    asyncio.run(main())

    sent = []
    osc = OscServer(SimpleNamespace(dispatch=lambda *a, **k: sent.append("dispatched")), OscOptions(port=None))
    osc.send = lambda address, *args: sent.append((address, args))
    osc.handle(build("/longlive/prompt", LONG), "127.0.0.1")
    assert sent and sent[0][0] == "/longlive/error" and TOO_LONG in sent[0][1][0] and "dispatched" not in sent


def test_an_ai_rewrite_longer_than_a_prompt_falls_back_to_the_text_as_written():
    async def rewrite(text):
        return Enhanced(text="y" * 2500, source="ai", input_tokens=5, output_tokens=400)

    enhancer = SimpleNamespace(available=True, notice=None, enhance=rewrite)
    hub = ControlHub(Engine(FakePipeline(size=(32, 16)), prompt="start"),
                     ServerInfo(config="fake", width=32, height=16, fps=16.0, embedded_default=True), enhancer=enhancer)
    event = asyncio.run(hub.enhance(EnhanceCommand(text="a fox")))
    assert event.text == "a fox" and event.source == "raw"
    assert event.error == "the AI's rewrite is 2500 characters long; the limit is 2000, so the text is used as written"
