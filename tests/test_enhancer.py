"""The AI prompt enhancer against a fake Messages API on 127.0.0.1 (tests/messages_api.py):
what each request carries, going back in time, every fallback and its one line, no key,
the key never leaking, usage and cost, the async twin giving the same results, and config
mistakes as one sentence. No network, no real key: every request goes to the fake."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest
import yaml

from messages_api import FakeMessagesAPI
from server.enhance import AsyncPromptEnhancer
from streaming.errors import UserError
from studio.enhancer import Enhanced, EnhancerConfig, EnhancerError, EnhancerSession, PromptEnhancer

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-ant-test-SECRET123"
FALLBACK = "; using the prompt as written"
DEAD_URL = "http://127.0.0.1:9"          # the discard port: nothing listens, a stray request fails fast


@pytest.fixture(autouse=True)
def no_real_api(monkeypatch, tmp_path):
    """No test can reach the real API or read a real credential: every Anthropic variable is
    cleared and the base URL points at a dead local port unless a test points it at the fake."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE", "ANTHROPIC_CUSTOM_HEADERS",
                 "ANTHROPIC_IDENTITY_TOKEN", "ANTHROPIC_IDENTITY_TOKEN_FILE", "ANTHROPIC_LOG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path / "anthropic-config"))
    monkeypatch.setenv("ANTHROPIC_BASE_URL", DEAD_URL)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def api(monkeypatch):
    with FakeMessagesAPI() as fake:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        yield fake


def default_settings() -> dict:
    return yaml.safe_load((REPO / "configs" / "ai" / "enhancer.yaml").read_text())


def write_config(tmp_path: Path, name: str = "enhancer.yaml", **changes) -> Path:
    data = default_settings()
    data.update(changes)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def config(tmp_path: Path, **changes) -> EnhancerConfig:
    return EnhancerConfig.load(write_config(tmp_path, **changes))


def user_text(request: dict) -> str:
    messages = request["json"]["messages"]
    assert len(messages) == 1 and messages[0]["role"] == "user"
    content = messages[0]["content"]
    return content if isinstance(content, str) else "".join(b["text"] for b in content)


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "studio.enhancer" and r.levelno == logging.WARNING]


# -- what a request carries ---------------------------------------------------------------------------
def test_request_carries_grounding_newest_history_input_and_the_configs_model_and_prompts(api, tmp_path):
    cfg = config(tmp_path, model="claude-test-model-7", max_tokens=123, max_history=2,
                 system_prompt="SYSTEM: write video prompts (test marker 41)",
                 grounding_prompt="GROUNDING: describe the subject (test marker 42)")
    enhancer = PromptEnhancer(cfg, api_key=KEY)
    enhancer.session.set_grounding("a red fox on a snowy ridge")
    for p in ("oldest prompt one", "middle prompt two", "newest prompt three"):
        enhancer.session.accept(p)
    api.answer_text("the red fox leaps over a rock to the left")

    result = enhancer.enhance("it jumps")

    assert result == Enhanced(text="the red fox leaps over a rock to the left", source="ai", error=None,
                              input_tokens=10, output_tokens=5, cost_usd=result.cost_usd, ms=result.ms)
    [request] = api.requests
    assert request["path"] == "/v1/messages" and request["method"] == "POST"
    body = request["json"]
    assert body["model"] == "claude-test-model-7"
    assert body["max_tokens"] == 123
    assert body["system"] == "SYSTEM: write video prompts (test marker 41)"
    text = user_text(request)
    assert "a red fox on a snowy ridge" in text and "it jumps" in text
    assert "oldest prompt one" not in text                                   # only the newest two
    assert text.index("middle prompt two") < text.index("newest prompt three") < text.index("it jumps")
    assert text.index("a red fox on a snowy ridge") < text.index("middle prompt two")
    assert "<grounding>" in text and "<history>" in text and "<input>" in text   # clearly labelled
    assert enhancer.session.history == ["oldest prompt one", "middle prompt two", "newest prompt three"]  # enhance keeps nothing


def test_grounding_kind_uses_the_grounding_prompt_and_sends_no_history(api, tmp_path):
    cfg = config(tmp_path, system_prompt="SYSTEM marker", grounding_prompt="GROUNDING marker 9")
    enhancer = PromptEnhancer(cfg, api_key=KEY)
    enhancer.session.accept("an accepted prompt that must not be sent")
    api.answer_text("A red fox with a white-tipped tail stands on a snowy ridge under a grey sky.")

    result = enhancer.enhance("a fox in the snow", kind="grounding")

    assert (result.source, result.text) == ("ai", "A red fox with a white-tipped tail stands on a snowy ridge under a grey sky.")
    body = api.requests[0]["json"]
    assert body["system"] == "GROUNDING marker 9"
    assert "a fox in the snow" in user_text(api.requests[0])
    assert "must not be sent" not in user_text(api.requests[0])
    with pytest.raises(ValueError, match="kind"):
        enhancer.enhance("x", kind="story")


def test_extra_request_parameters_from_the_config_are_sent(api, tmp_path):
    cfg = config(tmp_path, extra_request={"metadata": {"user_id": "tester-5"}, "stop_sequences": ["###"]})
    PromptEnhancer(cfg, api_key=KEY).enhance("it turns")
    body = api.requests[0]["json"]
    assert body["metadata"] == {"user_id": "tester-5"} and body["stop_sequences"] == ["###"]
    assert "thinking" not in body                       # the temp config replaced the default's extras


def test_the_default_config_sends_its_thinking_setting(api):
    PromptEnhancer(api_key=KEY).enhance("it turns")
    body = api.requests[0]["json"]
    assert body["model"] == "claude-sonnet-5-5"
    assert body["thinking"] == {"type": "between_tools"}
    assert body["max_tokens"] == 400


def test_accept_and_revert_going_back_in_time(api, tmp_path):
    enhancer = PromptEnhancer(config(tmp_path, max_history=8), api_key=KEY)
    session = enhancer.session
    session.set_grounding("a lighthouse on a cliff")
    session.accept("kept before the mark")
    mark = session.mark()
    assert mark == 1
    session.accept("first after the mark")
    session.accept("second after the mark")
    enhancer.enhance("waves rise")
    assert "second after the mark" in user_text(api.requests[-1])

    session.revert(mark)
    enhancer.enhance("the lamp turns")

    text = user_text(api.requests[-1])
    assert "first after the mark" not in text and "second after the mark" not in text
    assert "kept before the mark" in text and "a lighthouse on a cliff" in text and "the lamp turns" in text
    assert session.history == ["kept before the mark"]
    with pytest.raises(ValueError):
        session.revert(5)
    session.revert(0)
    assert session.history == []


# -- fallbacks -------------------------------------------------------------------------------------------
FALLBACKS = {
    # name: (config changes, script, expected error, requests the fake sees)
    "timeout": (dict(timeout_s=0.2, max_retries=1), lambda api: api.answer_delay(30, times=4),
                "AI enhancement timed out after 0.2 s (tried 2 times)", 2),
    "http-500": (dict(max_retries=2), lambda api: api.answer_error(500, "Internal server error", retry_after=0.001, times=5),
                 "AI enhancement failed (HTTP 500: Internal server error)", 3),
    "http-429": (dict(max_retries=2), lambda api: api.answer_error(429, "Number of requests has exceeded your rate limit",
                                                                   retry_after=0.001, times=5),
                 "AI enhancement was rate-limited (HTTP 429) after 2 retries", 3),
    "http-429-one-retry": (dict(max_retries=1), lambda api: api.answer_error(429, "slow down", retry_after=0.001, times=5),
                           "AI enhancement was rate-limited (HTTP 429) after 1 retry", 2),
    "http-400": (dict(max_retries=2), lambda api: api.answer_error(400, "max_tokens: must be positive", times=5),
                 "AI enhancement failed (HTTP 400: max_tokens: must be positive)", 1),
    "malformed-json": (dict(), lambda api: api.answer_raw(200, b'{"type": "message", "content": [tru'),
                       "AI enhancement returned a malformed answer (not valid JSON)", 1),
    "not-a-message": (dict(), lambda api: api.answer_raw(200, b'{"content": "just a string"}'),
                      "AI enhancement returned a malformed answer (its content is not a list)", 1),
    "html": (dict(), lambda api: api.answer_raw(200, b"<html>proxy error</html>", content_type="text/html"),
             "AI enhancement returned a malformed answer (not a Messages response)", 1),
    "empty-content": (dict(), lambda api: api.answer_content([]), "AI enhancement returned no text", 1),
    "blank-text": (dict(), lambda api: api.answer_text("   \n "), "AI enhancement returned no text", 1),
    "tool-use-only": (dict(), lambda api: api.answer_tool("plan", {"a": 1}), "AI enhancement returned no text", 1),
}


@pytest.mark.parametrize("case", FALLBACKS, ids=list(FALLBACKS))
def test_trouble_falls_back_to_the_raw_prompt_with_one_line(api, tmp_path, caplog, case):
    changes, script, expected, requests = FALLBACKS[case]
    enhancer = PromptEnhancer(config(tmp_path, **changes), api_key=KEY)
    script(api)
    caplog.set_level(logging.INFO, logger="studio.enhancer")

    result = enhancer.enhance("  it glides through clouds")

    assert result.text == "  it glides through clouds" and result.source == "raw"
    assert result.error == expected + FALLBACK
    assert warnings_of(caplog) == [expected + FALLBACK]
    assert len(api.messages_requests()) == requests


def test_an_input_over_max_input_chars_falls_back_and_sends_nothing(api, tmp_path, caplog):
    enhancer = PromptEnhancer(config(tmp_path, max_input_chars=50), api_key=KEY)
    caplog.set_level(logging.INFO, logger="studio.enhancer")
    fine = "x" * 50
    long = "y" * 51
    assert enhancer.enhance(long) == Enhanced(
        text=long, source="raw",
        error="AI enhancement was skipped: the input has 51 characters, more than max_input_chars (50)" + FALLBACK)
    assert api.requests == []
    assert enhancer.enhance(fine).source == "ai" and len(api.requests) == 1


def test_a_blank_input_is_used_as_written_without_a_request(api):
    assert PromptEnhancer(api_key=KEY).enhance("   ") == Enhanced(text="   ", source="raw")
    assert api.requests == []


def test_no_connection_falls_back(tmp_path, caplog):
    """ANTHROPIC_BASE_URL stays at a dead local port: the connection is refused."""
    enhancer = PromptEnhancer(config(tmp_path, max_retries=0), api_key=KEY)
    result = enhancer.enhance("it spins")
    assert result.source == "raw" and result.text == "it spins"
    assert result.error.startswith("AI enhancement could not reach the API") and result.error.endswith(FALLBACK)


# -- no key, --no-ai -------------------------------------------------------------------------------------
def test_no_key_gives_one_notice_and_verbatim_prompts(api, caplog):
    caplog.set_level(logging.DEBUG)
    enhancer = PromptEnhancer()
    assert enhancer.available is False
    assert enhancer.notice == "ANTHROPIC_API_KEY is not set: prompts are used as written"
    assert enhancer.enhance("it glides") == Enhanced(text="it glides", source="raw", error=None)
    assert enhancer.enhance("it dives", kind="grounding") == Enhanced(text="it dives", source="raw")
    assert api.requests == []
    with pytest.raises(EnhancerError, match="ANTHROPIC_API_KEY is not set"):
        enhancer.call(model="m", max_tokens=5, messages=[])
    assert api.requests == []
    assert warnings_of(caplog) == []


def test_the_key_comes_from_anthropic_api_key_only(api, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "sk-ant-token-OTHER999")
    assert PromptEnhancer().available is False                       # an auth token is not the key
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    enhancer = PromptEnhancer()
    assert enhancer.available is True and enhancer.notice is None
    assert enhancer.enhance("it glides").source == "ai"
    assert FakeMessagesAPI.key_of(api.requests[0]) == KEY
    assert "sk-ant-token-OTHER999" not in repr(api.requests[0]["headers"])


def test_disabled_sends_nothing_even_with_a_key(api, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    enhancer = PromptEnhancer(enabled=False)
    assert enhancer.available is False
    assert enhancer.notice == "AI enhancement is off (--no-ai): prompts are used as written"
    assert enhancer.enhance("it glides") == Enhanced(text="it glides", source="raw", error=None)
    assert api.requests == []


def test_base_url_comes_from_the_environment(monkeypatch):
    with FakeMessagesAPI() as elsewhere, FakeMessagesAPI() as here:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", here.url)
        here.answer_text("from the env's server")
        assert PromptEnhancer(api_key=KEY).enhance("x").text == "from the env's server"
        assert len(here.requests) == 1 and elsewhere.requests == []


# -- the key never leaks ---------------------------------------------------------------------------------
def test_the_key_reaches_only_the_credential_header(api, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)                  # every logger: studio, anthropic, httpx2, httpcore2
    enhancer = PromptEnhancer(config(tmp_path, max_retries=1, timeout_s=0.2), api_key=KEY)
    api.answer_text("fine")
    api.answer_error(401, f"invalid x-api-key: {KEY}")                    # a server echoing the key back
    api.answer_error(500, f"upstream said {KEY}", retry_after=0.001, times=2)
    api.answer_error(429, "slow", retry_after=0.001, times=2)
    api.answer_raw(200, f'{{"broken {KEY}'.encode())
    api.answer_delay(30, times=2)
    results = [enhancer.enhance(f"input {i}") for i in range(6)]
    api.answer_error(403, f"key {KEY} may not do this")
    with pytest.raises(EnhancerError) as err:
        enhancer.call(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])

    assert [r.source for r in results] == ["ai", "raw", "raw", "raw", "raw", "raw"]
    assert results[1].error == "AI enhancement failed (HTTP 401: invalid x-api-key: [key])" + FALLBACK
    assert str(err.value) == "AI request failed (HTTP 403: key [key] may not do this)"
    assert err.value.__cause__ is None and err.value.__context__ is None
    formatter = logging.Formatter("%(name)s %(message)s")
    texts = [formatter.format(r) for r in caplog.records]                # message, args and any traceback
    assert any(t.startswith("anthropic") for t in texts) and any(t.startswith("httpx") for t in texts)
    for text in texts + [repr(r) for r in results] + [str(err.value), repr(err.value), repr(enhancer)]:
        assert KEY not in text
    assert len(api.requests) == 10          # 1 + 1 + 2 (500, one retry) + 2 (429) + 1 + 2 (timeouts) + 1 (call)
    # anthropic 2.16 sends an API key as "authorization: Bearer ..." (older SDKs: x-api-key)
    assert all(FakeMessagesAPI.key_of(r) == KEY for r in api.requests)
    credential = "x-api-key" if "x-api-key" in api.requests[0]["headers"] else "authorization"
    assert all(KEY not in r["body"].decode() for r in api.requests)
    assert all(KEY not in v for r in api.requests for k, v in r["headers"].items() if k != credential)


# -- usage and cost --------------------------------------------------------------------------------------
def test_usage_and_cost_from_the_configs_prices(api, tmp_path, caplog):
    enhancer = PromptEnhancer(config(tmp_path, input_usd_per_mtok=3.0, output_usd_per_mtok=15.0), api_key=KEY)
    caplog.set_level(logging.INFO, logger="studio.enhancer")
    api.answer_text("the glider banks right through grey clouds", input_tokens=412, output_tokens=96)

    result = enhancer.enhance("it glides through clouds")

    # 412 * 3 / 1e6 + 96 * 15 / 1e6 = 0.001236 + 0.00144
    assert (result.input_tokens, result.output_tokens) == (412, 96)
    assert result.cost_usd == pytest.approx(0.002676)
    assert result.ms > 0
    [line] = [r.getMessage() for r in caplog.records if r.name == "studio.enhancer" and r.levelno == logging.INFO]
    assert re.fullmatch(r"enhanced in \d+ ms: 412 in \+ 96 out tokens, ~\$0\.0027", line), line


def test_session_reads_and_counts_plain_dicts_too(tmp_path):
    session = EnhancerSession(config(tmp_path, input_usd_per_mtok=2.0, output_usd_per_mtok=10.0))
    message = {"content": [{"type": "thinking", "thinking": "hm"},
                           {"type": "text", "text": '  "the boat drifts\n left"  '}],
               "usage": {"input_tokens": 1000, "output_tokens": 500}}
    assert session.read(message) == "the boat drifts left"
    assert session.usage(message) == (1000, 500, pytest.approx(0.007))    # 0.002 + 0.005
    assert session.usage("not a message") == (0, 0, 0.0)
    for bad, what in (("text", "malformed"), ({"content": []}, "no text"), ({"content": {"a": 1}}, "malformed"),
                      ({"content": [{"type": "text", "text": "no"}], "stop_reason": "refusal"}, "declined")):
        with pytest.raises(ValueError, match=what):
            session.read(bad)


def test_call_passes_a_raw_request_through_and_returns_the_tool_use(api):
    enhancer = PromptEnhancer(api_key=KEY)
    api.answer_tool("make_plan", {"scenes": ["a", "b"]}, input_tokens=30, output_tokens=7)
    tools = [{"name": "make_plan", "description": "d", "input_schema": {"type": "object"}}]
    message = enhancer.call(model="claude-planner", max_tokens=50, tools=tools,
                            messages=[{"role": "user", "content": "plan it"}])
    [block] = [b for b in message.content if b.type == "tool_use"]
    assert (block.name, block.input) == ("make_plan", {"scenes": ["a", "b"]})
    body = api.requests[0]["json"]
    assert body["tools"] == tools and body["model"] == "claude-planner"
    assert "thinking" not in body                        # call() sends exactly what it is given


# -- the async twin --------------------------------------------------------------------------------------
def script_for_both(api):
    """Exactly what five enhancements consume with max_retries 1 (two tries each on trouble)."""
    api.answer_text("the fox runs left across the snow", input_tokens=412, output_tokens=96)
    api.answer_error(500, "Internal server error", retry_after=0.001, times=2)
    api.answer_error(429, "slow", retry_after=0.001, times=2)
    api.answer_content([])
    api.answer_delay(30, times=2)


INPUTS = ("it runs", "it stops", "it sits", "it sleeps", "it wakes")


def outcome(r: Enhanced) -> tuple:
    return (r.text, r.source, r.error, r.input_tokens, r.output_tokens, r.cost_usd)


def test_the_async_enhancer_gives_the_same_results(api, tmp_path):
    cfg = config(tmp_path, max_retries=1, timeout_s=0.2)
    sync = PromptEnhancer(cfg, api_key=KEY)
    sync.session.set_grounding("a red fox in snow")
    sync.session.accept("the fox sits")
    script_for_both(api)
    expected = [outcome(sync.enhance(text)) for text in INPUTS]
    sync_bodies = [r["json"] for r in api.requests]

    api.requests.clear()
    script_for_both(api)
    enhancer = AsyncPromptEnhancer(cfg, api_key=KEY)
    enhancer.session.set_grounding("a red fox in snow")
    enhancer.session.accept("the fox sits")

    async def main():
        results = [outcome(await enhancer.enhance(text)) for text in INPUTS]
        await enhancer.aclose()
        return results

    got = asyncio.run(main())
    assert got == expected
    assert expected[0] == ("the fox runs left across the snow", "ai", None, 412, 96, pytest.approx(0.001784))
    assert [e[2] for e in expected[1:]] == [
        "AI enhancement failed (HTTP 500: Internal server error)" + FALLBACK,
        "AI enhancement was rate-limited (HTTP 429) after 1 retry" + FALLBACK,
        "AI enhancement returned no text" + FALLBACK,
        "AI enhancement timed out after 0.2 s (tried 2 times)" + FALLBACK]
    assert [e[:2] for e in expected[1:]] == [(t, "raw") for t in INPUTS[1:]]
    assert len(sync_bodies) == 8 and api.pending() == 0
    assert [r["json"] for r in api.requests] == sync_bodies
    assert "a red fox in snow" in user_text(api.requests[0]) and "the fox sits" in user_text(api.requests[0])
    assert all(FakeMessagesAPI.key_of(r) == KEY for r in api.requests)


def test_the_async_enhancer_survives_a_new_event_loop_and_honours_no_key(api):
    enhancer = AsyncPromptEnhancer(api_key=KEY)
    api.answer_text("one")
    api.answer_text("two")
    assert asyncio.run(enhancer.enhance("a")).text == "one"
    assert asyncio.run(enhancer.enhance("b")).text == "two"            # a second loop, a fresh client
    off = AsyncPromptEnhancer()
    assert off.notice == "ANTHROPIC_API_KEY is not set: prompts are used as written"
    assert asyncio.run(off.enhance("c")) == Enhanced(text="c", source="raw")
    assert len(api.requests) == 2


# -- config mistakes ------------------------------------------------------------------------------------
def test_the_default_config_is_the_documented_one():
    cfg = EnhancerConfig.load()
    assert (cfg.model, cfg.timeout_s, cfg.max_retries, cfg.max_tokens, cfg.max_input_chars, cfg.max_history) == \
        ("claude-sonnet-5-5", 20.0, 2, 400, 2000, 8)
    assert (cfg.input_usd_per_mtok, cfg.output_usd_per_mtok) == (2.0, 10.0)
    for prompt in (cfg.system_prompt, cfg.grounding_prompt):
        assert "begins to" in prompt and "prompt only" in prompt       # the rules are spelled out
    assert "Motion" in cfg.system_prompt and "Change" in cfg.system_prompt and "Grounding" in cfg.system_prompt


@pytest.mark.parametrize("changes, named", [
    (dict(modle="claude"), "modle"),
    (dict(timeout_s="fast"), "timeout_s"),
    (dict(timeout_s=0), "timeout_s"),
    (dict(max_retries=-1), "max_retries"),
    (dict(max_history=2.5), "max_history"),
    (dict(max_tokens=True), "max_tokens"),
    (dict(model=5), "model"),
    (dict(system_prompt=""), "system_prompt"),
    (dict(input_usd_per_mtok="3"), "input_usd_per_mtok"),
    (dict(extra_request=["thinking"]), "extra_request"),
    (dict(extra_request={"model": "x"}), "may not set model"),
    (dict(extra_request={"bogus_param": 1}), "bogus_param"),
])
def test_config_mistakes_are_one_sentence_naming_the_key(tmp_path, changes, named):
    path = write_config(tmp_path, **changes)
    with pytest.raises(EnhancerError) as err:
        EnhancerConfig.load(path)
    message = str(err.value)
    assert named in message and str(path) in message and "\n" not in message
    assert isinstance(err.value, UserError)


def test_a_missing_key_a_missing_file_and_bad_yaml(tmp_path):
    data = default_settings()
    del data["max_history"]
    (tmp_path / "partial.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(EnhancerError, match="missing key.*max_history"):
        EnhancerConfig.load(tmp_path / "partial.yaml")
    with pytest.raises(EnhancerError) as err:
        EnhancerConfig.load(tmp_path / "nosuch.yaml")
    assert "nosuch.yaml" in str(err.value) and "does not exist" in str(err.value)
    (tmp_path / "bad.yaml").write_text("model: [claude\n")
    with pytest.raises(EnhancerError, match="not valid YAML"):
        EnhancerConfig.load(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- model\n")
    with pytest.raises(EnhancerError, match="mapping"):
        EnhancerConfig.load(tmp_path / "list.yaml")
