"""`longlive render` from the command line: a Scope timeline to a file, its sidecar, and one line per mistake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av

REPO = Path(__file__).resolve().parents[1]

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


def longlive(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "longlive", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "LONGLIVE_WEIGHTS": "", "PYTHONPATH": str(REPO)})


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
    assert not list(tmp_path.glob(".*.render"))                            # the work folder is gone

    # rendering the render's sidecar makes the same frames, and says so
    again = longlive("render", "show.render.timeline.json", "-o", "again.mp4", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "the frames equal the recording's: all 5 blocks match its hashes" in again.stdout


def test_render_mistakes_are_one_line_each(tmp_path):
    (tmp_path / "bad.json").write_text('{"prompts": [{"startTime": 0, "endTime": "soon", "prompts": []}]}')
    (tmp_path / "ok.json").write_text(json.dumps(TIMELINE))
    for args, says in ((["missing.json"], "missing.json does not exist"),
                       (["bad.json"], "prompts[0].endTime must be a number"),
                       (["ok.json", "-o", "x.avi"], "name the file .mp4"),
                       (["ok.json", "--resolution", "wide"], "write it WIDTHxHEIGHT"),
                       (["ok.json", "--seed", "-1"], "out of range")):
        done = longlive("render", *args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], (args, done.stderr)
    assert not list(tmp_path.glob("*.mp4"))
