"""Recording the live stream: every frame, crash-safe, a valid sidecar at all times, errors that stop
only the recording.

The engine runs the fake pipeline (test_engine) stepped with an injected clock, or the real
server as a subprocess; files are read back with PyAV and the timeline module.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest

from server.protocol import ErrorEvent, PromptCommand, RecordingEvent
from server.keeping.recorder import NAME, Recorder, RecordingError
from studio.sidecar import Recipe, Source
from studio.timeline import Timeline
from studio.videofile import FragmentedVideoWriter
from test_engine import DEADLINE_S, FakePipeline, new_engine, run_until_idle, settle, wait_until
from test_framebus import FakeClock
from test_webrtc import start_server, stop_server


def source(pipe: FakePipeline) -> Source:
    w, h = pipe.size
    return Source(config="fake", weights="embedded", fps=pipe.fps, latent_frames_per_block=3, width=w, height=h,
                  denoising_steps=(1000, 750, 500, 250), seed=7)


class Rig:
    """Engine (fake pipeline, fake clock) + recorder into a folder; events collected."""

    def __init__(self, folder: Path, **recorder_kw):
        self.pipe, self.clock = FakePipeline(size=(32, 16)), FakeClock()
        self.engine = new_engine(self.pipe, prompt="first", seed=7, clock=self.clock)
        self.events: list = []
        self.lock = threading.Lock()
        self.recorder = Recorder(self.engine, folder, lambda: source(self.pipe), emit=self.emit, **recorder_kw)
        self.engine.begin()

    def emit(self, event) -> None:
        with self.lock:
            self.events.append(event)

    def play(self, seconds: float) -> None:
        """Let `seconds` of playback pass, generating as the engine asks."""
        for _ in range(round(seconds * 16)):
            self.clock.advance(1 / 16)
            run_until_idle(self.engine)

    def of(self, kind) -> list:
        with self.lock:
            return [e for e in self.events if isinstance(e, kind)]


def decoded_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as f:
        return [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]


def test_a_recording_has_every_generated_frame_and_a_sidecar_that_says_what_made_them(tmp_path):
    rig = Rig(tmp_path)
    run_until_idle(rig.engine)
    generated_before = rig.engine.bus.next_seq
    info = rig.recorder.start()
    assert NAME.match(info["name"]) and (tmp_path / info["name"]).is_file()
    with pytest.raises(RecordingError, match="already recording"):
        rig.recorder.start()
    rig.play(2)
    rig.engine.submit(PromptCommand(text="second"))
    settle(rig.engine)
    rig.play(2)
    recorded = rig.engine.bus.next_seq - generated_before
    done = rig.recorder.stop()
    assert done["frames"] == recorded
    assert [e.status for e in rig.of(RecordingEvent)] == ["started", "stopped"]

    frames = decoded_frames(tmp_path / info["name"])
    assert len(frames) == recorded and frames[0].shape == (16, 32, 3)
    # the fake pipeline writes the frame's number into green: the first recorded frame is the one after
    assert abs(int(frames[0][..., 1].mean()) - generated_before % 256) <= 3
    sidecar = Timeline.load(tmp_path / info["sidecar"])
    recipe = Recipe.from_timeline(sidecar)
    assert sum(b["frames"] for b in sidecar.longlive["blocks"]) == recorded
    assert [s.main_prompt().text for s in sidecar.segments] == ["first", "second"]
    assert sidecar.segments[0].start == 0.0 and sidecar.segments[-1].end == pytest.approx(recorded / 16)
    assert recipe.runs[0].first_block == 2 and recipe.runs[0].lineage.seed == 7
    assert recipe.runs[0].lineage.changes[0].prompt == "second"
    assert sidecar.settings.width == 32 and sidecar.settings.seed == 7
    assert rig.recorder.status() is None and not rig.recorder.recording
    assert rig.recorder.stop() is None


class FullDisk:
    """A file that takes `room` bytes and then fails like a full disk."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data) -> int:
        if self.room < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def test_a_full_disk_stops_the_recording_with_an_error_and_the_stream_keeps_its_rate(tmp_path):
    def writer(file, src):
        return FragmentedVideoWriter(FullDisk(file, room=2000), src.width, src.height, round(src.fps))

    rig = Rig(tmp_path, writer_factory=writer)
    run_until_idle(rig.engine)
    info = rig.recorder.start()
    rig.play(8)
    wait_until(lambda: rig.of(RecordingEvent)[-1].status == "failed", "the recording to fail")
    failed = rig.of(RecordingEvent)[-1]
    assert "No space left on device" in failed.error
    assert any("the recording stopped: cannot write the recording: No space left on device" in e.message
               for e in rig.of(ErrorEvent))
    assert not rig.recorder.recording and rig.engine._sinks == []
    # the stream goes on at its rate: a minute of playback generates a minute of frames
    before = rig.engine.bus.next_seq
    rig.play(60)
    assert abs(rig.engine.bus.next_seq - before - 60 * 16) <= 12
    # what was written before the disk filled is kept, and its sidecar is valid
    assert (tmp_path / info["name"]).stat().st_size > 0
    assert Timeline.load(tmp_path / info["sidecar"]).longlive["blocks"]
    rig.recorder.start()                                   # a new recording can start (and fail) again
    assert rig.recorder.recording


def test_a_recorder_that_falls_behind_reports_the_lost_blocks(tmp_path):
    gate = threading.Event()

    entered = threading.Event()

    class SlowWriter:
        frames = 0

        def write(self, frames):
            entered.set()
            assert gate.wait(DEADLINE_S)
            self.frames += len(frames)

        def close(self):
            pass

        def abort(self):
            pass

    rig = Rig(tmp_path, writer_factory=lambda file, src: SlowWriter(), sink_blocks=2)
    run_until_idle(rig.engine)
    info = rig.recorder.start()
    blocks = rig.engine.state().blocks
    while rig.engine.state().blocks == blocks:            # one block, which the writer gets stuck on
        rig.play(1 / 16)
    assert entered.wait(DEADLINE_S)
    blocks = rig.engine.state().blocks
    while rig.engine.state().blocks < blocks + 7:         # 7 more: 2 wait in the queue, 5 are lost
        rig.play(1 / 16)
    gate.set()
    rig.recorder.stop()
    lost = [e.message for e in rig.of(ErrorEvent)]
    assert lost == ["the recorder fell behind and lost 5 block(s) at the end; the recording has a gap there"]
    events = Timeline.load(tmp_path / info["sidecar"]).longlive["events"]
    assert [e["kind"] for e in events] == ["start", "dropped"] and events[1]["blocks"] == 5
    assert events[1]["block"] == 3


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def state(url: str) -> dict:
    return json.loads(get(url + "/api/state"))


def wait_for(predicate, what: str, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


@pytest.mark.integration      # `longlive serve` as a program
def test_serve_records_from_the_start_over_http_and_a_kill_9_leaves_a_playable_file(tmp_path):
    proc, url = start_server("--record", str(tmp_path))
    try:
        first = wait_for(lambda: state(url)["recording"], "the recording at start")
        wait_for(lambda: state(url)["generated"] >= 40, "frames")
        assert post(url + "/api/command", {"type": "record", "on": False}) == \
            (202, {"type": "ack", "id": None, "command": "record"})
        wait_for(lambda: state(url)["recording"] is None, "the recording to stop")
        assert post(url + "/api/command", {"type": "record", "on": False})[0] == 409
        listed = json.loads(get(url + "/api/recordings"))["files"]
        assert {f["name"] for f in listed} == {first["name"], first["sidecar"]}
        video = get(url + first["url"])
        (tmp_path / "downloaded.mp4").write_bytes(video)
        sidecar = Timeline.from_json(get(url + "/api/recordings/" + first["sidecar"]))
        recorded = sum(b["frames"] for b in sidecar.longlive["blocks"])
        assert len(decoded_frames(tmp_path / "downloaded.mp4")) == recorded > 0
        assert sidecar.longlive["runs"][0]["first_block"] == 0 and sidecar.longlive["events"][0]["kind"] == "start"
        for bad in ("..%2F..%2Fetc%2Fpasswd", "x.mp4", first["name"].replace(".mp4", ".txt")):
            with pytest.raises(urllib.error.HTTPError) as e:
                get(url + "/api/recordings/" + bad)
            assert e.value.code == 404

        # a second recording, then the server is killed outright
        code, _ = post(url + "/api/command", {"type": "record", "on": True, "id": 2})
        assert code == 202
        second = wait_for(lambda: state(url)["recording"], "the second recording")
        wait_for(lambda: (state(url)["recording"] or {}).get("frames", 0) >= 60, "frames in the second recording")
        generated = state(url)["recording"]["frames"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            stop_server(proc)
    path = tmp_path / second["name"]
    frames = decoded_frames(path)
    assert generated - 16 <= len(frames), (len(frames), generated)          # at most about a second lost
    sidecar = Timeline.load(tmp_path / second["sidecar"])                  # valid after the crash
    hashes = sidecar.longlive["blocks"]
    assert hashes and sum(b["frames"] for b in hashes) <= len(frames) + 24
    assert frames[0].shape == (192, 320, 3)


def test_record_commands_are_checked_like_every_message():
    from server.protocol import ProtocolError, read_command

    for bad, says in ((b'{"type": "record"}', "needs the field 'on'"),
                      ('{"type": "record", "on": 1}', "record.on must be true or false, not an integer"),
                      ('{"type": "rewind", "segment": -1}', "rewind.segment must be between 0 and"),
                      ('{"type": "rewind", "segment": 1, "fresh": "yes"}', "rewind.fresh must be true or false"),
                      ('{"type": "timeline", "timeline": {"prompts": []}}', "timeline.timeline: prompts"),
                      ('{"type": "timeline", "timeline": 3}', "timeline.timeline: ")):
        with pytest.raises(ProtocolError) as e:
            read_command(bad.decode() if isinstance(bad, bytes) else bad)
        assert says in str(e.value), str(e.value)
