"""`longlive bench` on the tiny config on the CPU: it runs and its JSON has every field."""

from __future__ import annotations

import json
import subprocess
import sys

from golden import REPO

FIELDS = {
    "dit_ms_per_block", "decode_ms_per_block", "end_to_end_fps", "time_to_first_frame_ms", "prompt_switch_ms",
    "recache_ms", "peak_memory_gb", "device", "torch", "triton", "python", "dit_tflop_per_block",
    "decode_tflop_per_block", "floor_ms_per_block", "ratio_to_floor", "kernels", "resolution", "dtype",
    # a never-seen prompt: asked -> its first block, and the longest gap between blocks meanwhile
    "new_prompt_switch_background_ms", "new_prompt_stall_background_ms", "new_prompt_switch_inline_ms",
    "new_prompt_stall_inline_ms", "new_prompt_switch_background_offload_ms", "new_prompt_stall_background_offload_ms",
    "new_prompt_switch_inline_offload_ms", "new_prompt_stall_inline_offload_ms",
}


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
