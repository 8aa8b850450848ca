"""The door: which HTTP requests the server takes at all, before any route sees them.

A browser will send requests to this server on behalf of any page it has open, on any site.
Three checks keep those pages out while the server's own pages, scripts and players work:

- **Host** (every path: pages, `/api`, `/whep`, `/metrics`): the `Host` header must be one of
  the server's own names, else 421 and a sentence. This stops DNS rebinding, where a site
  points its own name at 127.0.0.1 and then talks to this server as if it were that site.
  The names: the bound address; for a loopback bind `localhost`, `127.0.0.1` and `::1`; for an
  all-interfaces bind (`0.0.0.0`, `::`) those, every address of the machine (the list WebRTC
  offers candidates on, `server.addresses.machine_addresses`, looked at again when an unknown
  address turns up) and the machine's host name (`NAME` and `NAME.local`); plus every
  `--allow-host NAME` (a DNS name, or what a reverse proxy sends). The port is not compared.
- **Origin** (`/api/*`, the WebSocket `/api/control` included, checked before the upgrade): a
  request carrying an `Origin` header must come from this server's own origin (the scheme
  and `Host` it was asked under; http and https alike, so a TLS proxy in front works) or
  from one `--allow-origin` names, else 403 and a sentence. `/whep` is meant for players on
  other sites (CORS, Bearer tokens): it keeps to the Host check.
- **Content type** (`POST`, `PUT`, `PATCH`, `DELETE` to `/api/*`): a request with a body (or
  a `Content-Type`) must say `Content-Type: application/json`, else 415 and a sentence. An
  HTML form on any site can POST `text/plain` or form-encoded bodies without asking, and
  `request.json()` would read them; a JSON body from another origin needs a CORS preflight,
  which this server never grants. A body-less `DELETE /api/sessions/{id}` needs no type,
  and neither does a method no route takes at that path (`PUT /api/prompt`): the catch-all
  route answers it 405 (server/pages.py) and reads no body.

A body over the app's limit (256 KiB) is refused with 413 and a sentence, from its
`Content-Length` before it is read, or when reading it finds out.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from aiohttp import hdrs, web

JSON = "application/json"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
REFRESH_S = 10.0             # at most this often the machine's addresses are looked at again

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _split(value: str | None) -> tuple[str, str] | None:
    """(name, port) of a Host header or an --allow-host: lowercase, IPv6 without brackets and in
    its short form, no final dot; None when it is not a host at all."""
    if not value:
        return None
    value = value.strip().lower()
    port = ""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
        if rest and not (rest[0] == ":" and rest[1:].isdigit()):
            return None
        port = rest[1:]
        try:
            return str(ipaddress.IPv6Address(name)), port      # brackets hold an IPv6 address, nothing else
        except ValueError:
            return None
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
        if not port.isdigit():
            return None
    else:
        name = value                         # a name, an IPv4 address, or a bare IPv6 address
    if ":" in name:
        try:
            return str(ipaddress.IPv6Address(name)), port
        except ValueError:
            return None
    name = name.rstrip(".")
    if not name or len(name) > 253 or any(c in name for c in "/\\@?#%[] \t\r\n\x00"):
        return None
    return name, port


def host_name(value: str | None) -> str | None:
    """The name in a Host header or an --allow-host: "[::1]:8080" -> "::1",
    "Show.Example.com.:443" -> "show.example.com"; None when it is not a host at all."""
    split = _split(value)
    return None if split is None else split[0]


def _netloc(value: str, scheme: str) -> str | None:
    """host[:port] as an origin writes it, without the scheme's default port (to compare origins)."""
    split = _split(value)
    if split is None:
        return None
    name, port = split
    if port == {"http": "80", "https": "443"}.get(scheme):
        port = ""
    shown = f"[{name}]" if ":" in name else name
    return f"{shown}:{port}" if port else shown


def origin_key(origin: str) -> str | None:
    """An origin ("https://Show.example.com:443") as "https://show.example.com"; None when it
    is not an http(s) origin (the opaque "null" included)."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") \
            or parts.query or parts.fragment or "@" in parts.netloc:
        return None
    netloc = _netloc(parts.netloc, parts.scheme)
    return None if netloc is None else f"{parts.scheme}://{netloc}"


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _is_unspecified(address: str | None) -> bool:
    if address in (None, ""):
        return True
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


def _machine_addresses(bind: str | None) -> tuple[str, ...]:
    from ..addresses import machine_addresses
    return machine_addresses(use_ipv4=True, use_ipv6=bind in (None, "", "::"))


@dataclass
class Door:
    """The checks for a server bound to `bind` (the numeric address its socket has)."""

    bind: str | None = "127.0.0.1"
    allow_hosts: Iterable[str] = ()
    allow_origins: Iterable[str] = ()
    addresses: Callable[[str | None], Iterable[str]] = _machine_addresses   # every address of the machine
    hostname: Callable[[], str] = socket.gethostname
    clock: Callable[[], float] = time.monotonic
    _names: set[str] = field(default_factory=set, init=False, repr=False)
    _looked: float = field(default=float("-inf"), init=False, repr=False)

    def __post_init__(self) -> None:
        hosts = [host_name(h) for h in self.allow_hosts]
        if None in hosts:
            raise ValueError("an --allow-host is a host name or an address, like show.example.com")
        origins = [origin_key(o) for o in self.allow_origins]
        if None in origins:
            raise ValueError("an --allow-origin is scheme://host[:port], like https://show.example.com")
        self.allow_hosts, self.allow_origins = tuple(hosts), frozenset(origins)
        names = set(self.allow_hosts)
        if not _is_unspecified(self.bind):
            names.add(str(ipaddress.ip_address(self.bind)))
        if _is_loopback(self.bind) or _is_unspecified(self.bind):
            names.update(LOOPBACK_NAMES)
        if not _is_loopback(self.bind):
            name = host_name(self.hostname())
            if name:
                names.update({name, name + ".local"})
        self._names = names
        if _is_unspecified(self.bind):
            self._look()

    def _look(self) -> None:
        self._looked = self.clock()
        self._names.update(str(ipaddress.ip_address(a)).lower() for a in self.addresses(self.bind))

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._names)

    # -- the checks --------------------------------------------------------------------------------
    def host_allowed(self, host: str | None) -> bool:
        """Whether a request's Host header names this server. No Host at all (HTTP/1.0) is let
        through: a browser always sends one."""
        if host is None:
            return True
        name = host_name(host)
        if name is None:
            return False
        if name in self._names:
            return True
        if _is_unspecified(self.bind) and self.clock() - self._looked >= REFRESH_S:
            try:
                ipaddress.ip_address(name)
            except ValueError:
                return False
            self._look()                     # an address this machine may have gained since
            return name in self._names
        return False

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """Whether a request's Origin is this server's own (the Host it was sent to) or allowed."""
        if origin is None:
            return True
        key = origin_key(origin)
        if key is None:
            return False
        if key in self.allow_origins:
            return True
        scheme = key.split("://", 1)[0]
        return host is not None and _netloc(host, scheme) == key.split("://", 1)[1]

    def refusal(self, request: web.Request) -> web.Response | None:
        """The answer for a request the door does not let in, or None."""
        host = request.headers.get("Host")
        if not self.host_allowed(host):
            return _refuse(request, 421, f"this server does not answer to the name {_short(host)!r}; open it "
                                         "at its own address, or start it with --allow-host for that name")
        path = request.path
        if not (path == "/api" or path.startswith("/api/")):
            return None
        origin = request.headers.get("Origin")
        if not self.origin_allowed(origin, host):
            return _refuse(request, 403, f"requests from pages on other sites are refused: {_short(origin)!r} is "
                                         "not this server's origin (allow one with --allow-origin)")
        if request.method in UNSAFE and (request.body_exists or "Content-Type" in request.headers) \
                and request.content_type != JSON and request.match_info.route.method != hdrs.METH_ANY:
            given = request.headers.get("Content-Type") or "no Content-Type"
            return _refuse(request, 415, f"a {request.method} to {_short(path)} is sent as {JSON} "
                                         f"(Content-Type), not {_short(given)}")
        return None


def _short(value: str | None, limit: int = 80) -> str:
    value = value or ""
    return value if len(value) <= limit else value[:limit] + "…"


def _refuse(request: web.Request, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    if request.path == "/whep" or request.path.startswith("/whep/"):     # WHEP answers in text (server/media/whep.py)
        return web.Response(status=status, text=message + "\n", content_type="text/plain", headers=headers)
    return web.Response(status=status, text=json.dumps({"error": message}), content_type=JSON, headers=headers)


def too_large_message(limit: int) -> str:
    return f"the body is larger than {limit} bytes ({limit // 1024} KiB), the most this server reads"


def middleware(door: Door, max_body: int) -> Any:
    """The door as aiohttp middleware: refusals first, then the route; an oversized body is a 413 sentence."""

    @web.middleware
    async def the_door(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = door.refusal(request)
        if refused is not None:
            return refused
        whep = request.path == "/whep" or request.path.startswith("/whep/")     # it reads and limits its own
        if not whep and request.content_length is not None and request.content_length > max_body:
            return _refuse(request, 413, too_large_message(max_body))
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return _refuse(request, 413, too_large_message(max_body))

    return the_door
