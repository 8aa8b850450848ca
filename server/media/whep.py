"""WHEP: any standard WebRTC player pulls the stream with one HTTP request.

The WebRTC-HTTP Egress Protocol (IETF draft-ietf-wish-whep): a player POSTs its SDP offer
(`Content-Type: application/sdp`) to the endpoint `/whep` and gets `201 Created` with the
SDP answer, the session's URL in `Location` and an `ETag` naming the ICE session; `DELETE`
on that URL ends the session and frees it. The answer carries every candidate (no trickle),
so `PATCH` (trickle ICE, ICE restart) answers `405 Method Not Allowed`, as the draft lets a
server without trickle do. `OPTIONS` answers CORS preflights so browser WHEP players on other
origins work, with `Accept-Post: application/sdp`; configured ICE servers (`--ice-server`)
are announced in `Link: <url>; rel="ice-server"` headers. When the server has a viewer
token, a player sends it as `Authorization: Bearer TOKEN` (`authorize` checks it).

A WHEP session is a viewer like a page's (it gets the shared encoder's VP8 packets) without
a control channel. The answer takes the DTLS server role (`a=setup:passive`, allowed to an
answerer by RFC 5763): GStreamer's webrtcbin makes an RSA certificate, and aiortc as the DTLS
client offers only ECDSA suites, so only that way round do the two agree.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

from aiohttp import web

from .webrtc import OfferError, SessionManager

log = logging.getLogger(__name__)

SDP = "application/sdp"
MAX_OFFER_BYTES = 64 * 1024
ENDPOINT = "/whep"

Authorize = Callable[[web.Request], Awaitable[str | None]]   # an error sentence, or None when allowed


def routes(app: web.Application, sessions: Callable[[web.Request], SessionManager],
           authorize: Authorize | None = None) -> None:
    """Add the WHEP endpoint and its sessions' resources to `app`."""
    handler = _Whep(sessions, authorize)
    app.router.add_route("OPTIONS", ENDPOINT, handler.preflight)
    app.router.add_post(ENDPOINT, handler.offer)
    app.router.add_route("OPTIONS", ENDPOINT + "/{session}", handler.preflight_session)
    app.router.add_delete(ENDPOINT + "/{session}", handler.delete)
    app.router.add_patch(ENDPOINT + "/{session}", handler.patch)


class _Whep:
    def __init__(self, sessions: Callable[[web.Request], SessionManager], authorize: Authorize | None):
        self.sessions, self.authorize = sessions, authorize

    # -- headers ---------------------------------------------------------------------------------
    def _cors(self, request: web.Request, methods: str) -> dict[str, str]:
        origin = request.headers.get("Origin")
        return {"Access-Control-Allow-Origin": origin if origin else "*", "Vary": "Origin",
                "Access-Control-Allow-Methods": methods,
                "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
                "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Post",
                "Access-Control-Max-Age": "600"}

    def _links(self, request: web.Request) -> list[str]:
        return [f'<{url}>; rel="ice-server"' for url in self.sessions(request).ice_servers]

    def _fail(self, request: web.Request, status: int, message: str, methods: str = "POST, OPTIONS",
              headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(status=status, text=message + "\n", content_type="text/plain",
                            headers={**self._cors(request, methods), **(headers or {})})

    # -- the endpoint ----------------------------------------------------------------------------
    async def preflight(self, request: web.Request) -> web.Response:
        response = web.Response(status=204, headers={**self._cors(request, "POST, OPTIONS"), "Accept-Post": SDP})
        for link in self._links(request):
            response.headers.add("Link", link)
        return response

    async def offer(self, request: web.Request) -> web.Response:
        if self.authorize is not None:
            refusal = await self.authorize(request)
            if refusal is not None:
                return self._fail(request, 401, refusal, headers={"WWW-Authenticate": 'Bearer realm="longlive"'})
        if request.content_type != SDP:
            return self._fail(request, 415, f"a WHEP offer is sent as {SDP}, not {request.content_type or 'nothing'}",
                              headers={"Accept-Post": SDP})
        if request.content_length is not None and request.content_length > MAX_OFFER_BYTES:
            return self._fail(request, 413, f"the offer is larger than {MAX_OFFER_BYTES} bytes")
        try:
            raw = await request.content.read(MAX_OFFER_BYTES + 1)
        except Exception:
            return self._fail(request, 400, "the offer could not be read")
        if len(raw) > MAX_OFFER_BYTES:
            return self._fail(request, 413, f"the offer is larger than {MAX_OFFER_BYTES} bytes")
        try:
            sdp = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._fail(request, 400, "the offer is not UTF-8 text")
        manager = self.sessions(request)
        try:
            session, answer = await manager.answer(sdp, viewer="whep", dtls_server=True)
        except OfferError as e:
            return self._fail(request, 400, str(e))
        location = f"{ENDPOINT}/{session.id}"
        response = web.Response(status=201, body=answer.sdp.encode(), content_type=SDP,
                                headers={**self._cors(request, "POST, OPTIONS"), "Location": location,
                                         "ETag": session.etag})
        for link in self._links(request):
            response.headers.add("Link", link)
        log.info("WHEP session %s from %s", session.id, request.remote)
        return response

    # -- a session -------------------------------------------------------------------------------
    async def preflight_session(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=self._cors(request, "DELETE, PATCH, OPTIONS"))

    async def delete(self, request: web.Request) -> web.Response:
        methods = "DELETE, PATCH, OPTIONS"
        if self.authorize is not None:
            refusal = await self.authorize(request)
            if refusal is not None:
                return self._fail(request, 401, refusal, methods, {"WWW-Authenticate": 'Bearer realm="longlive"'})
        manager = self.sessions(request)
        sid = request.match_info["session"]
        session = manager.get(sid)
        if session is None or session.kind != "whep":
            return self._fail(request, 404, "no such WHEP session (it ended, or it never was)", methods)
        await manager.close(sid)
        return web.Response(status=200, headers=self._cors(request, methods))

    async def patch(self, request: web.Request) -> web.Response:
        methods = "DELETE, OPTIONS"
        if self.sessions(request).get(request.match_info["session"]) is None:
            return self._fail(request, 404, "no such WHEP session (it ended, or it never was)", methods)
        return self._fail(request, 405, "this server sends every candidate in its answer: no trickle ICE or ICE "
                                        "restart; end the session with DELETE and offer again", methods,
                          {"Allow": methods})
