"""The aiohttp application: routes, and the order things start and stop in.

Routes only translate HTTP to calls on the modules that own the work: `webrtc` (sessions),
`control` (control clients, state, stats), `engine` (the worker thread). See
docs/PROTOCOL.md for the wire format.

    GET    /                      the browser client (static files from client/)
    GET    /projector, /watch     the video alone (full screen, no controls); a viewer page without controls
    POST   /api/offer             {"sdp", "type": "offer"} -> {"sdp", "type": "answer", "session"}
    DELETE /api/sessions/{id}     end a WebRTC session
    GET    /api/control           WebSocket control channel (msgpack or JSON messages)
    GET    /api/state             the state, as JSON
    POST   /api/prompt            {"text", "id"?} -> queue a prompt switch
    POST   /api/command           any control message as JSON ({"type": "record", "on": true}, ...)
    GET    /api/recordings        the recordings folder: [{"name", "bytes", "url"}], newest first
    GET    /api/recordings/{name} one recording (video or its timeline)
    GET    /api/health            counts for monitoring and tests (sessions, tasks, threads)
    GET    /api/osc               OSC: on or off, where, the reply target and the address table
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import threading
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from studio.sidecar import Source

from .control.hub import ControlHub, ServerInfo, WebSocketEndpoint
from .performing.cues import CueBank
from .door import checks as door_module
from .door.checks import Door
from .engine import Engine
from .media.gst_sink import GstSink
from .door import limits as limits_module
from .door.limits import Limits
from .metrics import CONTENT_TYPE as METRICS_TYPE, StreamMetrics
from .control.osc import OscOptions, OscServer, describe as describe_osc
from .media.photon import NEEDS_VIDEO
from .protocol import (ArmCommand, EnhanceCommand, FireCommand, PresentedReport, PromptCommand, ProtocolError,
                       RecordCommand, parse_command)
from .keeping.recorder import Recorder
from .door.roles import NEEDS_TOKEN, PERFORMER, Access, presented_token, scrub_logs
from .performing.tempo import TempoClock
from .media import whep
from .media.webrtc import MediaOptions, OfferError, SessionManager, ViewersFull
from .media.whip import WhipOptions, WhipPublisher

log = logging.getLogger(__name__)

CLIENT_DIR = Path(__file__).resolve().parent.parent / "client"
STATIC_SUFFIXES = {".html", ".js", ".mjs", ".css", ".svg", ".png", ".ico", ".woff2"}
WS_MAX_FRAME = 1 << 20   # larger WebSocket frames close the socket; up to this, oversize gets an error
MAX_BODY_BYTES = 256 * 1024   # an HTTP body (a WHEP offer: 64 KiB, server/whep.py); more is a 413 sentence

mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("text/javascript", ".js")

ENGINE = web.AppKey("engine", Engine)
HUB = web.AppKey("hub", ControlHub)
SESSIONS = web.AppKey("sessions", SessionManager)
SOCKETS = web.AppKey("sockets", set)
RECORDER = web.AppKey("recorder", Recorder)
RECORD_AT_START = web.AppKey("record_at_start", bool)
STATIC_ROOT = web.AppKey("static_root", Path)
OSC = web.AppKey("osc", OscServer)
ACCESS = web.AppKey("access", Access)
METRICS_UNSUBSCRIBE = web.AppKey("metrics_unsubscribe", object)
METRICS = web.AppKey("metrics", StreamMetrics)
WHIP = web.AppKey("whip", WhipPublisher)
GST_SINK = web.AppKey("gst_sink", GstSink)


def create_app(engine: Engine, *, config_name: str | None = None, client_dir: Path = CLIENT_DIR,
               host: str | None = "127.0.0.1", recordings: str | Path = "recordings",
               record: bool = False, enhancer: Any = None, osc: OscOptions | None = None,
               cues: CueBank | None = None, bpm: float = 120.0, link: bool = False,
               media: MediaOptions | None = None, whip: WhipOptions | None = None,
               access: Access | None = None, gst_sink: str | None = None, door: Door | None = None,
               limits: Limits | None = None) -> web.Application:
    """The app for `engine`. `host` is the address the HTTP socket is bound to: WebRTC
    offers ICE candidates on that address only (every address for "0.0.0.0" or "::"), and the
    door (server/door.py: Host, Origin, content type) answers to that address's names unless
    `door` says otherwise. `limits` are the rates (server/limits.py; the defaults when None).
    Recordings go to the folder `recordings`; `record` starts one with the stream. `cues` is
    the cue bank (the shipped default when None), `bpm` the tempo, `link` follows Ableton Link."""
    pipe = engine.pipe
    width, height = pipe.size
    info = ServerInfo(config=config_name or getattr(getattr(pipe, "cfg", None), "name", "custom"),
                      width=width, height=height, fps=float(pipe.fps), embedded_default=bool(pipe.embedded_default))
    recorder = Recorder(engine, recordings, lambda: stream_source(engine, info.config))
    hub = ControlHub(engine, info, recorder=recorder, enhancer=enhancer,
                     cues=cues if cues is not None else CueBank.load(), tempo=TempoClock(bpm, clock=engine.clock),
                     link=link)
    media = media or MediaOptions()
    access = access or Access()
    scrub_logs(access)
    sessions = SessionManager(engine.bus, pipe.size, on_control_channel=hub.attach_channel, host=host,
                              bitrate=media.bitrate, keyframe_interval_s=media.keyframe_interval_s,
                              ice_servers=media.ice_servers, max_viewers=access.max_viewers)
    hub.viewers = sessions
    limits = limits or Limits()
    hub.message_limit = limits.per_connection()    # control messages per data channel or WebSocket
    door = door or Door(bind=host)

    app = web.Application(client_max_size=MAX_BODY_BYTES,
                          middlewares=[door_module.middleware(door, MAX_BODY_BYTES), limits_module.middleware(limits)])
    app[ENGINE], app[HUB], app[SESSIONS], app[SOCKETS] = engine, hub, sessions, set()
    app[ACCESS] = access
    app[METRICS] = StreamMetrics(engine, hub, sessions, lambda: _outlets(app))
    app[RECORDER], app[RECORD_AT_START] = recorder, record
    app[STATIC_ROOT] = client_dir.resolve()
    app.router.add_post("/api/offer", offer)
    app.router.add_delete("/api/sessions/{session}", end_session)
    app.router.add_get("/api/control", control_socket)
    app.router.add_get("/api/state", state)
    app.router.add_post("/api/prompt", prompt)
    app.router.add_post("/api/command", command)
    app.router.add_get("/api/recordings", recordings_list)
    app.router.add_get("/api/recordings/{name}", recording_file)
    app.router.add_get("/api/health", health)
    app.router.add_get("/metrics", metrics)
    whep.routes(app, lambda request: request.app[SESSIONS], authorize=_whep_access)
    app.router.add_get("/api/osc", osc_table)
    if osc is not None and osc.enabled:
        app[OSC] = OscServer(hub, osc)       # OSC over UDP (server/osc.py)
        app[OSC].limit = limits.per_osc_sender()
    if whip is not None:                     # WHIP publish into an SFU (server/whip.py)
        # the SFU gets the shared encoder's packets, like every viewer; its picture-loss requests reach it
        app[WHIP] = WhipPublisher(whip, sessions.encoder.subscribe, on_sender=sessions.encoder.watch_keyframe_requests)
    if gst_sink is not None:                 # every frame into a GStreamer pipeline (server/gst_sink.py)
        app[GST_SINK] = GstSink(engine, gst_sink)
    app.router.add_get("/", index)
    app.router.add_get("/projector", page("projector.html"))
    app.router.add_get("/watch", page("watch.html"))
    app.router.add_get("/{path:.+}", static_file)
    app.on_startup.append(_startup)
    app.on_shutdown.append(_shutdown)
    if not (client_dir / "vendor" / "msgpack" / "index.mjs").exists():
        log.warning("client/vendor/msgpack is missing: run `make client` or the page cannot load")
    return app


# -- lifecycle -----------------------------------------------------------------------------------
def stream_source(engine: Engine, config_name: str) -> Source:
    """What the stream is made from now (for a recording's sidecar)."""
    pipe = engine.pipe
    cfg = getattr(pipe, "cfg", None)
    weights = getattr(pipe, "weights", None)
    width, height = pipe.size
    steps = tuple(int(t) for t in getattr(getattr(cfg, "schedule", None), "denoising_steps", ()) or ())
    return Source(config=config_name, weights="embedded" if weights is None else Path(str(weights.root)).name,
                  fps=float(pipe.fps), latent_frames_per_block=int(getattr(cfg, "latent_frames_per_block", 3)),
                  width=width, height=height, denoising_steps=steps, seed=engine.state().seed)


async def _startup(app: web.Application) -> None:
    await app[HUB].start()
    app[METRICS_UNSUBSCRIBE] = app[ENGINE].subscribe(app[METRICS].observe, asyncio.get_running_loop())
    if OSC in app:
        await app[OSC].start()
    if app[RECORD_AT_START]:
        app[RECORDER].start()      # before the first block: the recording has the whole stream
    if GST_SINK in app:
        app[GST_SINK].start()      # likewise; returns at once, the pipeline starts on its own thread
    if not app[ENGINE].running:
        app[ENGINE].start()
    if WHIP in app:
        await app[WHIP].start()    # returns at once; connects (and reconnects) in its own task


async def _shutdown(app: web.Application) -> None:
    """Close every viewer and control client, then stop the worker thread."""
    if WHIP in app:
        await app[WHIP].stop()     # DELETEs the WHIP resource while the stream still runs
    await app[SESSIONS].close_all()
    for ws in list(app[SOCKETS]):
        await ws.close(code=1001, message=b"server shutting down")
    await asyncio.to_thread(app[RECORDER].stop)    # the files are complete before the server goes
    if GST_SINK in app:
        await asyncio.to_thread(app[GST_SINK].stop)    # EOS: its files too are finalised
    if OSC in app:
        await app[OSC].stop()
    if METRICS_UNSUBSCRIBE in app:
        app[METRICS_UNSUBSCRIBE]()
    await app[HUB].stop()
    await asyncio.to_thread(app[ENGINE].stop)


# -- routes ----------------------------------------------------------------------------------------
def _role(request: web.Request) -> str:
    """The role of the peer behind `request` (server.door.roles); 401 when it may not even watch."""
    role = request.app[ACCESS].role(presented_token(request.headers, request.query))
    if role is None:
        raise web.HTTPUnauthorized(text=json.dumps({"type": "error", "id": None, "message": NEEDS_TOKEN}),
                                   content_type="application/json",
                                   headers={"WWW-Authenticate": 'Bearer realm="longlive"'})
    return role


async def _whep_access(request: web.Request) -> str | None:
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
    replies = await _dispatch(request.app[HUB], command, role)
    if role != PERFORMER:
        return web.json_response(replies[0], status=403)
    if replies[0]["type"] == "error":     # refused: the engine is restarting, stopped or has a full queue
        return web.json_response(replies[0], status=503, headers={"Retry-After": "1"})
    return web.json_response(replies[0], status=202)


async def command(request: web.Request) -> web.Response:
    """Any control message as a JSON body: 202 with the ack (200 with the state for status),
    400 when invalid, 401 without a token the server asks for, 403 for a viewer's command, 409
    when a recording cannot start or stop or a cue is empty, 503 + Retry-After when the engine refused it
    (restarting, stopped, or its queue full)."""
    role = _role(request)
    body = await _json_body(request)
    try:
        cmd = parse_command(body)
    except ProtocolError as e:
        raise _bad_request(str(e)) from None
    if isinstance(cmd, PresentedReport):      # a viewer's report names frames of its own WebRTC session
        raise _bad_request(NEEDS_VIDEO)
    replies = await _dispatch(request.app[HUB], cmd, role)
    reply = replies[0]
    if reply["type"] != "error":
        return web.json_response(reply, status=202 if reply["type"] == "ack" else 200)
    if role != PERFORMER:
        return web.json_response(reply, status=403)
    if isinstance(cmd, RecordCommand):      # already recording, nothing to stop, folder not writable
        return web.json_response(reply, status=409)
    if isinstance(cmd, (ArmCommand, FireCommand)) and cmd.cue not in request.app[HUB].cues:   # an empty cue
        return web.json_response(reply, status=409)
    return web.json_response(reply, status=503, headers={"Retry-After": "1"})   # the engine refused it


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


def _outlets(app: web.Application) -> dict[str, int]:
    """Viewers that are not sessions: the WHIP publisher (publishing) and the GStreamer sink (running)."""
    return {"whip": int(WHIP in app and app[WHIP].stats().get("state") == "publishing"),
            "gstreamer": int(GST_SINK in app and bool(app[GST_SINK].stats().get("running")))}


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


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(request.app[STATIC_ROOT] / "index.html")


def page(name: str):
    """A route serving one page of the client (the projector view, the viewer page)."""
    async def serve(request: web.Request) -> web.FileResponse:
        return web.FileResponse(request.app[STATIC_ROOT] / name)
    return serve


async def static_file(request: web.Request) -> web.FileResponse:
    root: Path = request.app[STATIC_ROOT]
    rel = request.match_info["path"]
    try:
        path = (root / rel).resolve()
        found = (path.is_relative_to(root) and path.suffix in STATIC_SUFFIXES and path.is_file()
                 and "node_modules" not in path.relative_to(root).parts)
    except (OSError, ValueError, RuntimeError):       # a NUL byte, a loop of links
        found = False
    if not found:
        raise web.HTTPNotFound(text=json.dumps({"error": f"no file {rel[:120]!r}"}), content_type="application/json")
    return web.FileResponse(path)


# -- helpers ------------------------------------------------------------------------------------------
async def _dispatch(hub: ControlHub, command: Any, role: str = PERFORMER) -> list[dict[str, Any]]:
    """The hub's replies to one command, as JSON maps: the first is the ack or the error (or, for
    `enhance`, the `enhanced` answer). A prompt with enhance: true is rewritten first (the reply
    then carries the rewrite as "enhanced"). A viewer's command goes to the hub as it is, which
    refuses it, so nothing (an AI call included) happens for it."""
    if role == PERFORMER and isinstance(command, EnhanceCommand):
        return [(await hub.enhance(command)).to_wire()]
    enhanced = None
    if role == PERFORMER and isinstance(command, PromptCommand) and command.enhance:
        enhanced = (await hub.enhance(command)).to_wire()
        command = PromptCommand(id=command.id, text=enhanced["text"])
    replies: list[dict[str, Any]] = []
    hub.dispatch(command, lambda event: replies.append(event.to_wire()), role)
    if enhanced is not None:
        replies[0] = {**replies[0], "enhanced": enhanced}
    return replies
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

