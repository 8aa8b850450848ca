"""The prompt enhancer for the live server: `studio.enhancer`'s rules over `anthropic.AsyncAnthropic`.

Only the transport lives here: the session, the fallback rules, the one-line errors, the
cost and the log lines are `studio.enhancer.BaseEnhancer`'s. The request is awaited on the
event loop, so it never blocks the loop or the generation thread. The client is made on
first use inside the running loop (and made again if a later call runs in another loop:
an async HTTP pool belongs to the loop that opened it).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anthropic

from studio.enhancer import TRANSPORT_ERRORS, BaseEnhancer, Enhanced, EnhancerConfig


class AsyncPromptEnhancer(BaseEnhancer):
    """The same as `studio.enhancer.PromptEnhancer`, with anthropic.AsyncAnthropic."""

    def __init__(self, config: EnhancerConfig | None = None, *, api_key: str | None = None, enabled: bool = True):
        super().__init__(config, api_key=api_key, enabled=enabled)
        self._client: anthropic.AsyncAnthropic | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client_here(self) -> anthropic.AsyncAnthropic:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = anthropic.AsyncAnthropic(**self._client_options())
            self._loop = loop
        return self._client

    async def enhance(self, text: str, kind: str = "prompt") -> Enhanced:
        """The enhanced prompt, or the raw one with an error line; never raises for API trouble."""
        attempt = self._begin(text, kind)
        if isinstance(attempt, Enhanced):
            return attempt
        try:
            message = await self._client_here().messages.create(**attempt.request)
        except TRANSPORT_ERRORS as exc:
            return self._failed(attempt, exc)
        return self._done(attempt, message)

    async def call(self, **request: Any) -> Any:
        """One raw `messages.create`; API trouble raises EnhancerError with a key-free line."""
        if not self.available:
            raise self._call_unavailable()
        started = time.perf_counter()
        try:
            message = await self._client_here().messages.create(**request)
        except TRANSPORT_ERRORS as exc:
            error = self._call_failed(exc)
        else:
            return self._call_done(started, message)
        raise error

    async def aclose(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.close()
        self._client = self._loop = None
