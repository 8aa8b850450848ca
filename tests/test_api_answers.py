"""What the server answers a newcomer's mistakes, the same on every path (HTTP, WebSocket; OSC in
tests/test_osc.py): a refusal the server can know before queueing is refused before any ack (a
rewind to a segment that is not kept: HTTP 409, an `error` with the id and no ack); an unknown
field names the field meant; a method a route does not take is 405 with `Allow`, not 404.

A fake pipeline that keeps rewind snapshots (tiny stand-ins) runs under the real engine thread
and the real app, over real HTTP and WebSockets (those tests are marked integration: they
start a server); the schema's and the engine's own checks run without one."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, AsyncIterator, Callable

import msgpack
import pytest
from aiohttp.test_utils import TestClient, TestServer

from server.app import ENGINE, create_app
from server.engine import CommandRefused, Engine
from server.protocol import ErrorEvent, PromptCommand, ProtocolError, RewindCommand, parse_command
from test_engine import FakePipeline
from test_framebus import FakeClock
from test_protocol import next_message

WAIT_S = 60.0                  # a deadline on any one wait, never a timing assertion


@dataclass
class KeepingPipeline(FakePipeline):
    """The fake pipeline with what rewind needs: a snapshot (small, with `nbytes`) and restore."""

    on_snapshot: Callable[[], None] | None = None    # called while the engine takes a snapshot

    def snapshot(self, device: str) -> Any:
        if self.on_snapshot is not None:
            self.on_snapshot()
        return SimpleNamespace(nbytes=1000, block=self.block, prompt=self.prompt)

    def restore(self, snap: Any) -> None:
        self.block, self.prompt, self._pending = snap.block, snap.prompt, None

    def reseed_noise(self, seed: int) -> None:
        pass


@contextlib.asynccontextmanager
async def app_with_segments() -> AsyncIterator[tuple[TestClient, Engine]]:
    engine = Engine(KeepingPipeline(), prompt="start", seed=1)
    async with TestClient(TestServer(create_app(engine))) as client:
        assert client.server.app[ENGINE] is engine
        await until(lambda: engine.state().segments, "the first segment kept")
        yield client, engine
    assert not engine.running


async def until(predicate: Callable[[], Any], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not predicate():
        assert loop.time() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)


async def two_boundaries(engine: Engine) -> None:
    """Until two more blocks are made: a command queued before has been applied by then."""
    blocks = engine.state().blocks
    await until(lambda: engine.state().blocks >= blocks + 2, "two more blocks")


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


async def drain(ws, seconds: float = 0.3) -> list[dict]:
    """Every message that arrives within `seconds` of the last one."""
    out = []
    with contextlib.suppress(asyncio.TimeoutError):
        while True:
            out.append(await next_message(ws, timeout=seconds))
    return out


# -- a rewind to a segment that is not kept: refused before any ack, on every path -------------------------
@pytest.mark.integration
def test_a_rewind_to_a_segment_not_kept_is_409_over_http_and_changes_nothing():
    async def main():
        async with app_with_segments() as (client, engine):
            watcher = await client.ws_connect("/api/control?format=json")      # another client, listening
            await next_message(watcher, ("hello",))
            before = await (await client.get("/api/state")).json()
            sentence = engine.rewind.missing(999)
            assert sentence.startswith("segment 999 does not exist yet; segments 0 to ")

            r = await client.post("/api/command", json={"type": "rewind", "segment": 999, "id": "r9"})
            assert r.status == 409 and "Retry-After" not in r.headers
            assert await r.json() == {"type": "error", "id": "r9", "message": sentence}

            await two_boundaries(engine)
            after = await (await client.get("/api/state")).json()
            for key in ("prompt", "seed", "paused", "engine", "segments"):
                assert after[key] == before[key], key
            assert after["block"] > before["block"]          # the stream went on where it was
            heard = await drain(watcher)
            assert not [m for m in heard if m["type"] in ("error", "ack")], heard   # the refusal was the caller's
            await watcher.close()

            # a kept segment is still taken: the check refuses only what is not there
            kept = before["segments"][0]["segment"]
            r = await client.post("/api/command", json={"type": "rewind", "segment": kept, "id": "ok"})
            assert r.status == 202 and await r.json() == {"type": "ack", "id": "ok", "command": "rewind"}
    asyncio.run(main())


@pytest.mark.integration
def test_a_rewind_to_a_segment_not_kept_is_an_error_with_its_id_and_no_ack_over_the_websocket():
    async def main():
        async with app_with_segments() as (client, engine):
            ws = await client.ws_connect("/api/control")
            await next_message(ws, ("hello",))
            await ws.send_bytes(pack({"type": "rewind", "segment": 999, "id": "r9"}))
            reply = await next_message(ws, ("ack", "error"))
            assert reply == {"type": "error", "id": "r9", "message": engine.rewind.missing(999)}
            await two_boundaries(engine)
            heard = await drain(ws)
            assert not [m for m in heard if m["type"] in ("ack", "error")], heard    # no ack later, no 2nd error
            await ws.close()
    asyncio.run(main())


def step_until_block(engine: Engine, clock: FakeClock) -> None:
    """Drive the engine (no thread) until it has made one more block."""
    while (wait := engine.step()) != 0:
        clock.advance(wait)


def test_the_engine_refuses_a_rewind_to_a_segment_not_kept_when_it_is_submitted():
    clock = FakeClock()
    engine = Engine(KeepingPipeline(), prompt="start", clock=clock)
    engine.begin()
    try:
        step_until_block(engine, clock)
        assert [p["segment"] for p in engine.state().segments] == [0]
        with pytest.raises(CommandRefused) as refused:
            engine.submit(RewindCommand(segment=3, id="r3"))
        assert refused.value.conflict
        assert str(refused.value) == "segment 3 does not exist yet; segments 0 to 0 can be rewound to"
        engine.submit(RewindCommand(segment=0))                        # a kept one is queued
    finally:
        engine.stop()


def test_a_segment_dropped_between_the_ack_and_the_boundary_is_the_one_late_refusal():
    """docs/PROTOCOL.md, Engine states and refusals: the rewind memory can drop the requested
    segment to keep a new one after the rewind was taken; then its error follows the ack."""
    clock = FakeClock()
    pipe = KeepingPipeline()
    engine = Engine(pipe, prompt="a", clock=clock, rewind_bytes=2000)     # room for two snapshots
    events: list = []
    engine.emit = events.append
    step = lambda: step_until_block(engine, clock)     # noqa: E731
    engine.begin()
    try:
        step()                                      # segment 0
        engine.submit(PromptCommand(text="b"))
        assert engine.encoder.wait_idle(WAIT_S)
        step()                                      # segment 1
        assert [p["segment"] for p in engine.state().segments] == [0, 1]
        taken: list = []
        # the rewind arrives while the next segment's snapshot is being taken (the event loop
        # does not wait for the engine's thread): segment 0 is still kept, so it is taken ...
        pipe.on_snapshot = lambda: taken.append(engine.submit(RewindCommand(segment=0, id="late")))
        engine.submit(PromptCommand(text="c"))
        assert engine.encoder.wait_idle(WAIT_S)
        step()                                      # segment 2: segment 0 is dropped for it
        pipe.on_snapshot = None
        assert taken == [None] and [p["segment"] for p in engine.state().segments] == [1, 2]
        step()                                      # ... and refused where it is applied
        late = [e for e in events if isinstance(e, ErrorEvent) and e.id == "late"]
        assert [e.message for e in late] == ["segment 0 is no longer kept (rewind memory holds segments 1 to 2)"]
        assert engine.state().prompt == "c"                     # nothing changed
    finally:
        engine.stop()


# -- an unknown field names the field meant ----------------------------------------------------------------
@pytest.mark.parametrize("message, sentence", [
    ({"type": "prompt", "prompt": "a fox"}, "'prompt' has no field 'prompt'; the prompt's text goes in \"text\""),
    ({"type": "prompt", "message": "a fox"}, "'prompt' has no field 'message'; the prompt's text goes in \"text\""),
    ({"type": "enhance", "prompt": "a fox"}, "'enhance' has no field 'prompt'; the prompt's text goes in \"text\""),
    ({"type": "rewind", "seg": 2}, "'rewind' has no field 'seg'; the segment's number goes in \"segment\""),
    ({"type": "rewind", "index": 2}, "'rewind' has no field 'index'; the segment's number goes in \"segment\""),
    ({"type": "fire", "index": 2}, "'fire' has no field 'index'; the cue's number goes in \"cue\""),
    ({"type": "record", "recording": True},
     "'record' has no field 'recording'; \"on\" is true to start recording and false to stop it"),
    ({"type": "tempo", "bpm": 90, "beatsPerBar": 3},
     "'tempo' has no field 'beatsPerBar'; did you mean \"beats_per_bar\"?"),
    ({"type": "fire", "cue": 1, "quantise": "bar"}, "'fire' has no field 'quantise'; did you mean \"quantize\"?"),
    ({"type": "prompt", "prompts": [{"prompt": "a"}]},
     "prompt.prompts[0] has no field 'prompt'; the prompt's text goes in \"text\""),
    ({"type": "prompt", "text": "a", "transition": {"steps": 4}},
     "prompt.transition has no field 'steps'; the transition's length in blocks goes in \"blocks\""),
    # no likely field: the fields the type has
    ({"type": "prompt", "text": "a", "colour": "red"}, "'prompt' has no field 'colour' (text, prompts, transition, "
                                                       "enhance, id)"),
    ({"type": "seed", "value": 3}, "'seed' has no field 'value' (seed, id)"),
    ({"type": "fire", "cue": 1, "prompt": "a"}, "'fire' has no field 'prompt' (cue, quantize, id)"),
])
def test_an_unknown_field_names_the_field_meant(message, sentence):
    with pytest.raises(ProtocolError) as err:
        parse_command(message)
    assert str(err.value) == sentence


@pytest.mark.integration
def test_http_prompt_with_a_prompt_field_says_where_the_text_goes():
    async def main():
        async with app_with_segments() as (client, engine):
            r = await client.post("/api/prompt", json={"prompt": "a fox"})
            assert r.status == 400
            assert await r.json() == {"error": "'prompt' has no field 'prompt'; the prompt's text goes in \"text\""}
            assert engine.state().prompt == "start"
    asyncio.run(main())


# -- a method a route does not take: 405 with Allow, not 404 ------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("method, path, allow", [
    ("GET", "/api/prompt", {"POST"}),
    ("GET", "/api/command", {"POST"}),
    ("GET", "/api/offer", {"POST"}),
    ("DELETE", "/api/command", {"POST"}),
    ("PUT", "/api/prompt", {"POST"}),
    ("PATCH", "/api/prompt", {"POST"}),
    ("DELETE", "/api/prompt", {"POST"}),
    ("POST", "/api/state", {"GET", "HEAD"}),
    ("GET", "/api/sessions/abc", {"DELETE"}),
    ("GET", "/whep", {"OPTIONS", "POST"}),
    ("POST", "/app.js", {"GET", "HEAD"}),
    ("POST", "/", {"GET", "HEAD"}),
])
def test_a_method_a_route_does_not_take_is_405_with_allow(method, path, allow):
    async def main():
        async with app_with_segments() as (client, engine):
            for body in (None, {"text": "a fox"}):        # with a JSON body too: the method is what is wrong
                r = await client.request(method, path, json=body)
                assert r.status == 405, (method, path, r.status, await r.text())
                assert set(r.headers["Allow"].replace(" ", "").split(",")) == allow
                said = (await r.json())["error"]
                assert said.startswith(f"{path} takes ") and said.endswith(f"not {method}"), said
            assert engine.state().prompt == "start"
    asyncio.run(main())


@pytest.mark.integration
def test_missing_files_stay_404_and_real_routes_answer():
    async def main():
        async with app_with_segments() as (client, engine):
            for method in ("GET", "DELETE"):
                r = await client.request(method, "/some/missing.js")
                assert r.status == 404 and "Allow" not in r.headers
                assert (await r.json())["error"] == "no file 'some/missing.js'"
            assert (await client.get("/app.js")).status == 200
            assert (await client.head("/app.js")).status == 200
            assert (await client.get("/api/state")).status == 200
            assert (await client.post("/api/prompt", json={"text": "a fox"})).status == 202
            r = await client.patch("/whep/nobody")                 # WHEP's own answers stay its own
            assert r.status == 404 and r.headers["Content-Type"].startswith("text/plain")
    asyncio.run(main())

