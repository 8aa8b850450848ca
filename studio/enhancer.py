"""The AI prompt enhancer: a short input ("it glides through clouds") becomes a concise
prompt for the text-to-video model, written against the grounding and the history.

The session (`EnhancerSession`) holds the conversation state and nothing else: the
grounding (the subject and the setting, itself enhanced once with kind="grounding") and the
prompts the user accepted, oldest first. It builds each Messages API request (the user
message carries the grounding, the newest `max_history` accepted prompts and the new input,
each in its own labelled section) and reads each answer. It never talks to the network.

`PromptEnhancer` is the synchronous transport (`anthropic.Anthropic`: the terminal, the
planner); `server.enhance.AsyncPromptEnhancer` is the same with `anthropic.AsyncAnthropic`
for the live server. Everything but the one awaited call lives in `BaseEnhancer` here: the
fallback rules, the one-line errors, the cost, the log lines.

The rules:

- The key comes from `ANTHROPIC_API_KEY` only (or `api_key=`); the SDK reads
  `ANTHROPIC_BASE_URL` itself. No key, or `enabled=False` (--no-ai): `available` is False,
  `notice` says so in one line, and `enhance()` returns every prompt as written, sending
  nothing.
- `enhance()` never raises for API trouble. A timeout, an HTTP error (429 and 5xx after the
  SDK's own `max_retries` retries), a connection failure, a malformed or empty answer, or an
  input over `max_input_chars` gives back the raw input (`source="raw"`) with one `error`
  line, also logged as a warning on the "studio.enhancer" logger.
- `enhance()` changes no state: the caller decides what to keep (`set_grounding`,
  `accept`, `mark` / `revert` for going back in time).
- The key never reaches a log line, an error, an event or a file: every line this module
  writes is scrubbed of it (and of anything shaped like an Anthropic key), and SDK
  exceptions are never chained into ours.
- Each call logs its token usage and estimated cost (INFO on "studio.enhancer", e.g.
  "enhanced in 840 ms: 412 in + 96 out tokens, ~$0.0027"); `Enhanced` carries them too.

The model, the system prompts, the timeout, the retries and the limits live in
`configs/ai/enhancer.yaml` (read strictly: every key checked), never in code.

No event loop runs here (the async transport lives in `server/`).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import yaml

from streaming.errors import UserError, one_line

log = logging.getLogger("studio.enhancer")

DEFAULT_CONFIG = Path(__file__).parents[1] / "configs" / "ai" / "enhancer.yaml"
KINDS = ("prompt", "grounding")
FALLBACK = "using the prompt as written"
NO_KEY_NOTICE = "ANTHROPIC_API_KEY is not set: prompts are used as written"
OFF_NOTICE = "AI enhancement is off (--no-ai): prompts are used as written"
# request keys the session owns; `extra_request` may not set them
OWNED_KEYS = ("model", "max_tokens", "system", "messages", "stream")
# what counts as API trouble (never a traceback from enhance()); a JSONDecodeError is a ValueError
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (anthropic.AnthropicError, ValueError)
_KEY_SHAPE = re.compile(r"sk-ant-[A-Za-z0-9_\-]+")
_DETAIL_CHARS = 200


class EnhancerError(UserError):
    """An enhancer config that cannot be used, or a failed raw `call()`; one sentence."""


# -- the config ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnhancerConfig:
    model: str
    system_prompt: str            # the system prompt for kind="prompt"
    grounding_prompt: str         # the system prompt for kind="grounding"
    timeout_s: float              # per attempt (the SDK retries a timed-out attempt too)
    max_retries: int              # the SDK's own bounded retries (429, 5xx, timeouts)
    max_tokens: int
    max_input_chars: int          # a longer input falls back, nothing sent
    max_history: int              # accepted prompts sent as context (the newest)
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    # further Messages API parameters sent with every enhancement request (e.g. `thinking`,
    # `output_config`); optional in the file
    extra_request: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "EnhancerConfig":
        """Read a config file (default: configs/ai/enhancer.yaml beside the package); every key is
        checked and a mistake is an `EnhancerError` naming the file and the key."""
        path = Path(path) if path is not None else DEFAULT_CONFIG
        source = str(path)
        if not path.is_file():
            raise EnhancerError(f"enhancer config file {source} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark is not None else ""
            raise EnhancerError(f"enhancer config {source} is not valid YAML{at}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise EnhancerError(f"enhancer config {source} cannot be read ({type(exc).__name__})") from None
        return cls.from_mapping(data, source)

    @classmethod
    def from_mapping(cls, data: Any, source: str = "enhancer config") -> "EnhancerConfig":
        if not isinstance(data, Mapping):
            raise EnhancerError(f"{source} must be a mapping of settings, not {_short(data)}")
        known = [f for f in cls.__dataclass_fields__]
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise EnhancerError(f"{source}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(known)}")
        missing = [k for k in known if k not in data and k != "extra_request"]
        if missing:
            raise EnhancerError(f"{source}: missing key(s) {', '.join(missing)}")
        where = lambda key: f"{source}: {key}"   # noqa: E731
        kwargs: dict[str, Any] = {}
        for key in ("model", "system_prompt", "grounding_prompt"):
            value = data[key]
            if not isinstance(value, str) or not value.strip():
                raise EnhancerError(f"{where(key)} must be a non-empty string, not {_short(value)}")
            kwargs[key] = value.strip()
        kwargs["timeout_s"] = _number(data["timeout_s"], where("timeout_s"), positive=True)
        for key, low in (("max_retries", 0), ("max_tokens", 1), ("max_input_chars", 1), ("max_history", 0)):
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise EnhancerError(f"{where(key)} must be a whole number of at least {low}, not {_short(value)}")
            kwargs[key] = value
        for key in ("input_usd_per_mtok", "output_usd_per_mtok"):
            kwargs[key] = _number(data[key], where(key), positive=False)
        extra = data.get("extra_request", {})
        if extra is None:
            extra = {}
        if not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra):
            raise EnhancerError(f"{where('extra_request')} must be a mapping of Messages API parameters, not {_short(extra)}")
        owned = sorted(k for k in extra if k in OWNED_KEYS)
        if owned:
            raise EnhancerError(f"{where('extra_request')} may not set {', '.join(owned)} (the enhancer sets those)")
        strange = sorted(k for k in extra if k not in _create_parameters())
        if strange:
            raise EnhancerError(f"{where('extra_request')}: {', '.join(strange)} is not a Messages API parameter "
                                "this SDK knows")
        kwargs["extra_request"] = dict(extra)
        return cls(**kwargs)


def _create_parameters() -> set[str]:
    """The parameters `messages.create` takes that a config may set."""
    names = set(inspect.signature(anthropic.resources.messages.Messages.create).parameters)
    return names - {"self", "timeout", "extra_headers", "extra_query", "extra_body", *OWNED_KEYS}


def _number(value: Any, where: str, *, positive: bool) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        need = "a number above 0" if positive else "a number of at least 0"
        raise EnhancerError(f"{where} must be {need}, not {_short(value)}")
    return float(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- results and the conversation state --------------------------------------------------------------
@dataclass(frozen=True)
class Enhanced:
    text: str                     # what to use: the enhanced text, or the raw input on fallback
    source: str                   # "ai" | "raw"
    error: str | None = None      # one line when it fell back because of trouble (None for --no-ai / no key)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    ms: float = 0.0


def _get(obj: Any, name: str) -> Any:
    """A field of an SDK object or of the same thing as a plain dict."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


class EnhancerSession:
    """The conversation state, transport-free: grounding + accepted history; builds requests,
    reads answers."""

    def __init__(self, config: EnhancerConfig):
        self.config = config
        self.grounding: str | None = None
        self.history: list[str] = []          # accepted processed prompts, oldest first

    # the state
    def set_grounding(self, text: str) -> None:
        text = (text or "").strip()
        self.grounding = text or None

    def accept(self, processed: str) -> None:
        """A prompt the user accepted joins the history."""
        self.history.append(processed)

    def mark(self) -> int:
        """A point to revert to (the history's length now)."""
        return len(self.history)

    def revert(self, mark: int) -> None:
        """The history back to what it was at `mark` (going back in time)."""
        if isinstance(mark, bool) or not isinstance(mark, int) or not 0 <= mark <= len(self.history):
            raise ValueError(f"no such point in the history: {mark!r} (it has {len(self.history)} prompts)")
        del self.history[mark:]

    def recent(self) -> list[str]:
        """The accepted prompts sent as context: the newest `max_history`, oldest first."""
        n = self.config.max_history
        return self.history[-n:] if n > 0 else []

    # the wire
    def request(self, text: str, kind: str = "prompt") -> dict:
        """Keyword arguments for `client.messages.create(**kw)`."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        text = text.strip()
        if kind == "grounding":
            system = self.config.grounding_prompt
            content = ("The subject and setting to describe, as the user wrote them:\n"
                       f"<input>\n{text}\n</input>\n\n"
                       "Write the grounding prompt.")
        else:
            system = self.config.system_prompt
            recent = self.recent()
            history = "\n".join(f"{i}. {p}" for i, p in enumerate(recent, 1)) if recent else "(none yet)"
            content = ("The grounding (the subject and the setting):\n"
                       f"<grounding>\n{self.grounding or '(none given)'}\n</grounding>\n\n"
                       "The prompts accepted so far, oldest first (the last one is on screen now):\n"
                       f"<history>\n{history}\n</history>\n\n"
                       "The new input, what should happen next:\n"
                       f"<input>\n{text}\n</input>\n\n"
                       "Write the next prompt.")
        return {**self.config.extra_request,
                "model": self.config.model,
                "max_tokens": self.config.max_tokens,
                "system": system,
                "messages": [{"role": "user", "content": content}]}

    def read(self, message: Any) -> str:
        """The text of a Messages API response (an SDK `Message` or the same as a dict), on one
        line. Raises ValueError, its message a fragment such as "returned no text", for an
        empty answer, one without a text block, a refusal or anything malformed."""
        content = _get(message, "content")
        if isinstance(message, (str, bytes)) or content is None:
            raise ValueError("returned a malformed answer (not a Messages response)")
        if not isinstance(content, (list, tuple)):
            raise ValueError("returned a malformed answer (its content is not a list)")
        if _get(message, "stop_reason") == "refusal":
            raise ValueError("was declined by the model (a refusal)")
        texts = [_get(block, "text") for block in content if _get(block, "type") == "text"]
        text = " ".join(" ".join(t.split()) for t in texts if isinstance(t, str) and t.strip())
        text = _unquote(text)
        if not text:
            raise ValueError("returned no text")
        return text

    def usage(self, message: Any) -> tuple[int, int, float]:
        """Input tokens, output tokens and the estimated cost in USD (the config's prices)."""
        usage = _get(message, "usage") if not isinstance(message, (str, bytes)) else None
        tokens_in = _count(_get(usage, "input_tokens")) if usage is not None else 0
        tokens_out = _count(_get(usage, "output_tokens")) if usage is not None else 0
        return tokens_in, tokens_out, self.cost(tokens_in, tokens_out)

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.config.input_usd_per_mtok + tokens_out * self.config.output_usd_per_mtok) / 1e6


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _unquote(text: str) -> str:
    """Drop one pair of quotes around the whole answer (a model habit)."""
    for a, b in (('"', '"'), ("\u201c", "\u201d"), ("'", "'")):
        if len(text) >= 2 and text.startswith(a) and text.endswith(b) and a not in text[1:-1] and b not in text[1:-1]:
            return text[1:-1].strip()
    return text


# -- what both transports share ---------------------------------------------------------------------
@dataclass
class Attempt:
    """One enhancement on its way: what was asked and when."""
    text: str
    kind: str
    request: dict
    started: float


class BaseEnhancer:
    """Everything but the transport: availability, the fallback rules, the one-line errors, the
    cost and the log lines. Subclasses add the client and the (a)waited call."""

    def __init__(self, config: EnhancerConfig | None = None, *, api_key: str | None = None, enabled: bool = True):
        self.config = config if config is not None else EnhancerConfig.load()
        self.session = EnhancerSession(self.config)
        key = os.environ.get("ANTHROPIC_API_KEY") if api_key is None else api_key
        self._secret = (key or "").strip() or None
        if not enabled:
            self.available, self.notice = False, OFF_NOTICE
        elif self._secret is None:
            self.available, self.notice = False, NO_KEY_NOTICE
        else:
            self.available, self.notice = True, None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} model={self.config.model!r} available={self.available}>"

    def _client_options(self) -> dict[str, Any]:
        """The SDK client's arguments. The key is passed explicitly, so the SDK consults no other
        credential source; base_url None lets it read ANTHROPIC_BASE_URL."""
        return {"api_key": self._secret, "base_url": None, "timeout": self.config.timeout_s,
                "max_retries": self.config.max_retries}

    # steps of enhance(), around the transport's one call
    def _begin(self, text: str, kind: str) -> Enhanced | Attempt:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if not self.available or not text.strip():
            return Enhanced(text=text, source="raw")
        if len(text) > self.config.max_input_chars:
            return self._fallback(text, f"was skipped: the input has {len(text)} characters, more than "
                                        f"max_input_chars ({self.config.max_input_chars})", 0.0)
        return Attempt(text, kind, self.session.request(text, kind), time.perf_counter())

    def _done(self, attempt: Attempt, message: Any) -> Enhanced:
        ms = (time.perf_counter() - attempt.started) * 1000
        tokens_in, tokens_out, cost = self.session.usage(message)
        try:
            text = self.session.read(message)
        except ValueError as exc:
            return self._fallback(attempt.text, str(exc), ms, tokens_in, tokens_out, cost)
        what = "enhanced the grounding" if attempt.kind == "grounding" else "enhanced"
        log.info("%s", self._scrub(f"{what} in {ms:.0f} ms: {tokens_in} in + {tokens_out} out tokens, ~${cost:.4f}"))
        return Enhanced(text=text, source="ai", input_tokens=tokens_in, output_tokens=tokens_out, cost_usd=cost, ms=ms)

    def _failed(self, attempt: Attempt, exc: BaseException) -> Enhanced:
        ms = (time.perf_counter() - attempt.started) * 1000
        return self._fallback(attempt.text, self._describe(exc), ms)

    def _fallback(self, text: str, what: str, ms: float, tokens_in: int = 0, tokens_out: int = 0,
                  cost: float = 0.0) -> Enhanced:
        error = self._scrub(f"AI enhancement {what}; {FALLBACK}")
        log.warning("%s", error)
        return Enhanced(text=text, source="raw", error=error, input_tokens=tokens_in, output_tokens=tokens_out,
                        cost_usd=cost, ms=ms)

    # steps of call(), the raw request
    def _call_unavailable(self) -> EnhancerError:
        return EnhancerError(self.notice or NO_KEY_NOTICE)

    def _call_done(self, started: float, message: Any) -> Any:
        ms = (time.perf_counter() - started) * 1000
        tokens_in, tokens_out, cost = self.session.usage(message)
        log.info("%s", self._scrub(f"AI request in {ms:.0f} ms: {tokens_in} in + {tokens_out} out tokens, ~${cost:.4f}"))
        return message

    def _call_failed(self, exc: BaseException) -> EnhancerError:
        error = self._scrub(f"AI request {self._describe(exc)}")
        log.warning("%s", error)
        return EnhancerError(error)

    # the one-liners
    def _describe(self, exc: BaseException) -> str:
        """What went wrong, as the end of "AI enhancement ..." (no key, one line)."""
        retries = self.config.max_retries
        if isinstance(exc, anthropic.APITimeoutError):
            tries = f" (tried {retries + 1} times)" if retries else ""
            return f"timed out after {self.config.timeout_s:g} s{tries}"
        if isinstance(exc, anthropic.RateLimitError):
            after = f" after {retries} {'retry' if retries == 1 else 'retries'}" if retries else ""
            return f"was rate-limited (HTTP 429){after}"
        if isinstance(exc, anthropic.APIStatusError):
            return f"failed (HTTP {exc.status_code}: {_status_detail(exc)})"
        if isinstance(exc, anthropic.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            return "could not reach the API" + (f" ({_clip(one_line(cause))})" if cause is not None else "")
        if isinstance(exc, anthropic.APIResponseValidationError):
            return "returned a malformed answer (it does not match the Messages API)"
        if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):   # the SDK lets json's own errors through
            return "returned a malformed answer (not valid JSON)"
        if isinstance(exc, anthropic.AnthropicError):
            return f"failed ({type(exc).__name__}: {_clip(one_line(exc))})"
        return f"failed ({type(exc).__name__})"

    def _scrub(self, line: str) -> str:
        """One line, with the key (and anything shaped like an Anthropic key) taken out."""
        line = " ".join(str(line).split())
        if self._secret:
            line = line.replace(self._secret, "[key]")
        return _KEY_SHAPE.sub("[key]", line)


def _status_detail(exc: Any) -> str:
    """The API's own error message from Anthropic's error JSON, else the HTTP reason."""
    body = getattr(exc, "body", None)
    error = body.get("error") if isinstance(body, Mapping) else None
    message = error.get("message") if isinstance(error, Mapping) else None
    if isinstance(message, str) and message.strip():
        return _clip(" ".join(message.split()))
    response = getattr(exc, "response", None)
    reason = getattr(response, "reason_phrase", None)
    return reason if isinstance(reason, str) and reason else "no details"


def _clip(text: str) -> str:
    return text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS - 3] + "..."


# -- the synchronous transport ----------------------------------------------------------------------
class PromptEnhancer(BaseEnhancer):
    """Synchronous transport (the terminal and the planner): anthropic.Anthropic."""

    def __init__(self, config: EnhancerConfig | None = None, *, api_key: str | None = None, enabled: bool = True):
        super().__init__(config, api_key=api_key, enabled=enabled)
        self._client = anthropic.Anthropic(**self._client_options()) if self.available else None

    def enhance(self, text: str, kind: str = "prompt") -> Enhanced:
        """The enhanced prompt, or the raw one with an error line; never raises for API trouble."""
        attempt = self._begin(text, kind)
        if isinstance(attempt, Enhanced):
            return attempt
        try:
            message = self._client.messages.create(**attempt.request)
        except TRANSPORT_ERRORS as exc:
            return self._failed(attempt, exc)
        return self._done(attempt, message)

    def call(self, **request: Any) -> Any:
        """One raw `messages.create` (the planner, with tools). API trouble raises EnhancerError
        with a key-free line (the SDK's exception is not chained)."""
        if self._client is None:
            raise self._call_unavailable()
        started = time.perf_counter()
        try:
            message = self._client.messages.create(**request)
        except TRANSPORT_ERRORS as exc:
            error = self._call_failed(exc)
        else:
            return self._call_done(started, message)
        raise error

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
