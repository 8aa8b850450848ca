"""The control protocol: the schema, the HTTP endpoints and the WebSocket control channel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path
from typing import Any, AsyncIterator

import msgpack
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from server.app import create_app
from server.control.hub import ControlHub, ServerInfo
from server.engine import HISTORY_CHARS, CommandRefused, Engine
from server.protocol import (COMMANDS, EVENTS, MAX_MESSAGE_BYTES, MAX_PROMPT_CHARS, SEED_MAX, Ack, Command,
                             ErrorEvent, Hello, PauseCommand, PromptApplied, PromptCommand, ProtocolError,
                             ResumeCommand, SeedCommand, StatusCommand, decode, encode, read_command)
from server.protocol import StateEvent
from test_engine import FakePipeline

REPO = Path(__file__).resolve().parent.parent


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# -- the schema ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("wire", ["msgpack", "json"])
@pytest.mark.parametrize("message, expected", [
    ({"type": "prompt", "text": "  a red fox  ", "id": "a1"}, PromptCommand(text="a red fox", id="a1")),
    ({"type": "prompt", "text": "x" * MAX_PROMPT_CHARS}, PromptCommand(text="x" * MAX_PROMPT_CHARS)),
    ({"type": "seed", "seed": 12345, "id": 9}, SeedCommand(seed=12345, id=9)),
    ({"type": "seed", "seed": SEED_MAX}, SeedCommand(seed=SEED_MAX)),
    ({"type": "pause"}, PauseCommand()),
    ({"type": "resume", "id": None}, ResumeCommand()),
    ({"type": "status", "id": "s"}, StatusCommand(id="s")),
])
def test_valid_messages_become_typed_commands(wire, message, expected):
    data = pack(message) if wire == "msgpack" else json.dumps(message)
    command = read_command(data)
    assert command == expected
    assert type(command) is type(expected) and command.TYPE == message["type"]


@pytest.mark.parametrize("message, fragment", [
    ({"type": "dance"}, "unknown message type 'dance'"),
    ({"text": "no type"}, "\"type\""),
    ({"type": 5}, "\"type\""),
    ({"type": "prompt"}, "needs exactly one of 'text'"),
    ({"type": "prompt", "text": 42}, "prompt.text must be a string, not an integer"),
    ({"type": "prompt", "text": None}, "prompt.text must be a string, not null"),
    ({"type": "prompt", "text": "   "}, "must not be empty"),
    ({"type": "prompt", "text": "x" * (MAX_PROMPT_CHARS + 1)}, f"the limit is {MAX_PROMPT_CHARS}"),
    ({"type": "prompt", "text": "a", "colour": "red"}, "has no field 'colour'"),
    ({"type": "seed", "seed": "7"}, "seed.seed must be an integer, not a string"),
    ({"type": "seed", "seed": True}, "must be an integer, not a boolean"),
    ({"type": "seed", "seed": 1.5}, "must be an integer, not a number"),
    ({"type": "seed", "seed": -1}, "between 0 and"),
    ({"type": "seed", "seed": SEED_MAX + 1}, "between 0 and"),
    ({"type": "pause", "id": [1]}, "id must be a string, an integer or null"),
    ({"type": "pause", "id": "x" * 200}, "longer than"),
    ({"type": "prompt", "text": "a", "prompts": [{"text": "b"}]}, "exactly one of 'text'"),
    ({"type": "prompt", "prompts": []}, "needs 1 to 8 prompts"),
    ({"type": "prompt", "prompts": "a"}, "prompt.prompts must be a list"),
    ({"type": "prompt", "prompts": [{"text": "a", "weight": -1}]}, "prompt.prompts[0].weight must be between 0"),
    ({"type": "prompt", "prompts": [{"text": "a", "weight": "2"}]}, "weight must be a number, not a string"),
    ({"type": "prompt", "prompts": [{"text": "a", "weight": 0}, {"text": "b", "weight": 0}]}, "add up to 0"),
    ({"type": "prompt", "prompts": [{"text": "a", "colour": 1}]}, "prompt.prompts[0] has no field 'colour'"),
    ({"type": "prompt", "prompts": [{"weight": 1}]}, "prompt.prompts[0] needs the field 'text'"),
    ({"type": "prompt", "prompts": [{"text": "a"}], "enhance": True}, "enhance: true needs 'text'"),
    ({"type": "prompt", "text": "a", "transition": 4}, "prompt.transition must be a map"),
    ({"type": "prompt", "text": "a", "transition": {"blocks": 65}}, "prompt.transition.blocks must be between 0 and 64"),
    ({"type": "prompt", "text": "a", "transition": {"blocks": 4, "method": "cubic"}}, "must be one of linear, slerp"),
    ({"type": "prompt", "text": "a", "transition": {"method": "slerp"}}, "needs the field 'blocks'"),
    ({"type": "fire", "cue": 0}, "fire.cue must be between 1 and 99"),
    ({"type": "fire", "cue": 1, "quantize": "bars"}, "fire.quantize must be one of none, beat, bar"),
    ({"type": "fire"}, "needs the field 'cue'"),
    ({"type": "arm", "cue": "1"}, "arm.cue must be an integer, not a string"),
    ({"type": "cue", "cue": 1}, "exactly one of 'text'"),
    ({"type": "cue", "cue": 1, "text": "a", "name": "x" * 81}, "cue.name is 81 characters long"),
    ({"type": "tempo", "bpm": 500}, "tempo.bpm must be between 20 and 300"),
    ({"type": "tempo", "bpm": "fast"}, "tempo.bpm must be a number, not a string"),
    ({"type": "tempo", "bpm": 120, "beats_per_bar": 0}, "between 1 and 16"),
    ({"type": "transition", "blocks": -1}, "transition.blocks must be between 0 and 64"),
])
@pytest.mark.parametrize("wire", ["msgpack", "json"])
def test_invalid_messages_raise_one_sentence(message, fragment, wire):
    data = pack(message) if wire == "msgpack" else json.dumps(message)
    with pytest.raises(ProtocolError) as err:
        read_command(data)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_errors_carry_the_request_id_when_it_is_usable():
    with pytest.raises(ProtocolError) as err:
        read_command(pack({"type": "seed", "seed": "x", "id": "r7"}))
    assert err.value.id == "r7"
    with pytest.raises(ProtocolError) as err:
        read_command(pack({"type": "nope", "id": 3}))
    assert err.value.id == 3
    with pytest.raises(ProtocolError) as err:
        read_command(pack({"type": "nope", "id": {"a": 1}}))
    assert err.value.id is None


@pytest.mark.parametrize("data, fragment", [
    (b"\xc1", "not valid msgpack"),
    (b"\x91" * 5000, "not valid msgpack"),                    # nested too deep
    (pack({"type": "pause"}) + b"\x00", "not valid msgpack"),  # trailing bytes
    (b"\xa2\xff\xfe", "not valid msgpack"),                    # a string that is not UTF-8
    (pack([1, 2]), "must be a map"),
    (pack("pause"), "must be a map"),
    ("{not json", "not valid JSON"),
    ("[" * 50000, "not valid JSON"),
    ("42", "must be a map"),
    (b"\x00" * (MAX_MESSAGE_BYTES + 1), "larger than"),
    (json.dumps({"type": "prompt", "text": "y" * MAX_MESSAGE_BYTES}), "larger than"),
])
def test_undecodable_and_oversized_messages(data, fragment):
    with pytest.raises(ProtocolError) as err:
        read_command(data)
    assert fragment in str(err.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_give_a_command_or_a_protocol_error(data):
    try:
        assert isinstance(read_command(data), Command)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=256))
def test_any_text_gives_a_command_or_a_protocol_error(data):
    try:
        assert isinstance(read_command(data), Command)
    except ProtocolError:
        pass


scalars = st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20)
values = st.recursive(scalars | st.binary(max_size=8),
                      lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                      max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(COMMANDS) + ["bogus"]),
       st.dictionaries(st.sampled_from(["text", "seed", "id", "extra"]), values, max_size=3))
def test_any_map_gives_a_valid_command_or_a_protocol_error(kind, fields):
    message = {"type": kind, **fields}
    try:
        command = read_command(pack(message))
    except ProtocolError as e:
        assert str(e) and "\n" not in str(e)        # one sentence for the client
    else:                                         # whatever passed is exactly what the table allows
        assert command.TYPE == kind
        if isinstance(command, PromptCommand):
            assert isinstance(command.text, str) and 0 < len(command.text) <= MAX_PROMPT_CHARS
        if isinstance(command, SeedCommand):
            assert type(command.seed) is int and 0 <= command.seed <= SEED_MAX
        assert command.id is None or type(command.id) in (str, int)


@pytest.mark.parametrize("binary", [True, False])
def test_events_encode_to_maps_with_their_type(binary):
    events = [Hello(state={"prompt": "p"}), Ack(id="a", command="prompt"),
              PromptApplied(id=1, text="t", block=3, frame=33, latency_ms=12.5, plays_in_ms=700.0, time=1.0),
              ErrorEvent(id=None, message="bad")]
    for event in events:
        data = encode(event, binary)
        assert isinstance(data, bytes if binary else str)
        back = decode(data)
        assert back == event.to_wire() and back["type"] == event.TYPE
    assert decode(encode(Hello(state={}), binary))["protocol"] == 1


def test_every_message_type_is_documented():
    doc = (REPO / "docs" / "PROTOCOL.md").read_text()
    for kind in list(COMMANDS) + list(EVENTS):
        assert re.search(rf"`{kind}`", doc), f"docs/PROTOCOL.md does not describe {kind!r}"
    for cls in COMMANDS.values():
        assert cls.DOC, f"{cls.__name__} has no DOC"


# -- the running app (fake pipeline, real engine thread, real HTTP) ----------------------------------------
@contextlib.asynccontextmanager
async def running_app(pipe: FakePipeline | None = None, **engine_kw: Any) -> AsyncIterator[TestClient]:
    engine = Engine(pipe or FakePipeline(), prompt="start", seed=1, **engine_kw)
    app = create_app(engine)
    async with TestClient(TestServer(app)) as client:
        yield client
    assert not engine.running


async def next_message(ws, types: tuple[str, ...] | None = None, timeout: float = 5.0) -> dict:
    """The next message (of one of `types`), decoded whichever way it came."""
    async def read() -> dict:
        while True:
            msg = await ws.receive()
            if msg.type == WSMsgType.BINARY:
                obj = msgpack.unpackb(msg.data, raw=False)
            elif msg.type == WSMsgType.TEXT:
                obj = json.loads(msg.data)
                obj["_text"] = True
            else:
                raise AssertionError(f"socket ended: {msg}")
            if types is None or obj["type"] in types:
                return obj
    return await asyncio.wait_for(read(), timeout)


@pytest.mark.integration
def test_http_state_and_prompt():
    async def main():
        async with running_app() as client:
            r = await client.get("/api/state")
            assert r.status == 200
            state = await r.json()
            assert state["protocol"] == 1 and state["prompt"] == "start" and state["seed"] == 1
            assert (state["width"], state["height"], state["fps"]) == (16, 8, 16)
            assert state["embedded_default"] is True and state["viewers"] == 0

            r = await client.post("/api/prompt", json={"text": "from a script", "id": "s1"})
            assert r.status == 202
            assert await r.json() == {"type": "ack", "id": "s1", "command": "prompt"}
            for _ in range(100):
                state = await (await client.get("/api/state")).json()
                if state["prompts"]:
                    break
                await asyncio.sleep(0.05)
            assert state["prompt"] == "from a script"
            assert state["prompts"][-1]["text"] == "from a script" and state["prompts"][-1]["id"] == "s1"

            for body, fragment in [
                ("{oops", "not valid JSON"),
                ("[1, 2]", "JSON object"),
                ("{}", "needs exactly one of 'text'"),
                ('{"text": 5}', "must be a string"),
                ('{"text": ""}', "must not be empty"),
                ('{"text": "a", "type": "seed"}', "prompts only"),
            ]:
                r = await client.post("/api/prompt", data=body, headers={"Content-Type": "application/json"})
                assert r.status == 400, body
                assert fragment in (await r.json())["error"]

            health = await (await client.get("/api/health")).json()
            assert health["engine_running"] and "longlive-engine" in health["threads"]
            assert health["bus_frames"] <= 4 * 3 * 3 and health["sessions"] == 0

    asyncio.run(main())


@pytest.mark.integration
def test_http_offer_and_session_errors():
    async def main():
        async with running_app() as client:
            for body, fragment in [
                ("nope", "not valid JSON"),
                ('{"type": "offer"}', "needs \"sdp\""),
                ('{"sdp": "v=0", "type": "offer"}', "no media sections"),
                ('{"sdp": "v=0\\r\\nm=garbage", "type": "offer"}', "cannot answer"),
                ('{"sdp": "v=0", "type": "answer"}', "expected an SDP offer"),
            ]:
                r = await client.post("/api/offer", data=body, headers={"Content-Type": "application/json"})
                assert r.status == 400, body
                assert fragment in (await r.json())["error"], body
            r = await client.delete("/api/sessions/nobody")
            assert r.status == 404 and "no session" in (await r.json())["error"]
            health = await (await client.get("/api/health")).json()
            assert health["sessions"] == 0 and health["peer_connections"] == 0

    asyncio.run(main())


@pytest.mark.integration
def test_static_client_files():
    async def main():
        async with running_app() as client:
            r = await client.get("/")
            assert r.status == 200 and "<video" in await r.text()
            r = await client.get("/app.js")
            assert r.status == 200 and "javascript" in r.headers["Content-Type"]
            if (REPO / "client" / "vendor" / "msgpack" / "index.mjs").exists():
                r = await client.get("/vendor/msgpack/index.mjs")
                assert r.status == 200 and "javascript" in r.headers["Content-Type"]
            for path in ("/package.json", "/node_modules/@msgpack/msgpack/package.json", "/__init__.py",
                         "/..%2Fserver%2Fcli.py", "/nothing.js"):
                r = await client.get(path)
                assert r.status == 404, path

    asyncio.run(main())


@pytest.mark.integration
def test_websocket_control_session():
    async def main():
        async with running_app() as client:
            ws = await client.ws_connect("/api/control")
            hello = await next_message(ws)
            assert hello["type"] == "hello" and hello["protocol"] == 1 and "_text" not in hello
            assert hello["state"]["prompt"] == "start" and hello["state"]["controllers"] == 1
            for _ in range(200):                 # the first block is out (else the prompt may take block 0)
                if (await (await client.get("/api/state")).json())["block"] >= 0:
                    break
                await asyncio.sleep(0.01)

            await ws.send_bytes(pack({"type": "prompt", "text": "over the socket", "id": 11}))
            assert await next_message(ws, ("ack", "error")) == {"type": "ack", "id": 11, "command": "prompt"}
            applied = await next_message(ws, ("prompt_applied",))
            assert applied["id"] == 11 and applied["text"] == "over the socket"
            assert applied["latency_ms"] >= 0 and applied["frame"] >= 9

            # garbage and wrong types: an error each, nothing changes, the socket stays open
            bad = [b"\xc1\xc1", pack({"type": "prompt", "text": 3, "id": "t"}), pack({"type": "warp"}),
                   pack([1]), b"\x00" * (MAX_MESSAGE_BYTES + 10)]
            for data in bad:
                await ws.send_bytes(data)
                err = await next_message(ws, ("error", "ack"))
                assert err["type"] == "error" and err["message"]
            assert err["id"] is None
            await ws.send_bytes(pack({"type": "prompt", "text": 3, "id": "t"}))
            assert (await next_message(ws, ("error",)))["id"] == "t"
            state = (await (await client.get("/api/state")).json())
            assert state["prompt"] == "over the socket"

            # JSON text in, JSON text back
            await ws.send_str('{"type": "status", "id": "j"}')
            reply = await next_message(ws, ("state",))
            assert reply["_text"] and reply["id"] == "j" and reply["state"]["prompt"] == "over the socket"
            await ws.send_str("{broken")
            assert (await next_message(ws, ("error",)))["_text"]

            # pause / resume / seed, acknowledged and announced
            await ws.send_bytes(pack({"type": "pause", "id": "p"}))
            assert (await next_message(ws, ("ack",)))["id"] == "p"
            assert (await next_message(ws, ("state",)))["state"]["paused"] is True
            await ws.send_bytes(pack({"type": "resume"}))
            assert (await next_message(ws, ("state",)))["state"]["paused"] is False
            await ws.send_bytes(pack({"type": "seed", "seed": 99}))
            assert (await next_message(ws, ("state",)))["state"]["seed"] == 99

            # stats about once a second
            stats = await next_message(ws, ("stats",), timeout=30)
            assert {"fps", "block_ms", "viewers", "gen_fps", "paused"} <= set(stats)
            assert stats["viewers"] == 0 and stats["controllers"] == 1
            assert not ws.closed
            await ws.close()
            deadline = asyncio.get_running_loop().time() + 30
            while (await (await client.get("/api/health")).json())["controllers"] != 0:
                assert asyncio.get_running_loop().time() < deadline, "the closed socket's client stayed"
                await asyncio.sleep(0.05)

    asyncio.run(main())


@pytest.mark.integration
def test_websocket_json_format_from_the_start():
    async def main():
        async with running_app() as client:
            ws = await client.ws_connect("/api/control?format=json")
            hello = await next_message(ws)
            assert hello["_text"] and hello["type"] == "hello"
            await ws.close()

    asyncio.run(main())


@pytest.mark.integration
def test_two_control_clients_both_hear_a_prompt_applied():
    async def main():
        async with running_app() as client:
            a = await client.ws_connect("/api/control")
            b = await client.ws_connect("/api/control")
            await next_message(a)
            await next_message(b)
            await a.send_bytes(pack({"type": "prompt", "text": "shared", "id": "x"}))
            for ws in (a, b):
                msg = await next_message(ws, ("prompt_applied",))
                assert msg["text"] == "shared" and msg["id"] == "x"
            await a.close()
            await b.close()

    asyncio.run(main())


@pytest.mark.integration
def test_shutdown_closes_open_websockets():
    async def main():
        engine = Engine(FakePipeline(), prompt="s")
        app = create_app(engine)
        server = TestServer(app)
        client = TestClient(server)
        await client.start_server()
        ws = await client.ws_connect("/api/control")
        await next_message(ws)
        await asyncio.wait_for(client.close(), 10)
        assert ws.closed or (await ws.receive()).type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
        assert not engine.running

    asyncio.run(main())


@pytest.mark.integration
def test_a_websocket_frame_over_the_limit_closes_that_socket_and_no_other():
    """Up to WS_MAX_FRAME an oversized message gets an error; beyond it aiohttp closes the socket
    (as documented), and the server's other clients never notice."""
    from server.app import WS_MAX_FRAME

    async def main():
        async with running_app() as client:
            big, other = await client.ws_connect("/api/control"), await client.ws_connect("/api/control")
            for ws in (big, other):
                await next_message(ws, ("hello",))
            await big.send_bytes(b"\x00" * (WS_MAX_FRAME + 1))
            async def closed() -> None:
                while (await big.receive()).type not in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING,
                                                         WSMsgType.ERROR):
                    pass                              # (stats and state may come first)
            await asyncio.wait_for(closed(), 10)
            await other.send_bytes(pack({"type": "status", "id": 7}))
            assert (await next_message(other, ("state",)))["id"] == 7
            await other.close()

    asyncio.run(main())


@pytest.mark.integration
def test_app_has_the_documented_routes():
    app = create_app(Engine(FakePipeline()))
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if isinstance(r.resource, web.Resource)}
    for route in [("POST", "/api/offer"), ("DELETE", "/api/sessions/{session}"), ("GET", "/api/control"),
                  ("GET", "/api/state"), ("POST", "/api/prompt"), ("GET", "/api/health")]:
        assert route in routes


# -- the engine's refusals and the size of the state ------------------------------------------------------
def hub_for(engine: Engine) -> ControlHub:
    return ControlHub(engine, ServerInfo(config="fake", width=16, height=8, fps=16.0, embedded_default=True))


def test_a_command_the_engine_refuses_is_an_error_with_its_id_never_an_ack():
    """A full command queue, then a stopped engine: each refused command gets an `error` with
    its id and no `ack`; the commands taken get their `ack`."""
    engine = Engine(FakePipeline(), prompt="start", queue_size=2)
    hub = hub_for(engine)
    replies: list = []
    for command in (SeedCommand(seed=1, id="a"), PromptCommand(text="b", id="b"), SeedCommand(seed=2, id="c")):
        hub.dispatch(command, replies.append)
    assert [(type(r).__name__, r.id) for r in replies] == [("Ack", "a"), ("Ack", "b"), ("ErrorEvent", "c")]
    assert "2 commands waiting" in replies[-1].message
    engine.stop()
    replies.clear()
    hub.dispatch(PauseCommand(id="d"), replies.append)
    hub.dispatch(StatusCommand(id="e"), replies.append)      # status is the hub's: always answered
    assert [(type(r).__name__, r.id) for r in replies] == [("ErrorEvent", "d"), ("StateEvent", "e")]
    assert "stopped" in replies[0].message and replies[1].state["engine"] == "stopped"
    with pytest.raises(CommandRefused):
        engine.submit(PauseCommand())


@pytest.mark.integration
def test_a_stopped_engine_refuses_over_the_socket_and_says_why_in_the_state():
    def always_fails(attempt: int) -> BaseException:
        return RuntimeError("the GPU fell off the bus\ntraceback ...")

    async def main():
        async with running_app(FakePipeline(fps=1000, fail=always_fails), max_failures=2,
                               sleep=lambda s: None) as client:
            for _ in range(200):
                state = await (await client.get("/api/state")).json()
                if state["engine"] == "stopped":
                    break
                await asyncio.sleep(0.02)
            assert state["engine"] == "stopped" and state["restarts"] == 1
            assert state["failed"] == "RuntimeError: the GPU fell off the bus"
            ws = await client.ws_connect("/api/control")
            assert (await next_message(ws))["state"]["engine"] == "stopped"
            await ws.send_bytes(pack({"type": "prompt", "text": "anyone?", "id": 5}))
            reply = await next_message(ws, ("ack", "error"))
            assert reply["type"] == "error" and reply["id"] == 5 and "the generator has stopped" in reply["message"]
            await ws.close()
            r = await client.post("/api/prompt", json={"text": "anyone?", "id": 6})
            assert r.status == 503 and r.headers["Retry-After"] == "1"
            body = await r.json()
            assert body["type"] == "error" and body["id"] == 6 and "the generator has stopped" in body["message"]

    asyncio.run(main())


def test_a_burst_of_state_changes_reaches_every_client_as_one_state_per_gap():
    """Forty taps at once (a drummer, a MIDI controller) are forty acks but not forty full states
    for every client: the first goes out at once, the rest together when the gap has passed, and
    that one says what the last command did. (Fuzzing found a burst of stage commands from nine
    clients slowing generation to half its rate.)"""
    from server.control.hub import STATE_GAP_S
    from server.protocol import TapCommand, TempoCommand

    class Client:
        def __init__(self):
            self.events, self.closed, self.role, self.session = [], False, "performer", None

        def send(self, event):
            self.events.append(event)

        def close(self):
            self.closed = True

    async def main():
        now = [10.0]
        hub = ControlHub(Engine(FakePipeline(), prompt="start"),
                         ServerInfo(config="fake", width=16, height=8, fps=16.0, embedded_default=True),
                         clock=lambda: now[0])
        client = Client()
        hub.attach(client)
        acks: list = []
        for i in range(40):
            hub.dispatch(TapCommand(id=i) if i < 39 else TempoCommand(bpm=97.0, id=i), acks.append)
        states = [e for e in client.events if isinstance(e, StateEvent)]
        assert len([a for a in acks if isinstance(a, Ack)]) == 40
        assert len(states) == 1, len(states)                  # the first, at once; the others wait
        now[0] += STATE_GAP_S
        await asyncio.sleep(STATE_GAP_S * 3)                  # the timer that sends what waited
        states = [e for e in client.events if isinstance(e, StateEvent)]
        assert len(states) == 2 and hub.state_broadcasts == 2
        assert states[-1].state["tempo"]["bpm"] == 97.0
        await hub.stop()

    asyncio.run(main())


def test_state_messages_stay_small_whatever_the_prompts():
    from test_framebus import FakeClock

    pipe, clock = FakePipeline(), FakeClock()
    engine = Engine(pipe, prompt="start", clock=clock)
    engine.begin()
    try:
        for i in range(60):
            engine.submit(PromptCommand(text=f"{i:02d}" + "y" * (MAX_PROMPT_CHARS - 2), id="i" * 128))
            assert engine.encoder.wait_idle(10)
            clock.advance(1)
            while engine.step() == 0:
                pass
        state = hub_for(engine).state()
        assert len(state["prompts"]) == HISTORY_CHARS // MAX_PROMPT_CHARS
        assert len(encode(StateEvent(state=state), binary=False).encode()) < 32 * 1024
    finally:
        engine.stop()
