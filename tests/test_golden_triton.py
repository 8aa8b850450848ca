"""The official outputs reproduced through the Triton kernels, not just the torch references.

The golden generator tests (the forwards with and without the LoRA, and the stream with its
prompt switch, checked at every denoising step and at the re-cache) and the golden VAE
decodes run again in a fresh process with
`LONGLIVE_KERNELS=triton`: every attention, q/k norm + RoPE, modulated LayerNorm, gated
residual and VAE norm goes through the Triton kernels (under Triton's interpreter on a
CPU, compiled on a GPU). A plugin counts the calls that reach each kernel, so a silent
fallback to the references cannot pass for the kernels.

On a CPU the stream runs only its attention through the Triton kernel, the one kernel whose
inputs a stream changes (queries against the KV window and its sink, the re-cache); its
per-row kernels (norms, RoPE, residuals: one program per token, reading cos/sin and the
per-frame modulation as given) go through the references, as the forwards have put every
one of them through the same rows. The interpreter runs a grid one program at a time, and
profiled, 80 % of a stream went into those per-row programs (790 of 960 s under cProfile):
the whole replay took 170-200 s of the suite's 15 minutes, now about a third of that. On a
GPU everything goes through the kernels. (The other two streams differ from the first only
in window bookkeeping and merged weights, which the kernels never see.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# no `import triton` in this process: the kernel tests must be the first to import it (with the
# interpreter on, on a CPU machine); the child process below imports it for itself
if importlib.util.find_spec("triton") is None:
    pytest.skip("needs triton", allow_module_level=True)

TESTS = Path(__file__).resolve().parent
KERNELS = ("attention", "rms_norm_rope", "modulated_layer_norm", "gated_residual", "rms_norm_channels")


pytestmark = pytest.mark.slow      # `make test` runs it; `make check` leaves it out

def test_golden_outputs_through_the_triton_kernels(tmp_path):
    calls_file = tmp_path / "calls.json"
    env = {**os.environ, "LONGLIVE_KERNELS": "triton", "LONGLIVE_KERNEL_CALLS": str(calls_file),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    gpu = torch.cuda.is_available()
    if gpu:
        env.pop("TRITON_INTERPRET", None)
    else:
        env["TRITON_INTERPRET"] = "1"
        env["LONGLIVE_ROWS_BY_REFERENCE"] = "test_stream"
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "kernel_call_counter",
            str(TESTS / "test_generator_golden.py"), str(TESTS / "test_vae.py"), "-k",
            "test_forward or (test_stream and not lora and not no_global_sink) or official"]
    proc = subprocess.run(args, cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 7, proc.stdout[-2000:]   # 2 forwards, 1 stream, the official decodes
    assert "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
    calls = json.loads(calls_file.read_text())
    assert calls["interpreted:triton_attention"] == int(not gpu)
    missing = [k for k in KERNELS if calls.get(k, 0) == 0]
    assert not missing, f"never reached the Triton kernels: {missing} ({calls})"
    if not gpu:     # the stream's attention went through the kernel, its rows through the references
        streamed = {k: calls.get(f"test_stream:{k}", 0) for k in KERNELS[:4]}
        assert all(streamed.values()) and calls["attention"] > streamed["attention"], calls
