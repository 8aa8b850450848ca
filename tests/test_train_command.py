"""`longlive train`: the whole command end to end in its quick form (a few steps of every stage),
its manifest, its refusal to overwrite a run, and --resume."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from golden import REPO
from streaming.config import load_config

pytestmark = pytest.mark.slow


def _train(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "longlive", "train", "--quick", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_quick_run_writes_weights_a_manifest_and_resumes(tmp_path):
    out = tmp_path / "run"
    done = _train("--out", str(out), "--seed", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"weights and manifest.json in {out}" in done.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["quick"] and manifest["world_version"] >= 1
    assert manifest["command"] == f"longlive train --out {out} --seed 3 --quick"
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == entry["sha256"], name
    stages = {json.loads(line)["stage"] for line in (out / "losses.jsonl").read_text().splitlines()}
    assert stages == {"vae-short", "vae", "dit", "vae-colour"}
    # the weights are what the toy preset loads: the official key layout, the preset's shapes
    cfg = load_config("toy")
    dit = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    assert dit["patch_embedding.weight"].shape[:2] == (cfg.model.dim, cfg.model.in_dim)
    assert "encoder.conv1.weight" in load_file(str(out / "vae.safetensors"))
    # a second run into the same folder is refused in one line; --resume finds every stage done
    again = _train("--out", str(out))
    assert again.returncode == 2 and "already holds a run; --resume to continue it" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    resumed = _train("--out", str(out), "--seed", "3", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((out / "manifest.json").read_text())["files"] == manifest["files"]
