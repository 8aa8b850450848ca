"""`longlive render` from the command line: a Scope timeline to a file, its sidecar, and one line per mistake."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import av

REPO = Path(__file__).resolve().parents[1]
SCOPE_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")   # Scope's exportedAt: "2025-10-27T15:51:04.242Z"

TIMELINE = {
    "prompts": [
        {"startTime": 0, "endTime": 1.5, "prompts": [{"text": "a lantern in fog", "weight": 100}]},
        {"startTime": 1.5, "endTime": 3.0, "prompts": [{"text": "a kite over dunes", "weight": 60},
                                                       {"text": "a kite over the sea", "weight": 40}],
         "transitionSteps": 2, "temporalInterpolationMethod": "slerp"},
    ],
    "settings": {"pipelineId": "longlive", "resolution": {"height": 50, "width": 70}, "seed": 4,
                 "denoisingSteps": [1000, 750, 500, 250], "noiseScale": 0.7},
    "version": "2.0",
}


# the same timeline as Scope exports it since March 2026: inside a workflow (*.scope-workflow.json)
WORKFLOW = {
    "format": "scope-workflow",
    "format_version": "1.0",
    "metadata": {"name": "show", "created_at": "2026-04-02T18:22:41.907Z", "scope_version": "0.2.4"},
    "pipelines": [{"pipeline_id": "longlive", "pipeline_version": "1.0.0", "source": {"type": "builtin"}, "loras": [],
                   "params": {"height": 50, "width": 70, "denoising_step_list": [1000, 750, 500, 250],
                              "noise_scale": 0.7, "base_seed": 4}, "role": "main"}],
    "timeline": {"entries": [
        {"start_time": 0, "end_time": 1.5, "prompts": [{"text": "a lantern in fog", "weight": 100}]},
        {"start_time": 1.5, "end_time": 3.0, "prompts": [{"text": "a kite over dunes", "weight": 60},
                                                         {"text": "a kite over the sea", "weight": 40}],
         "transition_steps": 2, "temporal_interpolation_method": "slerp"},
    ]},
    "prompts": [{"text": "a lantern in fog", "weight": 100}],
    "interpolation_method": "linear",
    "transition_steps": 4,
    "temporal_interpolation_method": "slerp",
}


def longlive(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`longlive COMMAND ...`; a render without `--config` renders the tiny preset (the sizes and
    the reference streams these tests compare with are the tiny preset's)."""
    if args[:1] == ("render",) and "--config" not in args:
        args = ("render", "--config", "tiny", *args[1:])
    return subprocess.run([sys.executable, "-m", "longlive", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "LONGLIVE_WEIGHTS": "", "PYTHONPATH": str(REPO)})


def test_render_a_scope_timeline_to_a_video_and_its_sidecar(tmp_path):
    (tmp_path / "show.json").write_text(json.dumps(TIMELINE))
    done = longlive("render", "show.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "rendering 64x48 instead of 70x50" in done.stderr               # the nearest size the model makes
    assert "segment" not in done.stderr           # blends and transitions play: no notice says they do not
    out = tmp_path / "show.render.mp4"
    assert f"wrote {out.name}" in done.stdout or f"wrote {out}" in done.stdout
    with av.open(str(out)) as f:
        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    assert len(frames) == 48 and frames[0].shape == (48, 64, 3)             # 3 s at 16 fps
    sidecar = json.loads((tmp_path / "show.render.timeline.json").read_text())
    assert [s["prompts"] for s in sidecar["prompts"]] == [
        [{"text": "a lantern in fog", "weight": 100}],
        [{"text": "a kite over dunes", "weight": 60}, {"text": "a kite over the sea", "weight": 40}]]
    assert [(s.get("transitionSteps"), s.get("temporalInterpolationMethod")) for s in sidecar["prompts"]] == \
        [(None, None), (2, "slerp")]
    assert sidecar["settings"]["seed"] == 4 and sidecar["longlive"]["runs"][0]["changes"] == \
        [{"block": 3, "prompts": [{"text": "a kite over dunes", "weight": 0.6}, {"text": "a kite over the sea", "weight": 0.4}],
          "transition": {"blocks": 2, "method": "slerp"}}]   # 1.5 s = frame 24: the first block at or after it is 3 (frame 33)
    assert SCOPE_STAMP.match(sidecar["exportedAt"]), sidecar["exportedAt"]  # stamped as Scope stamps exports
    assert not list(tmp_path.glob(".*.render"))                            # the work folder is gone

    # rendering the render's sidecar makes the same frames, and says so
    again = longlive("render", "show.render.timeline.json", "-o", "again.mp4", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "the frames equal the recording's: all 5 blocks match its hashes" in again.stdout


def test_render_a_scope_workflow_plays_its_timeline(tmp_path):
    (tmp_path / "show.scope-workflow.json").write_text(json.dumps(WORKFLOW, indent=2))
    done = longlive("render", "show.scope-workflow.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # the settings LongLive does not use are said once
    assert done.stdout.count("noise_scale") == 1 and \
        "show.scope-workflow.json: kept settings noise_scale as they are; LongLive does not use them" in done.stdout
    out = tmp_path / "show.render.mp4"
    with av.open(str(out)) as f:
        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    assert len(frames) == 48 and frames[0].shape == (48, 64, 3)             # its size and length, as the v2.0 file's
    sidecar = json.loads((tmp_path / "show.render.timeline.json").read_text())
    assert [s["prompts"] for s in sidecar["prompts"]] == [       # the blend and the glide play, as in the test above
        [{"text": "a lantern in fog", "weight": 100}],
        [{"text": "a kite over dunes", "weight": 60}, {"text": "a kite over the sea", "weight": 40}]]
    assert [(s.get("transitionSteps"), s.get("temporalInterpolationMethod")) for s in sidecar["prompts"]] == \
        [(None, None), (2, "slerp")]
    assert sidecar["settings"]["seed"] == 4 and sidecar["settings"]["denoisingSteps"] == [1000, 750, 500, 250]
    assert [c["block"] for c in sidecar["longlive"]["runs"][0]["changes"]] == [3]
    # the v2.0 file of the same timeline makes the same frames
    (tmp_path / "show.json").write_text(json.dumps(TIMELINE))
    assert longlive("render", "show.json", "-o", "v2.mp4", cwd=tmp_path).returncode == 0
    v2 = json.loads((tmp_path / "v2.timeline.json").read_text())
    assert v2["longlive"]["blocks"] == sidecar["longlive"]["blocks"]


def test_render_mistakes_are_one_line_each(tmp_path):
    (tmp_path / "bad.json").write_text('{"prompts": [{"startTime": 0, "endTime": "soon", "prompts": []}]}')
    (tmp_path / "ok.json").write_text(json.dumps(TIMELINE))
    broken = json.loads(json.dumps(WORKFLOW))
    broken["timeline"]["entries"][1]["start_time"] = "1.5"
    (tmp_path / "bad.scope-workflow.json").write_text(json.dumps(broken))
    (tmp_path / "empty.scope-workflow.json").write_text(json.dumps({**WORKFLOW, "timeline": None}))
    for args, says in ((["missing.json"], "missing.json does not exist"),
                       (["bad.json"], "prompts[0].endTime must be a number"),
                       (["bad.scope-workflow.json"], "timeline.entries[1].start_time must be a number"),
                       (["empty.scope-workflow.json"], "this Scope workflow has no timeline"),
                       (["ok.json", "-o", "x.avi"], "name the file .mp4"),
                       (["ok.json", "--resolution", "wide"], "write it WIDTHxHEIGHT"),
                       (["ok.json", "--seed", "-1"], "out of range")):
        done = longlive("render", *args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], (args, done.stderr)
    assert not list(tmp_path.glob("*.mp4"))


def short_timeline(seconds: float, size: tuple[int, int] | None = (64, 48)) -> dict:
    settings = {"seed": 2} if size is None else {"seed": 2, "resolution": {"width": size[0], "height": size[1]}}
    return {"prompts": [{"startTime": 0, "endTime": seconds, "prompts": [{"text": "a lantern in fog", "weight": 100}]}],
            "settings": settings, "version": "2.0"}


def said(stderr: str, fragment: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("longlive render: ") and fragment in ln]


def test_render_says_once_which_size_it_renders_at_why_and_how_to_change_it(tmp_path):
    (tmp_path / "own.json").write_text(json.dumps(short_timeline(0.5)))
    (tmp_path / "bare.json").write_text(json.dumps(short_timeline(0.5, size=None)))
    for args, line in (
            (["own.json"], "rendering at 64x48, the timeline's own resolution setting; --resolution WxH renders "
                           "another size (the tiny config's own is 320x192)"),
            (["own.json", "--resolution", "96x64", "-o", "wide.mp4"],
             "rendering at 96x64, as --resolution says; --resolution WxH renders another size "
             "(the tiny config's own is 320x192)"),
            (["bare.json"], "rendering at 320x192, the tiny config's own size; --resolution WxH renders another size")):
        done = longlive("render", *args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert said(done.stderr, "rendering at") == [f"longlive render: {line}"], (args, done.stderr)


def test_render_of_a_recording_that_began_mid_stream_says_first_that_it_replays_the_blocks_before(tmp_path):
    """The blocks before the recording are made again, unseen: said in one line with about how long,
    before the render proper begins."""
    import re

    sidecar = short_timeline(0.5)
    sidecar["longlive"] = {"format": 1, "config": "tiny", "weights": "embedded", "fps": 16,
                           "latent_frames_per_block": 3, "width": 64, "height": 48,
                           "runs": [{"prompt": "a lantern in fog", "seed": 2, "changes": [], "first_block": 6,
                                     "blocks": 1}], "blocks": [], "events": []}
    (tmp_path / "take.timeline.json").write_text(json.dumps(sidecar))
    done = longlive("render", "take.timeline.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    replay = said(done.stderr, "replaying")
    assert len(replay) == 1 and re.fullmatch(
        r"longlive render: the recording began 6 blocks into its live session: replaying those 6 blocks first "
        r"\(unseen\) to reach its start, about \d+ (s|min) \(\d+\.\d\d s a block\)", replay[0]), done.stderr
    lines = done.stderr.splitlines()
    assert lines.index(replay[0]) < lines.index(said(done.stderr, "chunk 1 of 1 done")[0])


def test_ctrl_c_of_a_render_says_what_it_kept_and_the_command_that_resumes(tmp_path):
    import queue
    import re
    import shlex
    import signal
    import threading

    (tmp_path / "long.json").write_text(json.dumps(short_timeline(20.0)))        # 27 blocks: 4 chunks
    # (SIGINT is Ctrl-C also when these tests run with it ignored, as a shell's background job does: a child
    # would inherit that, and Python then installs no KeyboardInterrupt handler)
    proc = subprocess.Popen([sys.executable, "-m", "longlive", "render", "long.json", "-o", "out.mp4"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LONGLIVE_WEIGHTS": "", "PYTHONPATH": str(REPO)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr] + [lines.put(None)], daemon=True).start()
    seen: list[str] = []
    try:
        while not (seen and "chunk 1 of 4 done" in seen[-1]):       # the first chunk is reported
            line = lines.get(timeout=600)
            assert line is not None, f"the render ended ({proc.wait()}) before its first chunk:\n{''.join(seen)}"
            seen.append(line)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=300) == 130
    finally:
        proc.kill()
        proc.wait()
    while (line := lines.get(timeout=120)) is not None:
        seen.append(line)
    stopped = [ln.strip() for ln in seen if "stopped" in ln]
    work = Path(".out.mp4.render")
    assert len(stopped) == 1 and re.fullmatch(
        rf"longlive render: stopped; kept the first (8|16|24) of 27 blocks \(the finished chunks\) in "
        rf"{re.escape(str(work))}; resume with: {re.escape(shlex.join([sys.executable, '-m', 'longlive']))} "
        rf"render long.json -o out.mp4 --resume",
        stopped[0]), "".join(seen)
    assert "Traceback" not in "".join(seen)
    assert (tmp_path / work / "chunk-00000.mp4").is_file() and not (tmp_path / "out.mp4").exists()

    # the command it gave continues the render to the whole video
    command = shlex.split(stopped[0].split("resume with: ", 1)[1])
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "LONGLIVE_WEIGHTS": "", "PYTHONPATH": str(REPO)})
    assert again.returncode == 0, again.stderr
    with av.open(str(tmp_path / "out.mp4")) as f:
        assert sum(1 for _ in f.decode(video=0)) == 320                        # 20 s at 16 fps
    assert not (tmp_path / work).exists()
