"""The HTTP API's handlers: WebRTC offers and sessions, the WebSocket control channel, the state,
prompts and any control message over HTTP, recordings, health, metrics and the OSC table. Each
only translates HTTP to calls on the modules that own the work (see docs/PROTOCOL.md)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

from aiohttp import WSMsgType, web

from .appkeys import ACCESS, ENGINE, GST_SINK, HUB, METRICS, OSC, RECORDER, SESSIONS, SOCKETS, WHIP
from .control.hub import ControlHub, WebSocketEndpoint
from .control.osc import describe as describe_osc
from .door.roles import NEEDS_TOKEN, PERFORMER, presented_token
from .media.photon import NEEDS_VIDEO
from .media.webrtc import OfferError, ViewersFull
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .protocol import (ConflictError, EnhanceCommand, Event, PresentedReport, PromptCommand, ProtocolError,
                       parse_command)

log = logging.getLogger(__name__)

WS_MAX_FRAME = 1 << 20   # larger WebSocket frames close the socket; up to this, oversize gets an error


def _role(request: web.Request) -> str:
    """The role of the peer behind `request` (server.door.roles); 401 when it may not even watch."""
    role = request.app[ACCESS].role(presented_token(request.headers, request.query))
    if role is None:
        raise web.HTTPUnauthorized(text=json.dumps({"type": "error", "id": None, "message": NEEDS_TOKEN}),
                                   content_type="application/json",
                                   headers={"WWW-Authenticate": 'Bearer realm="longlive"'})
    return role


async def whep_access(request: web.Request) -> str | None:
    return NEEDS_TOKEN if request.app[ACCESS].role(presented_token(request.headers, request.query)) is None else None


async def offer(request: web.Request) -> web.Response:
    role = _role(request)
    body = await _json_body(request)
    sdp, kind = body.get("sdp"), body.get("type", "offer")
    if not isinstance(sdp, str) or not isinstance(kind, str):
        raise _bad_request("the body needs \"sdp\" (string) and \"type\": \"offer\"")
    try:
        session, answer = await request.app[SESSIONS].answer(sdp, kind, role=role)
    except ViewersFull as e:
        return web.json_response({"error": str(e)}, status=503, headers={"Retry-After": "5"})
    except OfferError as e:
        raise _bad_request(str(e)) from None
    return web.json_response({"sdp": answer.sdp, "type": answer.type, "session": session.id})


async def end_session(request: web.Request) -> web.Response:
    session_id = request.match_info["session"]
    if not await request.app[SESSIONS].close(session_id):
        return web.json_response({"error": f"no session {session_id!r}"}, status=404)
    return web.json_response({"closed": session_id})


async def control_socket(request: web.Request) -> web.StreamResponse:
    role = _role(request)
    ws = web.WebSocketResponse(max_msg_size=WS_MAX_FRAME, heartbeat=30)
    await ws.prepare(request)
    hub = request.app[HUB]
    ep = WebSocketEndpoint(ws, binary=request.query.get("format", "msgpack") != "json", role=role)
    request.app[SOCKETS].add(ws)
    hub.attach(ep)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                hub.receive(ep, msg.data)
            elif msg.type == WSMsgType.BINARY:
                hub.receive(ep, msg.data)
            elif msg.type == WSMsgType.ERROR:
                log.info("WebSocket error: %s", ws.exception())
    finally:
        hub.detach(ep)
        request.app[SOCKETS].discard(ws)
        await ep.wait_closed()
    return ws


async def state(request: web.Request) -> web.Response:
    _role(request)
    return web.json_response(request.app[HUB].state())


async def prompt(request: web.Request) -> web.Response:
    role = _role(request)
    body = await _json_body(request)
    if "type" in body and body["type"] != "prompt":
        raise _bad_request("this endpoint takes prompts only; leave out \"type\"")
    try:
        command = parse_command({**body, "type": "prompt"})
    except ProtocolError as e:
        raise _bad_request(str(e)) from None
    reply, event = await _dispatch(request.app[HUB], command, role)
    if reply["type"] == "error":
        return _refused(reply, event, role)
    return web.json_response(reply, status=202)


async def command(request: web.Request) -> web.Response:
    """Any control message as a JSON body: 202 with the ack (200 with the state for status),
    400 when invalid, 401 without a token the server asks for, 403 for a viewer's command, 409
    when it names what is not there (a segment that is not kept, an empty cue) or a recording
    cannot start or stop, 503 + Retry-After when the engine refused it (restarting, stopped, or
    its queue full)."""
    role = _role(request)
    body = await _json_body(request)
    try:
        cmd = parse_command(body)
    except ProtocolError as e:
        raise _bad_request(str(e)) from None
    if isinstance(cmd, PresentedReport):      # a viewer's report names frames of its own WebRTC session
        raise _bad_request(NEEDS_VIDEO)
    reply, event = await _dispatch(request.app[HUB], cmd, role)
    if reply["type"] == "error":
        return _refused(reply, event, role)
    return web.json_response(reply, status=202 if reply["type"] == "ack" else 200)


async def recordings_list(request: web.Request) -> web.Response:
    _role(request)
    return web.json_response({"recording": request.app[RECORDER].status(), "files": request.app[RECORDER].files()})


async def recording_file(request: web.Request) -> web.FileResponse:
    _role(request)
    name = request.match_info["name"]
    path = request.app[RECORDER].path_of(name)
    if path is None:
        raise web.HTTPNotFound(text=json.dumps({"error": f"no recording {name[:120]!r} in the recordings folder "
                                                         "(names are longlive-YYYYMMDD-HHMMSS.mp4 or "
                                                         ".timeline.json; nothing outside the folder is served)"}),
                               content_type="application/json")
    return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{path.name}"'})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus's text format (server/metrics.py lists what is there)."""
    _role(request)
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": METRICS_TYPE})


async def health(request: web.Request) -> web.Response:
    app = request.app
    sessions = app[SESSIONS]
    return web.json_response({
        "sessions": sessions.count,
        "peer_connections": sum(1 for s in sessions if s.pc.connectionState != "closed"),
        "controllers": app[HUB].count,
        "websockets": len(app[SOCKETS]),
        "engine_running": app[ENGINE].running,
        "tasks": len(asyncio.all_tasks()),
        "task_names": sorted(_task_name(t) for t in asyncio.all_tasks()),
        "threads": sorted(t.name for t in threading.enumerate()),
        "bus_frames": len(app[ENGINE].bus.frames()),
        "bus_bytes": app[ENGINE].bus.memory_bytes(),
        **({"whip": app[WHIP].stats()} if WHIP in app else {}),
        **({"gst_sink": app[GST_SINK].stats()} if GST_SINK in app else {}),
    })


async def osc_table(request: web.Request) -> web.Response:
    server = request.app.get(OSC)
    return web.json_response(server.describe() if server is not None else describe_osc(None))


# -- helpers ------------------------------------------------------------------------------------------
async def _dispatch(hub: ControlHub, command: Any, role: str = PERFORMER) -> tuple[dict[str, Any], Event]:
    """The hub's first reply to one command (the ack or the error; for `enhance`, the `enhanced`
    answer), as a JSON map and as the event (whose class says what kind of refusal an error
    is). A prompt with enhance: true is rewritten first (the reply then carries the rewrite as
    "enhanced"). A viewer's command goes to the hub as it is, which refuses it, so nothing (an
    AI call included) happens for it."""
    if role == PERFORMER and isinstance(command, EnhanceCommand):
        event = await hub.enhance(command)
        return event.to_wire(), event
    enhanced = None
    if role == PERFORMER and isinstance(command, PromptCommand) and command.enhance:
        enhanced = (await hub.enhance(command)).to_wire()
        command = PromptCommand(id=command.id, text=enhanced["text"])
    replies: list[Event] = []
    hub.dispatch(command, replies.append, role)
    reply = replies[0].to_wire()
    if enhanced is not None:
        reply = {**reply, "enhanced": enhanced}
    return reply, replies[0]


def _refused(reply: dict[str, Any], event: Event, role: str) -> web.Response:
    """The HTTP answer to the hub's refusal of a command: 403 for a viewer's; 409 when it names
    what is not there (a segment not kept, an empty cue) or a recording cannot start or stop
    (asking again is refused again); else 503 + Retry-After (the engine is restarting, stopped
    or has a full queue: try again)."""
    if role != PERFORMER:
        return web.json_response(reply, status=403)
    if isinstance(event, ConflictError):
        return web.json_response(reply, status=409)
    return web.json_response(reply, status=503, headers={"Retry-After": "1"})


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise _bad_request("the body is not valid JSON") from None
    except RecursionError:    # json.loads gives up on deep nesting that fits the size limit
        raise _bad_request("the body is nested too deeply; a request is a flat JSON object") from None
    if not isinstance(body, dict):
        raise _bad_request("the body must be a JSON object")
    return body


def _task_name(task: asyncio.Task) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or task.get_name()


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")
