"""`GET /metrics`: the stream's figures in Prometheus's text format (prometheus-client).

Most figures are read when Prometheus scrapes, from the objects that own them (engine,
frame bus, shared encoder, sessions, recorder, control hub), so nothing is counted twice and
nothing needs updating per frame. Latencies that come one per event are histograms, fed by
the engine's `prompt_applied` events: the switch latency (command received -> first block
under the new prompt generated) and the re-cache time of that block; prompt-to-photon, fed
by the viewers' reports (server.media.photon): command received -> the new prompt on a viewer's
screen, as a histogram over all viewers and the latest per viewer connected now.

The names follow Prometheus's conventions, which `promtool check metrics` enforces (tests/
test_metrics.py runs it): durations in seconds, the base unit, with the unit last in the name
(`_seconds`), counters ending in `_total`. Renamed in 0.1 without aliases (pre-1.0):
longlive_block_milliseconds -> longlive_block_seconds, longlive_encoder_milliseconds_per_frame ->
longlive_encoder_frame_seconds, longlive_{generated,playback}_fps -> ..._frames_per_second.

    longlive_frames_generated_total, longlive_blocks_generated_total   counters
    longlive_generated_frames_per_second, longlive_playback_frames_per_second   (last stats)
    longlive_block_seconds{part="dit"|"decode"}                        the last block
    longlive_switch_latency_seconds, longlive_recache_seconds          histograms
    longlive_prompt_to_photon_seconds                                  histogram, every viewer's reports
    longlive_viewer_prompt_to_photon_seconds{viewer=N}                 the latest, per viewer connected
    longlive_encoder_frame_seconds                                     the shared encoder, mean per frame
    longlive_encoder_frames_total, longlive_encoder_keyframes_total, longlive_encoder_bytes_total
    longlive_frame_bus_buffered_frames, longlive_frame_bus_capacity_frames
    longlive_viewers{kind="page"|"whep"|"whip"|"gstreamer"}, longlive_controllers
    longlive_sink_dropped_blocks_total{sink=...}                       blocks a sink lost
    longlive_recording, longlive_recording_seconds
    longlive_enhancer_errors_total                                     AI calls that fell back
    longlive_engine_restarts_total, longlive_engine_status{status=...}
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .protocol import Event, PromptApplied

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
RECACHE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class StreamMetrics:
    def __init__(self, engine: Any, hub: Any, sessions: Any,
                 outlets: Callable[[], dict[str, int]] = lambda: {}):
        """`outlets`: viewers that are not sessions (the WHIP publisher, the GStreamer sink), by kind."""
        self.engine, self.hub, self.sessions, self.outlets = engine, hub, sessions, outlets
        self.registry = CollectorRegistry(auto_describe=True)
        self.switch_latency = Histogram("longlive_switch_latency_seconds",
                                        "From a prompt command received to the first block under it generated",
                                        buckets=LATENCY_BUCKETS, registry=self.registry)
        self.recache = Histogram("longlive_recache_seconds", "Re-caching the KV window under a new prompt",
                                 buckets=RECACHE_BUCKETS, registry=self.registry)
        self.photon = Histogram("longlive_prompt_to_photon_seconds",
                                "From a prompt command received to its first frame on a viewer's screen "
                                "(reported by the viewer)", buckets=LATENCY_BUCKETS, registry=self.registry)
        observers = getattr(hub, "photon_observers", None)
        if observers is not None:
            observers.append(lambda p: self.photon.observe(p.latency_s))
        self.registry.register(_Figures(self))

    def observe(self, event: Event) -> None:
        """An engine event (subscribe this to the engine)."""
        if isinstance(event, PromptApplied):
            self.switch_latency.observe(max(0.0, event.latency_ms) / 1e3)
            if event.recache_ms > 0:
                self.recache.observe(event.recache_ms / 1e3)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Figures:
    """What is read at scrape time."""

    def __init__(self, metrics: StreamMetrics):
        self.m = metrics

    def describe(self) -> list[Metric]:
        return []          # (figures are collected only when scraped)

    def collect(self) -> Iterator[Metric]:
        m = self.m
        engine, bus = m.engine, m.engine.bus
        state, timing = engine.state(), engine.timing()
        stats = m.hub._last_stats
        yield _counter("longlive_frames_generated", "Video frames generated since the server started", bus.next_seq)
        yield _counter("longlive_blocks_generated", "Generator blocks made since the server started", state.blocks)
        yield _gauge("longlive_generated_frames_per_second",
                     "Frames the engine published per second (a few seconds' window)",
                     (stats.generated_fps or 0.0) if stats else 0.0)
        yield _gauge("longlive_playback_frames_per_second", "How fast the playhead moved over the last second, "
                     "in frames per second", stats.fps if stats else 0.0)
        block = GaugeMetricFamily("longlive_block_seconds", "The last block's time in seconds, by part",
                                  labels=["part"])
        block.add_metric(["dit"], timing.dit_ms / 1e3)
        block.add_metric(["decode"], timing.decode_ms / 1e3)
        yield block
        yield _gauge("longlive_frame_bus_buffered_frames", "Frames generated but not yet played", bus.ahead())
        yield _gauge("longlive_frame_bus_capacity_frames", "Frames the bus ring holds", bus.capacity)
        encoder = getattr(m.sessions, "encoder", None)
        if encoder is not None:
            e = encoder.stats()
            yield _gauge("longlive_encoder_frame_seconds", "Encoding one frame in the shared encoder, mean, in seconds",
                         e["encode_ms"] / 1e3)
            yield _counter("longlive_encoder_frames", "Frames the shared encoder encoded (once for every viewer)",
                           e["frames"])
            yield _counter("longlive_encoder_keyframes", "Keyframes the shared encoder made", e["keyframes"])
            yield _counter("longlive_encoder_bytes", "Bytes the shared encoder made", e["bytes"])
        viewers = GaugeMetricFamily("longlive_viewers", "Viewers now, by kind", labels=["kind"])
        kinds = {"page": 0, "whep": 0, "whip": 0, "gstreamer": 0}
        kinds.update(m.sessions.counts() if hasattr(m.sessions, "counts") else {})
        kinds.update(m.outlets())
        for kind, n in kinds.items():
            viewers.add_metric([kind], n)
        yield viewers
        meter = getattr(m.hub, "photon", None)
        if meter is not None:
            photon = GaugeMetricFamily("longlive_viewer_prompt_to_photon_seconds",
                                       "The latest prompt-to-photon latency at each viewer connected now",
                                       labels=["viewer"])
            for number, seconds in sorted(meter.latest.items()):
                photon.add_metric([str(number)], seconds)
            yield photon
        yield _gauge("longlive_controllers", "Control channels connected (data channels, WebSockets, OSC replies)",
                     m.hub.count)
        dropped = CounterMetricFamily("longlive_sink_dropped_blocks", "Blocks a sink that must see every frame lost",
                                      labels=["sink"])
        for name, n in engine.dropped_blocks().items():
            dropped.add_metric([name], n)
        yield dropped
        rec = m.hub.recorder.status() if m.hub.recorder is not None else None
        yield _gauge("longlive_recording", "1 while a recording runs", 1 if rec else 0)
        yield _gauge("longlive_recording_seconds", "Seconds of video in the recording running", rec["seconds"] if rec else 0)
        yield _counter("longlive_enhancer_errors", "AI prompt enhancements that fell back to the text as written",
                       m.hub.enhancer_errors)
        yield _counter("longlive_engine_restarts", "Engine restarts after a failure", state.restarts)
        status = GaugeMetricFamily("longlive_engine_status", "1 for the engine's status now", labels=["status"])
        for s in ("running", "restarting", "stopped"):
            status.add_metric([s], 1 if state.status == s else 0)
        yield status


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=float(value))
