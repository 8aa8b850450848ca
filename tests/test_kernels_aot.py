"""The generator's Triton launches, compiled ahead of time for real GPUs on this CPU machine.

`longlive kernels` runs a generator block, a prompt switch and a VAE decode of the full-size
config with every kernel launch compiled (by Triton's own ptxas) for sm_90 (H100/H200) and
sm_89 (RTX 40xx, 99 KB of shared memory per block), and reports what the cubins need. The
interpreter tests check the kernels' arithmetic; these check that the real launches compile
for those GPUs, fit their shared memory, keep every value in registers, and use the tensor
cores of each generation. The dimensions come from the config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streaming.config import load_config

pytestmark = pytest.mark.slow      # `make test` runs it; `make check` leaves it out

REPO = Path(__file__).resolve().parents[1]
ARCHS = (90, 89)
KERNELS = {"_attention_fwd", "_rms_norm_rope_fwd", "_modulated_layer_norm_fwd", "_gated_residual_fwd",
           "_rms_norm_channels_fwd"}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("aot") / "kernels.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}   # compiled mode in the child
    args = [sys.executable, "-m", "longlive", "kernels", "--config", "longlive", "--json", str(out)]
    for arch in ARCHS:
        args += ["--arch", str(arch)]
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    data["stdout"] = proc.stdout
    return data


def launches(report: dict, arch: int, kernel: str | None = None) -> list[dict]:
    return [x for x in report["launches"] if x["arch"] == arch and (kernel is None or x["kernel"] == kernel)]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_compiles_without_spills_and_fits(report, arch):
    rows = launches(report, arch)
    assert {x["kernel"] for x in rows} == KERNELS, "a kernel of the hot path was not launched"
    for x in rows:
        assert x["registers"] is not None and 0 < x["registers"] <= 255, x
        assert x["spill_bytes"] == 0, f"{x['kernel']} spills registers on sm_{arch}: {x}"
        assert x["shared"] <= x["shared_limit"], f"{x['kernel']} needs more shared memory than sm_{arch} has: {x}"


def test_attention_is_compiled_for_the_configs_head_size_and_dtype(report):
    cfg = load_config("longlive")
    for arch in ARCHS:
        (attn,) = launches(report, arch, "_attention_fwd")   # self, cross and re-cache: one kernel
        assert attn["constants"]["HEAD_DIM"] == cfg.model.dim // cfg.model.num_heads
        assert attn["constants"]["PRECISION"] == "tf32"       # i.e. not the float32 path
    assert report["dtype"] == cfg.runtime.dtype


def test_attention_uses_each_generations_tensor_cores(report):
    (hopper,) = launches(report, 90, "_attention_fwd")
    (ada,) = launches(report, 89, "_attention_fwd")
    assert hopper["instructions"]["wgmma"] > 0 and hopper["instructions"]["mma"] == 0, hopper
    assert ada["instructions"]["mma"] > 0 and ada["instructions"]["wgmma"] == 0, ada
    assert hopper["instructions"]["cp_async"] > 0 and ada["instructions"]["cp_async"] > 0   # pipelined loads


def test_untuned_attention_takes_the_best_config_that_fits(report):
    """Without autotuning, the launch uses the first candidate whose compiled kernel fits the
    GPU's shared memory: on sm_90 the first; on sm_89 some do not fit and are passed over."""
    for arch in ARCHS:
        (attn,) = launches(report, arch, "_attention_fwd")
        candidates = [x for x in report["attention_candidates"] if x["arch"] == arch]
        assert len(candidates) >= 2
        fitting = [x for x in candidates if x["fits"]]
        assert fitting, f"no attention config fits sm_{arch}"
        best = fitting[0]
        chosen = (attn["constants"]["BLOCK_M"], attn["constants"]["BLOCK_N"], attn["num_warps"], attn["num_stages"])
        assert chosen == (best["constants"]["BLOCK_M"], best["constants"]["BLOCK_N"], best["num_warps"],
                          best["num_stages"]), (arch, chosen, best)
    small_gpu = [x for x in report["attention_candidates"] if x["arch"] == 89]
    assert any(not x["fits"] for x in small_gpu), "sm_89 no longer exercises the shared-memory limit"


def test_report_table_names_every_architecture(report):
    for arch in ARCHS:
        assert f"sm_{arch}" in report["stdout"]


def test_kernels_command_rejects_an_unknown_architecture():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "longlive", "kernels", "--arch", "7"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown compute capability 7" in lines[0], proc.stderr
