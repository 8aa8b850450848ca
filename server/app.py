"""The aiohttp application: routes, and the order things start and stop in.

`create_app` builds the pieces and lists the routes; the handlers are in `api` (the HTTP API)
and `pages` (the client's files), and only translate HTTP to calls on the modules that own
the work. See docs/PROTOCOL.md for the wire format.

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
import logging
import mimetypes
from pathlib import Path
from typing import Any

from aiohttp import web

from studio.sidecar import Source

from . import api, pages
from .api import WS_MAX_FRAME  # noqa: F401  (re-exported: tests size WebSocket frames by it)
from .appkeys import (ACCESS, ENGINE, GST_SINK, HUB, METRICS, METRICS_UNSUBSCRIBE, OSC, RECORD_AT_START,  # noqa: F401
                      RECORDER, SESSIONS, SOCKETS, STATIC_ROOT, WHIP)
from .control.hub import ControlHub, ServerInfo
from .control.osc import OscOptions, OscServer
from .door import checks as door_module
from .door import limits as limits_module
from .door.checks import Door
from .door.limits import Limits
from .door.roles import Access, scrub_logs
from .engine import Engine
from .keeping.recorder import Recorder
from .media import whep
from .media.gst_sink import GstSink
from .media.webrtc import MediaOptions, SessionManager, quiet_sctp_goodbyes
from .media.whip import WhipOptions, WhipPublisher
from .metrics import StreamMetrics
from .pages import CLIENT_DIR
from .performing.cues import CueBank
from .performing.tempo import TempoClock

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024   # an HTTP body (a WHEP offer: 64 KiB, server/media/whep.py); more is a 413 sentence

mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("text/javascript", ".js")


def create_app(engine: Engine, *, config_name: str | None = None, client_dir: Path = CLIENT_DIR,
               host: str | None = "127.0.0.1", recordings: str | Path = "recordings",
               record: bool = False, enhancer: Any = None, osc: OscOptions | None = None,
               cues: CueBank | None = None, bpm: float = 120.0, link: bool = False,
               media: MediaOptions | None = None, whip: WhipOptions | None = None,
               access: Access | None = None, gst_sink: str | None = None, door: Door | None = None,
               limits: Limits | None = None) -> web.Application:
    """The app for `engine`. `host` is the address the HTTP socket is bound to: WebRTC
    offers ICE candidates on that address only (every address for "0.0.0.0" or "::"), and the
    door (server/door/checks.py: Host, Origin, content type) answers to that address's names unless
    `door` says otherwise. `limits` are the rates (server/door/limits.py; the defaults when None).
    Recordings go to the folder `recordings`; `record` starts one with the stream. `cues` is
    the cue bank (the shipped default when None), `bpm` the tempo, `link` follows Ableton Link."""
    pipe = engine.pipe
    width, height = pipe.size
    info = ServerInfo(config=config_name or getattr(getattr(pipe, "cfg", None), "name", "custom"),
                      width=width, height=height, fps=float(pipe.fps), embedded_default=bool(pipe.embedded_default),
                      about=getattr(getattr(pipe, "cfg", None), "about", "") if pipe.embedded_default else "")
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
    app.router.add_post("/api/offer", api.offer)
    app.router.add_delete("/api/sessions/{session}", api.end_session)
    app.router.add_get("/api/control", api.control_socket)
    app.router.add_get("/api/state", api.state)
    app.router.add_post("/api/prompt", api.prompt)
    app.router.add_post("/api/command", api.command)
    app.router.add_get("/api/recordings", api.recordings_list)
    app.router.add_get("/api/recordings/{name}", api.recording_file)
    app.router.add_get("/api/health", api.health)
    app.router.add_get("/metrics", api.metrics)
    whep.routes(app, lambda request: request.app[SESSIONS], authorize=api.whep_access)
    app.router.add_get("/api/osc", api.osc_table)
    if osc is not None and osc.enabled:
        app[OSC] = OscServer(hub, osc)       # OSC over UDP (server/control/osc.py)
        app[OSC].limit = limits.per_osc_sender()
    if whip is not None:                     # WHIP publish into an SFU (server/media/whip.py)
        # the SFU gets the shared encoder's packets, like every viewer; its picture-loss requests reach it
        app[WHIP] = WhipPublisher(whip, sessions.encoder.subscribe, on_sender=sessions.encoder.watch_keyframe_requests)
    if gst_sink is not None:                 # every frame into a GStreamer pipeline (server/media/gst_sink.py)
        app[GST_SINK] = GstSink(engine, gst_sink)
    app.router.add_get("/", pages.index)
    app.router.add_get("/projector", pages.page("projector.html"))
    app.router.add_get("/watch", pages.page("watch.html"))
    app.router.add_route("*", "/{path:.*}", pages.static_file)   # last: client files, and 404 or 405 for the rest
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
    quiet_sctp_goodbyes(asyncio.get_running_loop())
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


def _outlets(app: web.Application) -> dict[str, int]:
    """Viewers that are not sessions: the WHIP publisher (publishing) and the GStreamer sink (running)."""
    return {"whip": int(WHIP in app and app[WHIP].stats().get("state") == "publishing"),
            "gstreamer": int(GST_SINK in app and bool(app[GST_SINK].stats().get("running")))}
