"""Limits: how much one peer may ask of the server, so a loop gone wrong (or a stranger) cannot
drown the show. Nothing here ever cuts a connection: what is over a limit is answered with one
sentence and dropped, and a peer that behaves never notices a limit.

- Control messages: `control_per_second` (30) per peer, in bursts of up to `control_burst`
  (twice that). A peer is one data channel or WebSocket (`ControlHub.receive`), one client
  address for `POST /api/prompt` and `POST /api/command` (answered 429 with `Retry-After`),
  one sender address for OSC. A message over the limit gets an `error` event
  (`/longlive/error` for OSC) saying the limit; the connection stays open.
- Offers: `offers_per_minute` (60) per client address for `POST /api/offer` and `POST /whep`
  together, all at once if need be: 429 with `Retry-After` and a sentence.
- Bodies (256 KiB, `server.app.MAX_BODY_BYTES`), prompts (2000 characters,
  `server.protocol.MAX_PROMPT_CHARS`), control messages (64 KiB) and viewers (`--max-viewers`)
  are limited where they are read.

Every bucket runs on an injected clock (`Limits.clock`, monotonic seconds), so tests never
depend on the wall clock. 0 turns a rate off. Behind a reverse proxy every client has the
proxy's address: raise the per-address rates there (`--control-rate`, `--offer-rate`).
"""

from __future__ import annotations

import collections
import math
import time
import weakref
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Hashable

from aiohttp import web

CONTROL_PER_SECOND = 30.0        # control messages a second, per peer
OFFERS_PER_MINUTE = 60           # WebRTC offers (page or WHEP) a minute, per client address
MAX_KEYS = 4096                  # addresses remembered at once (a full bucket is forgotten first)


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimit:
    """Token buckets, one per key: `rate` tokens a second, holding at most `burst`. `allow(key)`
    takes a token if there is one. Keys are addresses (strings) or, with `weak=True`, objects that
    are forgotten when they go (a control connection)."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic, *,
                 what: str = "control messages", unit: str = "a second", per: str = "connection",
                 weak: bool = False, max_keys: int = MAX_KEYS):
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs a rate above 0 and a burst of at least 1")
        self.rate, self.burst, self.clock = float(rate), float(burst), clock
        self.what, self.unit, self.per = what, unit, per
        self.max_keys = max_keys
        self._buckets: Any = weakref.WeakKeyDictionary() if weak else collections.OrderedDict()
        self.refused = 0

    def _bucket(self, key: Hashable, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            if isinstance(self._buckets, collections.OrderedDict) and len(self._buckets) >= self.max_keys:
                self._forget(now)
            self._buckets[key] = bucket
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
            if isinstance(self._buckets, collections.OrderedDict):
                self._buckets.move_to_end(key)
        return bucket

    def _forget(self, now: float) -> None:
        """Drop the buckets that have filled up again (forgetting them changes nothing), then, if
        that is not enough, the longest idle."""
        for key in [k for k, b in self._buckets.items() if b.tokens + (now - b.at) * self.rate >= self.burst]:
            del self._buckets[key]
        while len(self._buckets) >= self.max_keys:
            self._buckets.popitem(last=False)

    def allow(self, key: Hashable) -> bool:
        """Take one token for `key`; False (and nothing taken) when its bucket is empty."""
        bucket = self._bucket(key, self.clock())
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        self.refused += 1
        return False

    def retry_after(self, key: Hashable) -> int:
        """Whole seconds until `key` has a token again (at least 1), for Retry-After."""
        bucket = self._bucket(key, self.clock())
        return max(1, math.ceil((1.0 - bucket.tokens) / self.rate))

    @property
    def per_unit(self) -> float:
        return self.rate * (60.0 if self.unit == "a minute" else 1.0)

    def refusal(self, key: Hashable | None = None) -> str:
        """The sentence for a message over the limit."""
        amount = f"{self.per_unit:g} {self.unit}"
        if self.unit == "a second":
            amount += f" (bursts of {self.burst:g})"
        who = f" from {key}" if isinstance(key, str) else ""
        return f"too many {self.what}{who}: at most {amount} per {self.per}; this one was dropped"


@dataclass(frozen=True)
class Limits:
    """The rates `longlive serve` runs with (`--control-rate`, `--offer-rate`); 0 turns one off."""

    control_per_second: float = CONTROL_PER_SECOND
    control_burst: float | None = None            # None: twice the rate
    offers_per_minute: float = OFFERS_PER_MINUTE
    clock: Callable[[], float] = time.monotonic

    def _control(self, per: str, weak: bool) -> RateLimit | None:
        if self.control_per_second <= 0:
            return None
        burst = self.control_burst if self.control_burst is not None else 2 * self.control_per_second
        return RateLimit(self.control_per_second, max(1.0, burst), self.clock, per=per, weak=weak)

    def per_connection(self) -> RateLimit | None:
        """Control messages per data channel or WebSocket (ControlHub.receive)."""
        return self._control("connection", weak=True)

    def per_address(self) -> RateLimit | None:
        """Control messages per client address over HTTP (/api/prompt, /api/command)."""
        return self._control("address", weak=False)

    def per_osc_sender(self) -> RateLimit | None:
        return self._control("OSC sender", weak=False)

    def offers(self) -> RateLimit | None:
        if self.offers_per_minute <= 0:
            return None
        return RateLimit(self.offers_per_minute / 60.0, max(1.0, self.offers_per_minute), self.clock,
                         what="offers", unit="a minute", per="address")


# -- HTTP ----------------------------------------------------------------------------------------
CONTROL_PATHS = {("POST", "/api/prompt"), ("POST", "/api/command")}
OFFER_PATHS = {("POST", "/api/offer"), ("POST", "/whep")}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(limits: Limits) -> Any:
    """429 (with Retry-After and one sentence) for HTTP control messages and offers over the rates."""
    control, offers = limits.per_address(), limits.offers()

    @web.middleware
    async def rate_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
        where = (request.method, request.path)
        limit = control if where in CONTROL_PATHS else offers if where in OFFER_PATHS else None
        if limit is not None:
            key = request.remote or "?"
            if not limit.allow(key):
                return too_many(request, limit.refusal(key).replace("this one was dropped",
                                                                    f"try again in {limit.retry_after(key)} s"),
                                limit.retry_after(key))
        return await handler(request)

    return rate_limits


def too_many(request: web.Request, message: str, retry_after: int) -> web.Response:
    headers = {"Retry-After": str(retry_after)}
    if request.path.startswith("/whep"):          # a WHEP player on another origin reads it too (CORS)
        headers.update({"Access-Control-Allow-Origin": request.headers.get("Origin") or "*", "Vary": "Origin",
                        "Access-Control-Expose-Headers": "Retry-After"})
        return web.Response(status=429, text=message + "\n", content_type="text/plain", headers=headers)
    return web.json_response({"error": message}, status=429, headers=headers)
