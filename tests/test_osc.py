"""OSC over UDP, both ways (server/control/osc.py): real UDP on 127.0.0.1 into the real app (fake pipeline, real engine
thread, real hub), replies heard on a real UDP socket; the address table, refusals, the flags, GET /api/osc."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pythonosc import osc_bundle_builder, osc_message, osc_message_builder, udp_client

from longlive import cli
from server.control import osc
from server.app import HUB, OSC, create_app
from server.engine import Engine
from server.control.osc import ADDRESSES, MAX_BUNDLE_MESSAGES, MAX_PACKET_BYTES, OscOptions, OscServer, read_packet, to_command
from server.protocol import ProtocolError, parse_command
from server.performing.tempo import TempoClock
from streaming.errors import UserError
from test_engine import FakePipeline

REPO = Path(__file__).resolve().parent.parent
WAIT_S = 60.0                  # deadline on any one wait (never a timing assertion)
EXPECTED = {                   # the address table as the brief gives it: address -> (example args, protocol map)
    "/longlive/prompt": (["a red kite"], {"type": "prompt", "text": "a red kite"}),
    "/longlive/cue": ([3, "bar"], {"type": "fire", "cue": 3, "quantize": "bar"}),
    "/longlive/arm": ([3], {"type": "arm", "cue": 3}),
    "/longlive/transition": ([6], {"type": "transition", "blocks": 6}),
    "/longlive/seed": ([9], {"type": "seed", "seed": 9}),
    "/longlive/pause": ([], {"type": "pause"}),
    "/longlive/resume": ([], {"type": "resume"}),
    "/longlive/record": ([1], {"type": "record", "on": True}),
    "/longlive/rewind": ([2], {"type": "rewind", "segment": 2}),
    "/longlive/tempo": ([100], {"type": "tempo", "bpm": 100}),     # an int where a float is expected
    "/longlive/tap": ([], {"type": "tap"}),
}


# -- a real UDP listener for the replies --------------------------------------------------------------------
class Listener(asyncio.DatagramProtocol):
    """Every OSC message that reaches 127.0.0.1:port, decoded with python-osc, in order."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[Any]]] = []
        self.changed = asyncio.Event()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        m = osc_message.OscMessage(data)
        self.messages.append((m.address, m.params))
        self.changed.set()

    def mark(self) -> int:
        return len(self.messages)

    async def wait(self, address: str, since: int = 0, match=lambda args: True, timeout: float = WAIT_S) -> list[Any]:
        """The args of the first message to `address` at or after index `since` that `match`es."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        i = since
        while True:
            while i < len(self.messages):
                got, args = self.messages[i]
                i += 1
                if got == address and match(args):
                    return args
            left = deadline - loop.time()
            if left <= 0:
                heard = [m for m in self.messages[since:] if m[0] != "/longlive/state/fps"][-12:]
                raise AssertionError(f"no {address} within {timeout} s; heard {heard}")
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    async def reply_to(self, send, since: int | None = None) -> tuple[str, list[Any]]:
        """Send (a callable) and wait for the ack or the error it gets."""
        since = self.mark() if since is None else since
        send()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        i = since
        while loop.time() < deadline:
            while i < len(self.messages):
                address, args = self.messages[i]
                i += 1
                if address in ("/longlive/ack", "/longlive/error"):
                    return address, args
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - loop.time()))
        raise AssertionError("neither /longlive/ack nor /longlive/error came back")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def osc_app(tmp_path: Path, *, reply: bool = True, tempo: TempoClock | None = None,
                  reply_port: int | None = None) -> AsyncIterator[tuple[TestClient, Engine, OscServer, Listener,
                                                                         udp_client.SimpleUDPClient]]:
    loop = asyncio.get_running_loop()
    listener = Listener()
    transport, _ = await loop.create_datagram_endpoint(lambda: listener, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    engine = Engine(FakePipeline(), prompt="start", seed=1)
    target = ("127.0.0.1", reply_port or port) if reply else None
    app = create_app(engine, recordings=tmp_path / "recordings", osc=OscOptions(port=0, host="127.0.0.1", reply=target))
    if tempo is not None:
        app[HUB].tempo.set(tempo.bpm, tempo.beats_per_bar)
    try:
        async with TestClient(TestServer(app)) as client:
            server = app[OSC]
            sender = udp_client.SimpleUDPClient("127.0.0.1", server.address[1])
            yield client, engine, server, listener, sender
            sender._sock.close()
        assert not engine.running
    finally:
        transport.close()


def raw_sender(port: int):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return lambda data: sock.sendto(data, ("127.0.0.1", port)), sock


async def wait_for(predicate, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not predicate():
        assert loop.time() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)


# -- the table ---------------------------------------------------------------------------------------------------
def test_every_address_becomes_its_protocol_command_through_parse_command():
    assert {a.path for a in ADDRESSES} == set(EXPECTED)
    for address, (args, wire) in EXPECTED.items():
        assert to_command(address, args) == parse_command(wire), address
    # the optional quantize, and T/F for record
    assert to_command("/longlive/cue", [4]) == parse_command({"type": "fire", "cue": 4})
    assert to_command("/longlive/record", [0]) == parse_command({"type": "record", "on": False})
    assert to_command("/longlive/record", [True]) == parse_command({"type": "record", "on": True})
    # each table example is a valid command too (GET /api/osc and the docs show them)
    for entry in ADDRESSES:
        to_command(entry.path, list(entry.example))


@pytest.mark.parametrize("address, args, sentence", [
    ("/longlive/seed", ["seven"], "seed.seed must be an integer, not a string"),        # parse_command's words
    ("/longlive/seed", [-1], "seed.seed must be between 0 and"),
    ("/longlive/seed", [1.5], "seed.seed must be an integer, not a number"),
    ("/longlive/tempo", ["fast"], "tempo.bpm must be a number, not a string"),
    ("/longlive/tempo", [500.0], "tempo.bpm must be between 20 and 300"),
    ("/longlive/cue", [1, "soon"], "fire.quantize must be one of none, beat, bar"),
    ("/longlive/cue", [0], "fire.cue must be between 1 and 99"),
    ("/longlive/prompt", [""], "prompt.text must not be empty"),
    ("/longlive/prompt", [], "/longlive/prompt takes 1 argument (text: s), not 0"),
    ("/longlive/pause", [1], "/longlive/pause takes no arguments, not 1"),
    ("/longlive/cue", [1, "bar", 2], "/longlive/cue takes 1 or 2 arguments (cue: i, [quantize: s]), not 3"),
    ("/longlive/record", [2], "/longlive/record takes 1 (start) or 0 (stop), not 2"),
    ("/longlive/record", ["on"], "/longlive/record takes 1 (start) or 0 (stop), not a string"),
    ("/longlive/nope", [], "unknown OSC address '/longlive/nope'; the addresses are /longlive/ + one of prompt, cue"),
    ("/prompt", ["x"], "unknown OSC address '/prompt'"),
])
def test_bad_messages_are_refused_in_one_sentence(address, args, sentence):
    with pytest.raises(ProtocolError) as e:
        to_command(address, args)
    assert str(e.value).startswith(sentence) and "\n" not in str(e.value)


def test_bad_packets_are_refused_before_any_message():
    with pytest.raises(ProtocolError, match=f"the OSC packet is 5000 bytes; the limit is {MAX_PACKET_BYTES}"):
        read_packet(b"/" + b"a" * 4999)
    with pytest.raises(ProtocolError, match="the packet is not OSC"):
        read_packet(bytes(range(1, 64)))
    with pytest.raises(ProtocolError, match=r"the packet is not valid OSC \(Datagram is too short\)"):
        read_packet(osc.build("/longlive/seed", 3)[:-2])
    with pytest.raises(ProtocolError, match="OSC type tag 'c' is not supported"):
        read_packet(b"/longlive/seed\x00\x00,c\x00\x00abcd")
    too_many = osc_bundle_builder.OscBundleBuilder(osc_bundle_builder.IMMEDIATELY)
    for _ in range(MAX_BUNDLE_MESSAGES + 1):
        too_many.add_content(osc_message_builder.OscMessageBuilder("/longlive/tap").build())
    with pytest.raises(ProtocolError, match=f"the OSC bundle holds more than the limit of {MAX_BUNDLE_MESSAGES} messages"):
        read_packet(too_many.build().dgram)
    ok = osc_bundle_builder.OscBundleBuilder(osc_bundle_builder.IMMEDIATELY)
    ok.add_content(_message("/longlive/seed", 5))
    ok.add_content(_message("/longlive/prompt", "x"))
    assert read_packet(ok.build().dgram) == [("/longlive/seed", [5]), ("/longlive/prompt", ["x"])]


def _message(address: str, *args: Any) -> osc_message.OscMessage:
    b = osc_message_builder.OscMessageBuilder(address)
    for a in args:
        b.add_arg(a)
    return b.build()


# -- the live app ---------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_prompt_seed_pause_and_resume_over_udp_steer_the_stream(tmp_path):
    async def main():
        async with osc_app(tmp_path) as (client, engine, server, listener, sender):
            assert await listener.wait("/longlive/state/prompt") == ["start"]      # the hello, as OSC
            since = listener.mark()
            assert await listener.reply_to(lambda: sender.send_message("/longlive/prompt", "a heron over a marsh")) \
                == ("/longlive/ack", ["prompt"])
            assert await listener.wait("/longlive/applied", since) == ["a heron over a marsh"]
            state = await (await client.get("/api/state")).json()
            assert state["prompt"] == "a heron over a marsh"
            await listener.wait("/longlive/state/prompt", since, lambda a: a == ["a heron over a marsh"])

            assert await listener.reply_to(lambda: sender.send_message("/longlive/seed", 77)) == \
                ("/longlive/ack", ["seed"])
            await wait_for(lambda: engine.state().seed == 77, "the seed became 77")
            assert engine.state().prompt == "a heron over a marsh"

            assert await listener.reply_to(lambda: sender.send_message("/longlive/pause", [])) == \
                ("/longlive/ack", ["pause"])
            assert engine.state().paused and (await (await client.get("/api/state")).json())["paused"]
            assert await listener.reply_to(lambda: sender.send_message("/longlive/resume", [])) == \
                ("/longlive/ack", ["resume"])
            assert not engine.state().paused
            blocks = engine.state().blocks
            await wait_for(lambda: engine.state().blocks > blocks + 1, "blocks after resume")
    asyncio.run(main())


@pytest.mark.integration
def test_a_bundle_applies_every_message_in_it(tmp_path):
    bundle = osc_bundle_builder.OscBundleBuilder(osc_bundle_builder.IMMEDIATELY)
    bundle.add_content(_message("/longlive/seed", 23))
    bundle.add_content(_message("/longlive/prompt", "a bundled comet"))

    async def main():
        async with osc_app(tmp_path) as (client, engine, server, listener, sender):
            await wait_for(lambda: engine.state().blocks >= 1, "a first block")
            since = listener.mark()
            sender.send(bundle.build())
            await listener.wait("/longlive/applied", since, lambda a: a == ["a bundled comet"])
            acks = [args for address, args in listener.messages[since:] if address == "/longlive/ack"]
            assert acks[:2] == [["seed"], ["prompt"]]
            assert (engine.state().seed, engine.state().prompt) == (23, "a bundled comet")
    asyncio.run(main())


@pytest.mark.integration
def test_record_over_osc_starts_and_stops_a_recording(tmp_path):
    async def main():
        async with osc_app(tmp_path) as (client, engine, server, listener, sender):
            await wait_for(lambda: engine.state().blocks >= 1, "a first block")
            since = listener.mark()
            assert await listener.reply_to(lambda: sender.send_message("/longlive/record", 1)) == \
                ("/longlive/ack", ["record"])
            await listener.wait("/longlive/state/recording", since, lambda a: a == [1])
            since = listener.mark()
            assert await listener.reply_to(lambda: sender.send_message("/longlive/record", 0)) == \
                ("/longlive/ack", ["record"])
            await listener.wait("/longlive/state/recording", since, lambda a: a == [0])
            # stopping again: the hub's own refusal, as OSC
            assert await listener.reply_to(lambda: sender.send_message("/longlive/record", 0)) == \
                ("/longlive/error", ["nothing is being recorded"])
    asyncio.run(main())


@pytest.mark.integration
def test_cue_arm_tempo_tap_transition_and_rewind_get_what_the_hub_answers_any_client(tmp_path):
    """Each goes where a WebSocket or HTTP command goes: the OSC reply is the hub's ack or refusal, word for word."""
    async def main():
        async with osc_app(tmp_path) as (client, engine, server, listener, sender):
            await wait_for(lambda: engine.state().blocks >= 1, "a first block")
            r = await client.post("/api/command", json={"type": "cue", "cue": 1, "text": "a cue of lanterns"})
            assert r.status in (202, 400, 503), await r.text()
            for address, args, wire in [
                ("/longlive/arm", [1], {"type": "arm", "cue": 1}),
                ("/longlive/tempo", [140], {"type": "tempo", "bpm": 140}),
                ("/longlive/tap", [], {"type": "tap"}),
                ("/longlive/transition", [3], {"type": "transition", "blocks": 3}),
                ("/longlive/cue", [1], {"type": "fire", "cue": 1}),
            ]:
                http = await (await client.post("/api/command", json=wire)).json()
                expected = ("/longlive/ack", [wire["type"]]) if http.get("type") == "ack" else \
                    ("/longlive/error", [http.get("message", http.get("error"))])
                got = await listener.reply_to(lambda: sender.send_message(address, args))
                assert got == expected, (address, http)
            # a rewind to a segment that is not kept: refused at once, like over HTTP, and never acked
            http = await (await client.post("/api/command", json={"type": "rewind", "segment": 999})).json()
            since = listener.mark()
            assert await listener.reply_to(lambda: sender.send_message("/longlive/rewind", 999), since) == \
                ("/longlive/error", [http["message"]])
            blocks = engine.state().blocks
            await wait_for(lambda: engine.state().blocks >= blocks + 2, "two block boundaries after the rewind")
            assert ("/longlive/ack", ["rewind"]) not in listener.messages[since:]
    asyncio.run(main())


@pytest.mark.integration
def test_a_rewind_to_a_segment_not_kept_is_refused_over_osc_before_any_ack(tmp_path):
    """docs/PROTOCOL.md: a refused command never gets an ack. `/longlive/rewind 999` gets one
    `/longlive/error` with the sentence every path gets, no `/longlive/ack`, and nothing changes."""
    async def main():
        async with osc_app(tmp_path) as (client, engine, server, listener, sender):
            await wait_for(lambda: engine.state().blocks >= 1, "a first block")
            sentence = engine.rewind.missing(999)
            before = engine.state()
            since = listener.mark()
            assert await listener.reply_to(lambda: sender.send_message("/longlive/rewind", 999), since) == \
                ("/longlive/error", [sentence])
            blocks = engine.state().blocks
            await wait_for(lambda: engine.state().blocks >= blocks + 2, "two block boundaries after the rewind")
            heard = [m for m in listener.messages[since:] if m[0] in ("/longlive/ack", "/longlive/error")]
            assert heard == [("/longlive/error", [sentence])], heard         # once, and no ack before or after
            after = engine.state()
            assert (after.prompt, after.seed, after.segments) == (before.prompt, before.seed, before.segments)
    asyncio.run(main())


@pytest.mark.integration
def test_a_cue_fires_from_osc(tmp_path):
    async def main():
        async with osc_app(tmp_path) as (client, engine, server, listener, sender):
            await wait_for(lambda: engine.state().blocks >= 1, "a first block")
            r = await client.post("/api/command", json={"type": "cue", "cue": 1, "text": "a cue of lanterns"})
            assert r.status == 202, await r.text()
            since = listener.mark()
            assert await listener.reply_to(lambda: sender.send_message("/longlive/arm", 1)) == \
                ("/longlive/ack", ["arm"])
            await listener.wait("/longlive/state/armed", since, lambda a: a == [1])
            since = listener.mark()
            assert await listener.reply_to(lambda: sender.send_message("/longlive/cue", 1)) == \
                ("/longlive/ack", ["fire"])
            assert await listener.wait("/longlive/applied", since) == ["a cue of lanterns"]
            assert engine.state().prompt == "a cue of lanterns"
    asyncio.run(main())


@pytest.mark.integration
def test_bad_osc_gets_an_error_reply_and_the_stream_goes_on(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    rng = random.Random(7)
    junk = bytes([rng.randrange(1, 35)]) + bytes(rng.randrange(256) for _ in range(60))   # not '/' nor '#'
    too_many = osc_bundle_builder.OscBundleBuilder(osc_bundle_builder.IMMEDIATELY)
    for _ in range(MAX_BUNDLE_MESSAGES + 1):
        too_many.add_content(_message("/longlive/seed", 5))
    half_bad = osc_bundle_builder.OscBundleBuilder(osc_bundle_builder.IMMEDIATELY)
    half_bad.add_content(_message("/longlive/seed", 5))             # valid, but its bundle is refused whole
    half_bad.add_content(_message("/longlive/seed", "five"))
    cases = [
        (lambda s, raw: s.send_message("/longlive/seed", "seven"), "seed.seed must be an integer, not a string"),
        (lambda s, raw: s.send_message("/longlive/tempo", "fast"), "tempo.bpm must be a number, not a string"),
        (lambda s, raw: s.send_message("/longlive/nope", 1), "unknown OSC address '/longlive/nope'"),
        (lambda s, raw: s.send_message("/foo", []), "unknown OSC address '/foo'"),
        (lambda s, raw: s.send_message("/longlive/seed", [1, 2]), "/longlive/seed takes 1 argument"),
        (lambda s, raw: s.send_message("/longlive/record", 5), "/longlive/record takes 1 (start) or 0 (stop)"),
        (lambda s, raw: s.send_message("/longlive/prompt", "x" * 4975),       # 20 + 4 + 4976 bytes
         f"the OSC packet is 5000 bytes; the limit is {MAX_PACKET_BYTES}"),
        (lambda s, raw: raw(junk), "the packet is not OSC"),
        (lambda s, raw: raw(b"/longlive/seed\x00\x00,i\x00\x00\x00"), "the packet is not valid OSC"),
        (lambda s, raw: raw(b"/longlive/seed\x00\x00,c\x00\x00abcd"), "OSC type tag 'c' is not supported"),
        (lambda s, raw: s.send(too_many.build()),
         f"the OSC bundle holds more than the limit of {MAX_BUNDLE_MESSAGES} messages"),
        (lambda s, raw: s.send(half_bad.build()), "seed.seed must be an integer, not a string"),
    ]

    async def main():
        async with osc_app(tmp_path) as (client, engine, server, listener, sender):
            raw, sock = raw_sender(server.address[1])
            await wait_for(lambda: engine.state().blocks >= 1, "a first block")
            for send, sentence in cases:
                got = await listener.reply_to(lambda: send(sender, raw))
                assert got[0] == "/longlive/error" and got[1][0].startswith(sentence), (sentence, got)
                assert engine.state().seed == 1 and engine.state().prompt == "start"    # nothing changed
            # a flood of refusals: each one answered, none above debug in the log
            since = listener.mark()
            for _ in range(200):
                raw(junk)
            await wait_for(lambda: sum(1 for a, _ in listener.messages[since:] if a == "/longlive/error") >= 150,
                           "most of the flood answered")
            # ... and the stream goes on: blocks keep coming, a good command still works
            blocks = engine.state().blocks
            await wait_for(lambda: engine.state().blocks >= blocks + 2, "blocks after the refusals")
            assert await listener.reply_to(lambda: sender.send_message("/longlive/seed", 5)) == \
                ("/longlive/ack", ["seed"])
            await wait_for(lambda: engine.state().seed == 5, "the seed became 5")
            sock.close()
        loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert not loud, [r.getMessage() for r in loud]
        refusals = [r for r in caplog.records if r.name == "server.control.osc" and "refused" in r.getMessage()]
        assert len(refusals) >= len(cases) and all(r.levelno == logging.DEBUG for r in refusals)
    asyncio.run(main())


@pytest.mark.integration
def test_the_reply_port_hears_the_prompt_fps_engine_and_beats(tmp_path):
    async def main():
        async with osc_app(tmp_path, tempo=TempoClock(bpm=240, beats_per_bar=3)) as (client, engine, server,
                                                                                      listener, sender):
            assert await listener.wait("/longlive/state/prompt") == ["start"]
            assert (await listener.wait("/longlive/state/engine"))[0] in ("starting", "running")
            assert await listener.wait("/longlive/state/armed") == [0]
            assert await listener.wait("/longlive/state/recording") == [0]
            fps = await listener.wait("/longlive/state/fps")
            assert isinstance(fps[0], float) and fps[0] >= 0
            assert await listener.wait("/longlive/state/bpm", match=lambda a: a == [240.0]) == [240.0]
            since = listener.mark()

            def heard() -> list[int]:
                return [args[0] for address, args in listener.messages[since:] if address == "/longlive/state/beat"]
            await wait_for(lambda: len(heard()) >= 7, "seven beats")
            beats = heard()
            assert all(1 <= b <= 3 for b in beats), beats
            # one message per beat, in order round the bar (a late event loop may skip one; never repeat one)
            steps = [(b - a) % 3 for a, b in zip(beats, beats[1:])]
            assert 0 not in steps and steps.count(1) >= len(steps) - 1, beats
            assert {1, 2, 3} <= set(beats), beats
    asyncio.run(main())


@pytest.mark.integration
def test_replies_to_a_port_nobody_listens_on_never_raise(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    nobody = free_udp_port()

    async def main():
        async with osc_app(tmp_path, reply_port=nobody) as (client, engine, server, listener, sender):
            for _ in range(5):
                sender.send_message("/longlive/nope", [])
            sender.send_message("/longlive/prompt", "nobody hears this")
            await wait_for(lambda: engine.state().prompt == "nobody hears this", "the prompt went live")
            blocks = engine.state().blocks
            await wait_for(lambda: engine.state().blocks >= blocks + 2, "blocks go on")
            assert server.received == 6 and server.refused == 5
    asyncio.run(main())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.integration
def test_api_osc_lists_every_address(tmp_path):
    async def main():
        async with osc_app(tmp_path) as (client, engine, server, listener, sender):
            r = await client.get("/api/osc")
            assert r.status == 200
            got = await r.json()
            assert got["enabled"] and got["listening"] and got["host"] == "127.0.0.1"
            assert got["port"] == server.address[1] and re.fullmatch(r"127\.0\.0\.1:\d+", got["reply"])
            assert got["limits"]["packet_bytes"] == MAX_PACKET_BYTES
            rows = {row["address"]: row for row in got["addresses"]}
            assert set(rows) == set(EXPECTED)
            for address, (_, wire) in EXPECTED.items():
                row = rows[address]
                assert row["command"] == wire["type"]
                assert [a["name"] for a in row["args"]] == [k for k in wire if k != "type"] or address == "/longlive/cue"
                assert all(a["tags"] for a in row["args"]) and row["typetags"][0].startswith(",")
                assert row["example"]["message"].startswith(address)
                assert parse_command(row["example"]["command"]).TYPE == wire["type"]
            assert [a["name"] for a in rows["/longlive/cue"]["args"]] == ["cue", "quantize"]
            assert rows["/longlive/cue"]["typetags"] == [",i", ",is"]
            assert {"/longlive/state/beat", "/longlive/error", "/longlive/ack"} <= \
                {row["address"] for row in got["replies"]}

        async with TestClient(TestServer(create_app(Engine(FakePipeline())))) as client:      # OSC off
            got = await (await client.get("/api/osc")).json()
            assert not got["enabled"] and not got["listening"] and got["reply"] is None
            assert {row["address"] for row in got["addresses"]} == set(EXPECTED)
    asyncio.run(main())


# -- flags and binding -------------------------------------------------------------------------------------------
def test_the_serve_flags():
    parser = cli.build_parser()
    off = parser.parse_args(["serve"])
    assert (off.osc, off.osc_host, off.osc_reply) == (None, "127.0.0.1", None)
    assert osc.options_from_args(off) is None
    on = parser.parse_args(["serve", "--osc", "9000", "--osc-host", "0.0.0.0", "--osc-reply", "10.0.0.5:9001"])
    assert (on.osc, on.osc_host, on.osc_reply) == (9000, "0.0.0.0", ("10.0.0.5", 9001))
    assert parser.parse_args(["serve", "--osc-reply", "[::1]:7000"]).osc_reply == ("::1", 7000)


@pytest.mark.parametrize("value", ["nope", "127.0.0.1", "127.0.0.1:", ":9000", "host:port", "127.0.0.1:70000"])
def test_a_bad_osc_reply_is_one_usage_sentence(value, capsys):
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["serve", "--osc-reply", value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{value!r} is not HOST:PORT; write it like 127.0.0.1:9000" in err


@pytest.mark.integration
def test_a_port_in_use_is_one_sentence():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(UserError) as e:
            osc.bind("127.0.0.1", port)
        assert str(e.value) == f"UDP port {port} on 127.0.0.1 is already in use; pick another with --osc"

        async def main():
            server = OscServer(hub=None, options=OscOptions(port=port))
            with pytest.raises(UserError, match="already in use"):
                await server.start()
        asyncio.run(main())


def test_docs_describe_every_address_and_reply():
    doc = (REPO / "docs" / "PROTOCOL.md").read_text()
    assert "\n## OSC" in doc
    section = doc[doc.index("\n## OSC"):]
    for entry in ADDRESSES:
        assert f"`{entry.path}" in section, entry.path
    for address, _, _ in osc.REPLIES:
        assert f"`{address}" in section, address
    for flag in ("--osc", "--osc-host", "--osc-reply"):
        assert flag in section
    assert str(MAX_PACKET_BYTES) in section and str(MAX_BUNDLE_MESSAGES) in section
