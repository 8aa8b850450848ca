"""What the aiohttp application holds, by key: the engine, the control hub, the WebRTC sessions,
the open WebSockets, the recorder, the metrics, and the optional outlets (OSC, WHIP, the
GStreamer sink). `app` fills them in; the routes (`api`, `pages`) read them."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from .control.hub import ControlHub
from .control.osc import OscServer
from .door.roles import Access
from .engine import Engine
from .keeping.recorder import Recorder
from .media.gst_sink import GstSink
from .media.webrtc import SessionManager
from .media.whip import WhipPublisher
from .metrics import StreamMetrics

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
