"""`serve --gst-sink PIPELINE`: every generated frame through an appsrc into a GStreamer pipeline.

The engine runs the fake pipeline (test_engine), whose pixels encode (seed, frame number), so
a lossless path (raw RGB into a file) is compared byte for byte with what the engine made and
an H.264 file (x264enc ! mp4mux) is read back with PyAV. Errors stop only the sink.

These tests need GStreamer and PyGObject (`make gstreamer`); they skip, saying why, only where
those cannot be imported, and fail instead under `make test` (LONGLIVE_REQUIRE_GSTREAMER=1).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from longlive.cli import main
from server import serve
from server.block_sink import BlockSink
from server.media.gst_sink import GstPipelineError, GstSink, GstUnavailable, check, gst, launch_line
from server.protocol import ErrorEvent
from test_engine import DEADLINE_S, FakePipeline, new_engine, run_until_idle, wait_until
from test_framebus import FakeClock
from test_webrtc import free_port


def _missing() -> str | None:
    try:
        gst()
    except GstUnavailable as e:
        return str(e)
    return None


MISSING = _missing()
needs_gst = pytest.mark.skipif(MISSING is not None and not os.environ.get("LONGLIVE_REQUIRE_GSTREAMER"),
                               reason=f"GStreamer cannot be imported here: {MISSING}")


class Rig:
    """Engine (fake pipeline, fake clock) + one GStreamer sink; its events collected; a reference
    BlockSink keeps every block the engine made."""

    def __init__(self, pipeline: str, size=(30, 16), **sink_kw):
        self.pipe, self.clock = FakePipeline(size=size), FakeClock()
        self.engine = new_engine(self.pipe, prompt="first", seed=7, clock=self.clock)
        self.events: list = []
        self.lock = threading.Lock()
        self.made = BlockSink(1000)
        self.engine.add_sink(self.made)
        self.sink = GstSink(self.engine, pipeline, emit=self.emit, **sink_kw)
        self.sink.start()
        self.engine.begin()

    def emit(self, event) -> None:
        with self.lock:
            self.events.append(event)

    def play(self, seconds: float) -> None:
        for _ in range(round(seconds * 16)):
            self.clock.advance(1 / 16)
            run_until_idle(self.engine)

    def errors(self) -> list[str]:
        with self.lock:
            return [e.message for e in self.events if isinstance(e, ErrorEvent)]

    def generated(self) -> np.ndarray:
        self.made.close()
        blocks = []
        while (blk := self.made.take(0)) is not None:
            blocks.append(blk.frames)
        return np.concatenate(blocks)


def no_sink_threads() -> bool:
    return not any(t.name.startswith("longlive-gst") for t in threading.enumerate())


def raw_frames(path: Path, width: int, height: int) -> np.ndarray:
    """Raw RGB as GStreamer writes it (rows padded to 4 bytes), unpadded."""
    stride = (width * 3 + 3) & ~3
    data = np.frombuffer(path.read_bytes(), np.uint8)
    assert data.size % (stride * height) == 0, f"{data.size} bytes is not a whole number of {width}x{height} frames"
    return data.reshape(-1, height, stride)[:, :, :width * 3].reshape(-1, height, width, 3)


# -- every frame, exactly ---------------------------------------------------------------------------------
@pytest.mark.integration
@needs_gst
def test_every_generated_frame_reaches_the_pipeline_in_order_byte_for_byte(tmp_path):
    out = tmp_path / "stream.rgb"
    # 30 pixels wide: 90 bytes a row, which GStreamer pads to 92 (the sink must lay frames out so)
    rig = Rig(f"videoconvert ! video/x-raw,format=RGB ! filesink location={out}", size=(30, 16))
    rig.play(3)
    stats = rig.sink.stop(timeout=DEADLINE_S)
    made = rig.generated()
    assert len(made) == rig.engine.bus.next_seq and len(made) > 40
    assert stats["frames"] == len(made) and stats["lost_blocks"] == 0 and stats["error"] is None
    got = raw_frames(out, 30, 16)
    assert got.shape == made.shape
    assert np.array_equal(got, made)
    # and they are the fake pipeline's frames: red the seed, green the frame number
    assert all(int(f[0, 0, 0]) == 7 and int(f[0, 0, 1]) == i % 256 for i, f in enumerate(got))
    assert rig.errors() == [] and no_sink_threads()


@pytest.mark.integration
@needs_gst
def test_the_server_feeds_an_mp4_finalised_at_shutdown_with_exact_timing(tmp_path):
    """The app wiring: create_app(gst_sink=...) starts the sink with the stream, `/api/health`
    shows it, shutdown sends EOS before the engine stops, so mp4mux writes a whole file."""
    from aiohttp.test_utils import TestClient, TestServer

    from server.app import create_app
    from server.engine import Engine

    assert gst()[0].ElementFactory.find("x264enc") is not None, "x264enc is missing: run `make gstreamer`"
    out = tmp_path / "show.mp4"
    engine = Engine(FakePipeline(size=(32, 16)), prompt="first", seed=5)
    app = create_app(engine, recordings=tmp_path / "rec", gst_sink=f"x264enc ! mp4mux ! filesink location={out}")

    async def run() -> dict:
        async with TestClient(TestServer(app)) as client:
            deadline = time.monotonic() + DEADLINE_S
            while engine.bus.next_seq < 40:
                assert time.monotonic() < deadline, "the stream did not start"
                await asyncio.sleep(0.05)
            health = await (await client.get("/api/health")).json()
            assert health["gst_sink"]["running"] and health["gst_sink"]["error"] is None
            assert "longlive-gst-sink" in health["threads"]
        return health

    asyncio.run(run())
    assert not engine.running and no_sink_threads()
    from server.app import GST_SINK
    stats = app[GST_SINK].stats()
    generated = engine.bus.next_seq
    assert stats["error"] is None and stats["lost_blocks"] == 0
    # the sink left before the engine stopped: at most the block in progress then is not in the file
    assert generated - 12 <= stats["frames"] <= generated
    with av.open(str(out)) as f:
        frames = list(f.decode(video=0))
    assert len(frames) == stats["frames"]
    assert (frames[0].width, frames[0].height) == (32, 16)
    assert [float(fr.pts * fr.time_base) for fr in frames] == pytest.approx([i / 16 for i in range(len(frames))])
    for i in (0, 10, len(frames) - 1):              # lossy, but the frame number in green survives
        rgb = frames[i].to_ndarray(format="rgb24")
        assert abs(float(rgb[..., 1].mean()) - i % 256) <= 3 and abs(float(rgb[..., 0].mean()) - 5) <= 3


# -- errors stop the sink, never the stream ------------------------------------------------------------------
@pytest.mark.integration
@needs_gst
@pytest.mark.parametrize("pipeline, says", [
    ("filesink location=/nonexistent-folder/out.rgb", "Could not open file"),           # at start
    ("video/x-raw,format=RGB,width=99 ! fakesink", "not-negotiated"),                  # at the first frame
], ids=["missing-folder", "not-negotiated"])
def test_a_pipeline_failing_at_runtime_is_one_error_event_and_the_stream_goes_on(pipeline, says):
    rig = Rig(pipeline)
    rig.play(1)
    wait_until(lambda: rig.errors(), "the sink's error event")
    assert not rig.sink.running and rig.sink not in rig.engine._sinks     # out of the engine
    before = rig.engine.bus.next_seq
    rig.play(2)
    assert rig.engine.bus.next_seq > before + 20                           # the stream goes on
    rig.sink.stop(timeout=DEADLINE_S)
    errors = rig.errors()
    assert len(errors) == 1, errors
    assert errors[0].startswith("the GStreamer sink stopped: ") and says in errors[0] and "\n" not in errors[0]
    assert rig.sink.stats()["error"] in errors[0] and no_sink_threads()


@pytest.mark.integration
@needs_gst
def test_blocks_lost_to_a_full_queue_are_an_error_event(tmp_path):
    # sync=true: the sink plays frames at 16 fps of real time while the fake clock races ahead
    rig = Rig("fakesink sync=true", sink_blocks=1)
    rig.play(3)                        # 5 blocks in a few milliseconds; the sink holds one, pushes one
    stats = rig.sink.stop(timeout=DEADLINE_S)
    made_blocks = len(rig.made)
    errors = rig.errors()
    assert stats["lost_blocks"] >= 1 and stats["blocks"] + stats["lost_blocks"] == made_blocks, (stats, made_blocks)
    assert errors and all("the GStreamer sink fell behind and lost" in m and "gap" in m for m in errors)
    assert sum(int(m.split("lost ")[1].split()[0]) for m in errors) == stats["lost_blocks"]


# -- at start: one sentence, exit 2, before the model loads ----------------------------------------------------
def test_a_converter_is_added_unless_the_pipeline_starts_with_one():
    line = launch_line("x264enc ! mp4mux ! filesink location=a.mp4", 832, 480, 16.0)
    assert line.startswith("appsrc name=longlive format=time is-live=true do-timestamp=false ")
    assert "caps=video/x-raw,format=RGB,width=832,height=480,framerate=16/1," in line
    assert line.endswith(" ! videoconvert ! x264enc ! mp4mux ! filesink location=a.mp4")
    assert launch_line("videoconvert ! fakesink", 8, 8, 30000 / 1001).endswith("/1001,pixel-aspect-ratio=1/1 ! "
                                                                                "videoconvert ! fakesink")
    assert launch_line(" autovideoconvert ! fakesink").endswith("! autovideoconvert ! fakesink")


def serve_once(capsys, monkeypatch, *argv: str) -> tuple[int, str]:
    """`longlive serve ARGV` in-process; the model must not load (the check comes first)."""
    def no_model(args):
        raise AssertionError("the model was loaded before the --gst-sink check")
    monkeypatch.setattr(serve, "build_engine", no_model)
    rc = main(["serve", "--port", str(free_port()), "--log-level", "warning", *argv])
    return rc, capsys.readouterr().err


@pytest.mark.integration
@needs_gst
@pytest.mark.parametrize("pipeline, says", [
    ("videoconvert ! nosuchelement", 'no element "nosuchelement"'),
    ("x264enc ! ! filesink", "syntax error"),
    ("filesink locatoin=out.mp4", 'no property "locatoin"'),
    ("  ", "needs a pipeline"),
], ids=["no-element", "syntax", "no-property", "empty"])
def test_a_bad_pipeline_is_one_sentence_and_exit_2_before_the_model_loads(capsys, monkeypatch, pipeline, says):
    rc, err = serve_once(capsys, monkeypatch, "--gst-sink", pipeline)
    assert rc == 2
    assert err.startswith("longlive: ") and err.count("\n") == 1 and says in err, err
    with pytest.raises(GstPipelineError, match="--gst-sink"):
        check(pipeline)


@pytest.mark.integration
@pytest.mark.parametrize("how", ["no-pygobject", "no-typelib"])
def test_without_pygobject_or_gstreamer_one_sentence_names_what_to_install(capsys, monkeypatch, how):
    if how == "no-pygobject":
        monkeypatch.setitem(sys.modules, "gi", None)           # `import gi` raises ImportError
    else:
        gi = pytest.importorskip("gi", reason="PyGObject is not installed: the no-pygobject case covers it")

        def require_version(namespace, version):
            raise ValueError(f"Namespace {namespace} not available")
        monkeypatch.setattr(gi, "require_version", require_version)
    with pytest.raises(GstUnavailable) as caught:
        check("x264enc ! mp4mux ! filesink location=out.mp4")
    message = str(caught.value)
    assert "make gstreamer" in message and 'pip install "PyGObject<3.51"' in message and "\n" not in message
    assert ("PyGObject" if how == "no-pygobject" else "GStreamer") in message.split(":")[0]
    rc, err = serve_once(capsys, monkeypatch, "--gst-sink", "fakesink")
    assert rc == 2 and err == f"longlive: {message}\n"
