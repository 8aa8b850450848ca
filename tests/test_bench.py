"""`longlive bench` on the tiny config on the CPU: it runs and its JSON has every field."""

from __future__ import annotations

import json
import os
import queue
import resource
import subprocess
import sys
import threading
import time

import pytest

from golden import REPO
from streaming.config import EMBEDDED_DEFAULT

FIELDS = {
    "dit_ms_per_block", "decode_ms_per_block", "end_to_end_fps", "time_to_first_frame_ms", "prompt_switch_ms",
    "recache_ms", "peak_memory_gb", "device", "torch", "triton", "python", "dit_tflop_per_block",
    "decode_tflop_per_block", "floor_ms_per_block", "ratio_to_floor", "kernels", "resolution", "dtype",
    # a never-seen prompt: asked -> its first block, and the longest gap between blocks meanwhile
    "new_prompt_switch_background_ms", "new_prompt_stall_background_ms", "new_prompt_switch_inline_ms",
    "new_prompt_stall_inline_ms", "new_prompt_switch_background_offload_ms", "new_prompt_stall_background_offload_ms",
    "new_prompt_switch_inline_offload_ms", "new_prompt_stall_inline_offload_ms",
}


@pytest.mark.slow
def test_bench_tiny_cpu_writes_every_field(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "longlive", "bench", "--config", "tiny", "--device", "cpu",
                          "--blocks", "2", "--warmup", "1", "--peak-tflops", "1.0", "--json", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    r = json.loads(out.read_text())
    assert FIELDS <= r.keys(), FIELDS - r.keys()
    assert r["device_type"] == "cpu" and r["peak_memory_gb"] is None
    assert r["dit_ms_per_block"] > 0 and r["decode_ms_per_block"] > 0 and r["end_to_end_fps"] > 0
    assert r["first_block_video_frames"] == 9 and r["video_frames_per_block"] == 12
    # FLOPs counted from the config: 5 forwards per block
    assert abs(r["dit_tflop_per_block"] - 5 * r["dit_tflop_per_forward"]) < 1e-9
    assert r["ratio_to_floor"] > 1  # a CPU at an assumed 1 TFLOP/s floor cannot beat it
    kernels = {k["kernel"] for k in r["kernels"] if "kernel" in k}
    assert {"attention self", "rms_norm_rope", "modulated_layer_norm", "gated_residual"} <= kernels
    assert "end-to-end" in run.stdout and "prompt switch" in run.stdout and "new prompt, resident" in run.stdout
    for mode in ("background", "inline"):
        # the gap between two blocks lies within the switch; nothing to offload on the CPU
        assert 0 < r[f"new_prompt_stall_{mode}_ms"] <= r[f"new_prompt_switch_{mode}_ms"]
        assert r[f"new_prompt_switch_{mode}_offload_ms"] is None and r[f"new_prompt_stall_{mode}_offload_ms"] is None


def test_bench_full_size_flops_match_the_arithmetic():
    """28 TFLOP per steady-state forward at 832x480 (facts: ~140 TFLOP per block of 5)."""
    from streaming import load_config
    from bench.speed import dit_flops
    f = dit_flops(load_config("longlive"))
    assert 27.5 < f["dit_tflop_per_forward"] < 29.0
    assert 138 < f["dit_tflop_per_block"] < 145


def _cap_memory() -> None:
    """(In the child) at most 6 GiB of address space: enough for the tiny default, far from the
    ~14 GB of the full model, so a regression to it fails at once instead of filling the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))


@pytest.mark.slow
def test_bench_without_config_on_a_cpu_runs_the_tiny_default_says_so_and_shows_progress():
    """No --config, no GPU: the embedded default, said in one line before anything slow, then a
    line per warm-up and measured block (the full model would print nothing for minutes)."""
    proc = subprocess.Popen([sys.executable, "-m", "longlive", "bench", "--blocks", "1", "--warmup", "1",
                             "--no-kernels"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "LONGLIVE_WEIGHTS": ""},
                            preexec_fn=_cap_memory)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr] + [lines.put(None)], daemon=True).start()
    seen: list[str] = []

    def wait_for(fragment: str, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {fragment!r} within {seconds} s; stderr so far:\n{''.join(seen)}")
            if line is None:
                raise AssertionError(f"bench ended (status {proc.wait()}) without {fragment!r}:\n{''.join(seen)}")
            seen.append(line)
            if fragment in line:
                return line

    try:
        said = wait_for("longlive bench:", 120)     # (importing torch is all that comes before it)
        assert said.strip() == (f"longlive bench: no GPU here, so the embedded default ({EMBEDDED_DEFAULT}) on the CPU; "
                                "--config longlive for the full model")
        assert [ln for ln in seen if "bench" in ln] == [said]          # the first thing it says
        assert EMBEDDED_DEFAULT in wait_for("bench: building", 60)
        wait_for("bench: warm-up block 1/", 120)
        wait_for("bench: measured block 1/1", 300)
    finally:
        proc.kill()
        proc.wait()


def test_an_explicit_config_is_honoured_and_gpu_sh_benches_the_full_model(monkeypatch):
    import torch

    from bench.speed import default_config
    from longlive import cli

    assert cli.build_parser().parse_args(["bench", "--config", "longlive"]).config == "longlive"
    assert cli.build_parser().parse_args(["bench"]).config is None          # chosen by the machine, below
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert default_config(torch.device("cuda", 0)) == (
        "longlive",
        f"the full longlive preset on cuda:0 (NVIDIA H100 80GB HBM3); --config {EMBEDDED_DEFAULT} for the embedded default")
    assert default_config(torch.device("cpu")) == (
        EMBEDDED_DEFAULT, f"--device cpu, so the embedded default ({EMBEDDED_DEFAULT}) on the CPU; --config longlive for the full model")
    # the GPU script names the full model itself rather than relying on the default
    script = (REPO / "bench" / "gpu.sh").read_text()
    assert '-m longlive bench --config "${BENCH_CONFIG:-longlive}"' in script
