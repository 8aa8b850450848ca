"""AI enhancement in the live server: `enhance` -> `enhanced`, `prompt` with enhance: true, fallbacks that never
stall the stream, the history (and its revert on rewind), and a key that never shows.

The app runs in-process (fake pipeline, real engine thread, real HTTP and WebSocket); the
model is the fake Messages API on 127.0.0.1 reached through the real Anthropic SDK.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from messages_api import FakeMessagesAPI
from server.app import create_app
from server.control.hub import ControlHub, ServerInfo
from server.enhance import AsyncPromptEnhancer
from server.engine import Engine
from server.protocol import PromptCommand, RewindCommand
from studio.enhancer import EnhancerConfig, EnhancerSession
from test_engine import FakePipeline
from test_protocol import next_message

KEY = "sk-ant-test-LIVESECRET77"


def config(**changes) -> EnhancerConfig:
    import dataclasses
    return dataclasses.replace(EnhancerConfig.load(), **changes)


async def with_app(api: FakeMessagesAPI, body, **cfg) -> None:
    engine = Engine(FakePipeline(), prompt="a paper boat on a pond", seed=1)
    enhancer = AsyncPromptEnhancer(config(**cfg), api_key=KEY)
    app = create_app(engine, enhancer=enhancer)
    async with TestClient(TestServer(app)) as client:
        ws = await client.ws_connect("/api/control?format=json")
        await next_message(ws, ("hello",))
        await body(client, ws, engine)
        await ws.close()
    await enhancer.aclose()


def user_text(request: dict) -> str:
    content = request["json"]["messages"][-1]["content"]
    return content if isinstance(content, str) else " ".join(b.get("text", "") for b in content)


@pytest.mark.integration
def test_enhance_answers_the_rewrite_and_a_prompt_with_enhance_goes_live_rewritten(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)

    async def body(client, ws, engine):
        api.answer_text("The paper boat drifts left across the pond.")
        await ws.send_json({"type": "enhance", "id": 1, "text": "it drifts"})
        got = await next_message(ws, ("enhanced",), timeout=60)
        assert (got["id"], got["input"], got["text"], got["source"], got["error"]) == \
            (1, "it drifts", "The paper boat drifts left across the pond.", "ai", None)
        assert got["input_tokens"] == 10 and got["output_tokens"] == 5
        first = api.messages_requests()[0]
        assert "a paper boat on a pond" in user_text(first) and "it drifts" in user_text(first)  # grounding + input
        assert engine.state().prompt == "a paper boat on a pond"          # nothing went live

        api.answer_text("The paper boat spins clockwise, fast.")
        await ws.send_json({"type": "prompt", "id": 2, "text": "it spins", "enhance": True})
        assert (await next_message(ws, ("enhanced",), timeout=60))["text"] == "The paper boat spins clockwise, fast."
        assert (await next_message(ws, ("ack",)))["id"] == 2
        applied = await next_message(ws, ("prompt_applied",), timeout=60)
        assert (applied["id"], applied["text"]) == (2, "The paper boat spins clockwise, fast.")

        # the history now carries what went live: the next request says so
        api.answer_text("The boat sinks.")
        await ws.send_json({"type": "enhance", "id": 3, "text": "it sinks"})
        await next_message(ws, ("enhanced",), timeout=60)
        assert "The paper boat spins clockwise, fast." in user_text(api.messages_requests()[-1])

        # over HTTP the answer is the enhanced map itself
        api.answer_text("The boat rises.")
        r = await client.post("/api/command", json={"type": "enhance", "text": "it rises"})
        assert r.status == 200 and (await r.json())["text"] == "The boat rises."
        api.answer_text("The boat is gold.")
        r = await client.post("/api/prompt", json={"text": "gold", "enhance": True, "id": "h"})
        reply = await r.json()
        assert r.status == 202 and reply["type"] == "ack" and reply["enhanced"]["text"] == "The boat is gold."
        applied = await next_message(ws, ("prompt_applied",), timeout=60)
        assert (applied["id"], applied["text"]) == ("h", "The boat is gold.")
        state = await (await client.get("/api/state")).json()
        assert state["enhancer"] == {"available": True, "notice": None}

    with FakeMessagesAPI() as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        asyncio.run(with_app(api, body))
        assert {api.key_of(r) for r in api.messages_requests()} == {KEY}
    assert KEY not in caplog.text


@pytest.mark.integration
@pytest.mark.parametrize("trouble, says", [
    (lambda api: api.answer_error(500, "overloaded"), "HTTP 500"),
    (lambda api: api.answer_error(429, "slow down", retry_after=0), "rate-limited (HTTP 429)"),
    (lambda api: api.answer_raw(200, b"{not json"), "AI enhancement"),
    (lambda api: api.answer_text(""), "AI enhancement returned no text"),
])
def test_a_failing_model_falls_back_to_the_prompt_as_sent(monkeypatch, caplog, trouble, says):
    caplog.set_level(logging.DEBUG)

    async def body(client, ws, engine):
        for _ in range(3):
            trouble(api)
        await ws.send_json({"type": "prompt", "id": "p", "text": "a red kite", "enhance": True})
        got = await next_message(ws, ("enhanced",), timeout=30)
        assert got["source"] == "raw" and got["text"] == "a red kite" and says in got["error"]
        applied = await next_message(ws, ("prompt_applied",), timeout=60)
        assert applied["text"] == "a red kite"                          # the prompt went live as sent

    with FakeMessagesAPI() as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        asyncio.run(with_app(api, body, max_retries=0))
    assert KEY not in caplog.text


@pytest.mark.integration
def test_the_stream_keeps_generating_while_the_model_is_slow_and_times_out(monkeypatch):
    async def body(client, ws, engine):
        api.answer_delay(3.0, then_text="too late")
        before = engine.state().blocks
        await ws.send_json({"type": "enhance", "id": 9, "text": "slowly"})
        # while the call is pending the engine thread goes on making blocks at the stream's rate
        deadline = asyncio.get_running_loop().time() + 30
        while engine.state().blocks < before + 2:
            assert asyncio.get_running_loop().time() < deadline, "the engine stopped making blocks"
            await asyncio.sleep(0.05)
        got = await next_message(ws, ("enhanced",), timeout=30)
        assert got["source"] == "raw" and "timed out" in got["error"]
        assert engine.state().blocks >= before + 2

    with FakeMessagesAPI() as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        asyncio.run(with_app(api, body, timeout_s=1.0, max_retries=0))


@pytest.mark.integration
def test_no_key_means_a_notice_and_prompts_as_written(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)

    async def main():
        engine = Engine(FakePipeline(), prompt="start", seed=1)
        app = create_app(engine, enhancer=AsyncPromptEnhancer(config()))
        async with TestClient(TestServer(app)) as client:
            ws = await client.ws_connect("/api/control?format=json")
            hello = await next_message(ws, ("hello",))
            assert hello["state"]["enhancer"]["available"] is False
            assert "ANTHROPIC_API_KEY" in hello["state"]["enhancer"]["notice"]
            await ws.send_json({"type": "prompt", "id": 1, "text": "as is", "enhance": True})
            got = await next_message(ws, ("enhanced",))
            assert (got["text"], got["source"]) == ("as is", "raw")
            assert (await next_message(ws, ("prompt_applied",), timeout=60))["text"] == "as is"
            await ws.close()

    asyncio.run(main())


def test_a_rewind_takes_the_history_back_to_when_its_segment_began():
    """The hub's bookkeeping against an engine whose segments are given (the fake pipeline keeps none)."""
    session = EnhancerSession(config())
    segments = []
    blocks = [0]

    class Engine_:
        def state(self):
            return SimpleNamespace(blocks=blocks[0], segments=segments, prompt="start")

        def submit(self, command, **how):
            pass

        def clock(self):
            return 0.0

    hub = ControlHub(Engine_(), ServerInfo("fake", 16, 8, 16.0, True),
                     enhancer=SimpleNamespace(session=session, available=True, notice=None))
    replies = []
    for i, text in enumerate(["one", "two", "three"]):
        blocks[0] = 10 * i
        segments.append({"segment": i + 1, "index": 10 * i + 2, "block": 0, "prompt": text, "time": 0.0})
        hub.dispatch(PromptCommand(text=text), replies.append)
    assert session.history == ["one", "two", "three"]
    hub.dispatch(RewindCommand(segment=2), replies.append)      # "two" began at index 12: "three" came after
    assert session.history == ["one", "two"]
    hub.dispatch(RewindCommand(segment=1), replies.append)
    assert session.history == ["one"]
