"""The machine's addresses, and where ICE gathers.

A server bound to one address offers WebRTC host candidates on that address only
(`ice_host_addresses`); an all-interfaces bind offers every address of the machine but
loopback (`machine_addresses`, aioice's own list, which the door also uses to know the
server's names and `serve` to print the URLs it can be reached at). aioice has no setting for
this, so `gathering_on` scopes its host-address lookup (`aioice.ice.get_host_addresses`) with a
context variable: only gathering started inside that block sees the restricted list; every
other peer connection in the process gathers as before.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
from typing import Iterable, Iterator

import aioice.ice


def ice_host_addresses(bind_host: str | None) -> tuple[str, ...] | None:
    """The addresses a server bound to `bind_host` offers as ICE host candidates.

    None means every address of the machine (an all-interfaces bind: "", "0.0.0.0", "::");
    a specific address (127.0.0.1, 192.168.1.5, ::1) gives just that address. Host names
    are not resolved here: pass the address the socket is bound to (`getsockname()[0]`).
    """
    if bind_host is None or bind_host == "":
        return None
    try:
        address = ipaddress.ip_address(bind_host)
    except ValueError:
        raise ValueError(f"ICE needs the numeric address the server is bound to, not {bind_host!r}") from None
    if address.is_unspecified:
        return None
    return (str(address),)


def machine_addresses(use_ipv4: bool = True, use_ipv6: bool = True) -> tuple[str, ...]:
    """Every address of this machine but loopback: what an all-interfaces bind offers host
    candidates on (aioice's lookup); server.door.checks and serve's printed URLs use the same list."""
    return tuple(_aioice_host_addresses(use_ipv4, use_ipv6))


_GATHER_ON: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar("longlive_ice_host_addresses",
                                                                                   default=None)
_aioice_host_addresses = aioice.ice.get_host_addresses


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """aioice's host-address lookup, restricted to `gathering_on`'s addresses inside that block."""
    chosen = _GATHER_ON.get()
    if chosen is None:
        return _aioice_host_addresses(use_ipv4, use_ipv6)
    return [a for a in chosen if (use_ipv6 if ":" in a else use_ipv4)]


@contextlib.contextmanager
def gathering_on(addresses: Iterable[str] | None) -> Iterator[None]:
    """ICE gathering started inside this block (`await pc.setLocalDescription(...)`) offers
    host candidates on `addresses` only; None leaves aioice's choice (every address but
    127.0.0.1). The restriction follows the context (the tasks aiortc starts for the
    gathering inherit it), so other peer connections in the process are not affected."""
    aioice.ice.get_host_addresses = _host_addresses      # idempotent; defers to aioice outside the block
    token = _GATHER_ON.set(None if addresses is None else tuple(addresses))
    try:
        yield
    finally:
        _GATHER_ON.reset(token)
