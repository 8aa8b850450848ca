"""Roles: who may steer the stream and who may only watch.

`serve --token T` makes T the performer token: only a peer that presents it steers (prompts,
cues, seeds, recording ...). Everybody else is a viewer on every path: a page's data channel,
the WebSocket, HTTP and WHEP. A viewer watches and hears every event, but every command
except `status` is answered with an error. `--viewer-token V` also closes the door to
watching: then a peer needs V (or T) to watch at all. Without `--token`, everyone steers,
which suits the default bind to 127.0.0.1 (this machine only).

A token is presented as `Authorization: Bearer TOKEN` (HTTP, WHEP, the page's offer) or as
`?token=TOKEN` in the URL (the WebSocket and the page, which cannot set headers there). It
is compared in constant time. It is never logged and never repeated in an error or an
event, and `repr` leaves it out. OSC has no tokens: with `--token`, OSC is taken only from
the addresses `--osc-allow` names (this machine's loopback by default).
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field
from typing import Mapping

PERFORMER, VIEWER = "performer", "viewer"

NEEDS_PERFORMER = ("this connection is a viewer: {command} needs the performer token "
                   "(Authorization: Bearer, or ?token= in the page's address)")
NEEDS_TOKEN = "this server asks viewers for a token (Authorization: Bearer, or ?token= in the page's address)"


@dataclass(frozen=True)
class Access:
    token: str | None = field(default=None, repr=False)           # the performer's
    viewer_token: str | None = field(default=None, repr=False)
    max_viewers: int | None = None

    @property
    def locked(self) -> bool:
        """A performer token is set: strangers only watch."""
        return self.token is not None

    def role(self, presented: str | None) -> str | None:
        """The role a peer presenting `presented` gets; None: it may not even watch."""
        if self.token is None or _same(presented, self.token):
            return PERFORMER
        if self.viewer_token is None or _same(presented, self.viewer_token):
            return VIEWER
        return None


class Scrub(logging.Filter):
    """Replaces the server's tokens in every record that passes (aiohttp's access and server logs
    would otherwise write a `?token=` URL as it came)."""

    def __init__(self, access: Access):
        super().__init__()
        self.secrets = [t for t in (access.token, access.viewer_token) if t]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(t in message for t in self.secrets):
            for t in self.secrets:
                message = message.replace(t, "[token]")
            record.msg, record.args = message, ()
        return True


SCRUBBED_LOGGERS = ("aiohttp.access", "aiohttp.server", "aiohttp.web", "aiohttp.websocket")


def scrub_logs(access: Access) -> None:
    """Keep this server's tokens out of the libraries' logs that see requests."""
    if not access.locked and access.viewer_token is None:
        return
    for name in SCRUBBED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, Scrub) and f.secrets == Scrub(access).secrets for f in logger.filters):
            logger.addFilter(Scrub(access))


def presented_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The token a request carries: `Authorization: Bearer X`, else `?token=X`."""
    auth = headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    token = query.get("token")
    return token if token else None


def _same(presented: str | None, token: str) -> bool:
    if not presented:
        return False
    return hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass"))
