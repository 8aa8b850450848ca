"""The Triton kernels against their torch references, on fresh random inputs.

Without a GPU the kernels run under Triton's CPU interpreter (float16/float32: the
interpreter's bfloat16 `tl.dot` is wrong in triton 3.9); with one they run compiled on
CUDA tensors (bfloat16 too). Every test draws its own seed and prints it on failure;
`LONGLIVE_TEST_SEED=<n>` replays one.
"""

from __future__ import annotations

import os
import sys

import torch

# The interpreter is chosen when a @triton.jit function is decorated, triton's own library
# included, so it must be on before triton is imported (see INTERPRETER_READY below).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")

import importlib  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import subprocess  # noqa: E402
import types  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import kernels  # noqa: E402
from kernels import dispatch, reference  # noqa: E402
from kernels._runtime import check_device  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

try:
    import triton  # noqa: F401
    import triton.language.standard as _tl_standard
    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False

# Triton's own library functions (tl.sum, tl.max, ...) are decorated when triton is imported:
# if something imported triton before this module turned the interpreter on, the kernels cannot
# run here, and `test_kernels_in_a_fresh_process` runs this file again in a new process.
INTERPRETER_READY = HAVE_TRITON and (
    not INTERPRET or type(getattr(_tl_standard, "sum", None)).__name__ in ("InterpretedFunction", "NoneType"))

if INTERPRET:
    DEVICE, DTYPES = "cpu", [torch.float32, torch.float16]
elif torch.cuda.is_available():
    DEVICE, DTYPES = "cuda", [torch.float32, torch.float16, torch.bfloat16]
else:
    DEVICE, DTYPES = None, []

needs_triton = pytest.mark.skipif(
    not HAVE_TRITON or DEVICE is None or not INTERPRETER_READY,
    reason="needs triton, and CUDA or TRITON_INTERPRET=1 set before triton was imported "
           "(then test_kernels_in_a_fresh_process covers it)")
needs_gpu = pytest.mark.skipif(INTERPRET or not torch.cuda.is_available() or not HAVE_TRITON,
                               reason="needs a CUDA device with compiled Triton (no TRITON_INTERPRET)")
dtypes = pytest.mark.parametrize("dtype", DTYPES or [torch.float32], ids=lambda d: str(d).removeprefix("torch."))

# (atol, rtol) per dtype of the compared outputs
ATTN_TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (3e-3, 3e-3), torch.bfloat16: (2e-2, 2e-2)}
NORM_TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}


def triton_module(name: str):
    """kernels.<name>, built for the interpreter exactly when this run uses it."""
    mod = importlib.import_module(f"kernels.{name}")
    if mod.INTERPRETED != INTERPRET:  # imported earlier under the other TRITON_INTERPRET setting
        mod = importlib.reload(mod)
    assert mod.INTERPRETED == INTERPRET
    return mod


@dataclass
class Rng:
    seed: int
    gen: torch.Generator

    def randn(self, *shape, dtype=torch.float32, scale: float = 1.0, device=None) -> torch.Tensor:
        t = torch.randn(*shape, generator=self.gen) * scale
        return t.to(dtype=dtype, device=device or DEVICE or "cpu")

    def msg(self, what: str) -> str:
        return f"{what} (seed={self.seed}; replay with LONGLIVE_TEST_SEED={self.seed})"


@pytest.fixture
def rng() -> Rng:
    seed = int(os.environ.get("LONGLIVE_TEST_SEED") or secrets.randbits(31))
    return Rng(seed, torch.Generator().manual_seed(seed))


def close(actual: torch.Tensor, expected: torch.Tensor, tol: tuple[float, float], msg: str) -> None:
    assert actual.shape == expected.shape, f"{msg}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{msg}: dtype {actual.dtype} != {expected.dtype}"
    atol, rtol = tol
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol, msg=lambda m: f"{msg}\n{m}")


# --- attention -----------------------------------------------------------------------------------

def _kv(rng: Rng, kind: str, b: int, lk: int, h: int, d: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values laid out as the DiT passes them."""
    if kind == "cache-prefix":  # a prefix of the preallocated window; the unused tail is poison
        cache = rng.randn(2, b, lk + 19, h, d, dtype=dtype)
        cache[:, :, lk:] = float("nan")
        return cache[0, :, :lk], cache[1, :, :lk]
    if kind == "transposed":    # [B, H, L, D] storage seen as [B, L, H, D]
        return (rng.randn(b, h, lk, d, dtype=dtype).transpose(1, 2),
                rng.randn(b, h, lk, d, dtype=dtype).transpose(1, 2))
    return rng.randn(b, lk, h, d, dtype=dtype), rng.randn(b, lk, h, d, dtype=dtype)


def _attention_reference(q, k, v):
    """The reference; for float32 evaluated in float64 (CUDA SDPA may use TF32 for float32)."""
    if q.dtype == torch.float32:
        return reference.attention(q.double(), k.double(), v.double()).float()
    return reference.attention(q, k, v)


# (B, Lq, Lk, H, D, layout): odd lengths, several tiles plus a tail, Lk below one tile,
# Lk an exact multiple of the tile, one query, head dims 16..128
ATTN_CASES = [
    (1, 37, 50, 2, 32, "cache-prefix"),
    (2, 17, 5, 3, 16, "contiguous"),
    (1, 40, 64, 1, 128, "cache-prefix"),
    (1, 1, 33, 2, 64, "transposed"),
]


@needs_triton
@dtypes
@pytest.mark.parametrize("case", ATTN_CASES, ids=lambda c: "x".join(map(str, c[:5])) + "-" + c[5])
def test_attention_matches_reference(rng, dtype, case):
    b, lq, lk, h, d, kind = case
    mod = triton_module("triton_attention")
    q = rng.randn(b, lq, h, d, dtype=dtype, scale=2.0)
    if kind == "transposed":
        q = rng.randn(b, h, lq, d, dtype=dtype, scale=2.0).transpose(1, 2)
    k, v = _kv(rng, kind, b, lk, h, d, dtype)
    out = mod.attention(q, k, v)
    ref = _attention_reference(q, k, v)
    assert out.is_contiguous()
    assert torch.isfinite(out).all(), rng.msg(f"attention {case} {dtype} read past the keys")
    close(out, ref, ATTN_TOL[dtype], rng.msg(f"attention {case} {dtype}"))


@needs_triton
@dtypes
def test_attention_online_softmax_follows_a_late_winning_key(rng, dtype):
    """Large logits whose maximum moves tile by tile, and a dominant key in the masked tail."""
    b, lq, lk, h, d = 1, 20, 45, 2, 32
    mod = triton_module("triton_attention")
    q = rng.randn(b, lq, h, d, dtype=torch.float32)
    k = rng.randn(b, lk, h, d, dtype=torch.float32)
    k = k * torch.linspace(0.1, 3.0, lk, device=k.device)[None, :, None, None]  # growing logits
    k[:, -1] = q.mean(1) * 12                                                    # last key wins
    v = rng.randn(b, lk, h, d, dtype=dtype)
    q, k = q.to(dtype), k.to(dtype)
    out = mod.attention(q, k, v)
    close(out, _attention_reference(q, k, v), ATTN_TOL[dtype], rng.msg(f"attention large logits {dtype}"))


@needs_triton
@pytest.mark.parametrize("head_dim", [64, 128])
def test_every_tile_config_the_autotuner_may_pick_is_correct(rng, head_dim):
    """Each (BLOCK_M, BLOCK_N) the autotuner offers, with a key count that leaves a partial tail
    tile and a query count that leaves a partial query tile, on a window-prefix view."""
    mod = triton_module("triton_attention")
    dtype = torch.float16 if DEVICE == "cpu" else torch.bfloat16
    configs = mod.candidate_configs(head_dim)
    assert configs and all(c[0] % 16 == 0 and c[1] % 16 == 0 for c in configs)
    for config in configs:
        bm, bn = config[:2]
        lq, lk = bm + 7, 2 * bn + 5
        q = rng.randn(1, lq, 2, head_dim, dtype=dtype, scale=2.0)
        k, v = _kv(rng, "cache-prefix", 1, lk, 2, head_dim, dtype)
        out = mod.attention(q, k, v, config=config)
        assert torch.isfinite(out).all(), rng.msg(f"tiles {config} read past the keys")
        close(out, _attention_reference(q, k, v), ATTN_TOL[dtype], rng.msg(f"attention tiles {config}"))


@needs_triton
def test_attention_falls_back_for_shapes_it_does_not_handle(rng):
    mod = triton_module("triton_attention")
    q, k, v = (rng.randn(1, 9, 2, 24) for _ in range(3))     # head dim 24: not a power of two
    assert not mod.supported(q, k, v)
    close(mod.attention(q, k, v), reference.attention(q, k, v), (1e-6, 1e-6), rng.msg("fallback"))


# --- fused DiT ops ---------------------------------------------------------------------------

# (B, L, H, D): tiny heads, LongLive's head size, an odd token count
ROPE_CASES = [(2, 10, 3, 16), (1, 7, 2, 64), (1, 5, 12, 128)]


@needs_triton
@dtypes
@pytest.mark.parametrize("rope", [True, False], ids=["rope", "no-rope"])
@pytest.mark.parametrize("case", ROPE_CASES, ids=lambda c: "x".join(map(str, c)))
def test_rms_norm_rope_matches_reference(rng, dtype, rope, case):
    b, n, h, d = case
    c = h * d
    mod = triton_module("triton_fused")
    x = rng.randn(b, n, c + 8, dtype=dtype, scale=3.0)[:, :, 4:4 + c]  # row stride != C
    weight = rng.randn(c) + 1
    cos = sin = None
    if rope:
        angles = rng.randn(n, d // 2, scale=3.0)
        cos, sin = angles.cos(), angles.sin()
    out = mod.rms_norm_rope(x, weight, cos, sin, h, 1e-6)
    ref = reference.rms_norm_rope(x, weight, cos, sin, h, 1e-6)
    close(out, ref, NORM_TOL[dtype], rng.msg(f"rms_norm_rope {case} rope={rope} {dtype}"))
    assert out.is_contiguous()


# (B, frames, frame_len, C)
FRAME_CASES = [(2, 3, 4, 40), (1, 2, 5, 48), (1, 1, 3, 1536)]


@needs_triton
@dtypes
@pytest.mark.parametrize("case", FRAME_CASES, ids=lambda c: "x".join(map(str, c)))
def test_modulated_layer_norm_matches_reference(rng, dtype, case):
    b, f, fl, c = case
    mod = triton_module("triton_fused")
    x = rng.randn(b, f * fl, c, scale=2.0) + 0.5
    shift, scale = rng.randn(b, f, 6, c).unbind(2)[:2]   # strided views, as the DiT passes them
    out = mod.modulated_layer_norm(x, shift, scale, 1e-6, dtype)
    ref = reference.modulated_layer_norm(x, shift, scale, 1e-6, dtype)
    close(out, ref, NORM_TOL[dtype], rng.msg(f"modulated_layer_norm {case} {dtype}"))


@needs_triton
@dtypes
@pytest.mark.parametrize("gated", [True, False], ids=["gate", "no-gate"])
@pytest.mark.parametrize("case", FRAME_CASES, ids=lambda c: "x".join(map(str, c)))
def test_gated_residual_matches_reference(rng, dtype, gated, case):
    b, f, fl, c = case
    mod = triton_module("triton_fused")
    x = rng.randn(b, f * fl, c)
    y = rng.randn(b, f * fl, c, dtype=dtype)
    gate = rng.randn(b, f, 6, c)[:, :, 2] if gated else None
    out = mod.gated_residual(x, y, gate)
    ref = reference.gated_residual(x, y, gate)
    close(out, ref, (1e-5, 1e-5), rng.msg(f"gated_residual {case} gate={gated} {dtype}"))


# --- VAE norm --------------------------------------------------------------------------------

# (x shape, gamma shape, layout): video (one pass over 7 channels), 200 channels (the chunked
# two-pass path), an image-shaped [B, C, H, W] with gamma [C, 1, 1]; and channels-last
# memory ([B, T, H, W, C] storage seen as [B, C, T, H, W], the streaming VAE's layout)
CHANNEL_CASES = [((2, 7, 3, 5, 6), (7, 1, 1, 1), "first"), ((1, 200, 2, 3, 5), (200, 1, 1, 1), "first"),
                 ((3, 12, 4, 5), (12, 1, 1), "first"), ((2, 24, 3, 5, 6), (24, 1, 1, 1), "last"),
                 ((1, 96, 2, 3, 3), (96, 1, 1), "last")]


@needs_triton
@dtypes
@pytest.mark.parametrize("silu", [False, True], ids=["plain", "silu"])
@pytest.mark.parametrize("case", CHANNEL_CASES, ids=lambda c: "x".join(map(str, c[0])) + "-" + c[2])
def test_rms_norm_channels_matches_reference(rng, dtype, silu, case):
    shape, gshape, layout = case
    mod = triton_module("triton_fused")
    if layout == "last":
        x = rng.randn(shape[0], *shape[2:], shape[1], dtype=dtype, scale=2.0).movedim(-1, 1)
    else:
        x = rng.randn(*shape, dtype=dtype, scale=2.0)
    x[0, :, 0] = 0   # all-zero channel columns: the eps clamp, no NaN
    gamma = rng.randn(*gshape) + 1
    out = mod.rms_norm_channels(x, gamma, silu)
    ref = reference.rms_norm_channels(x, gamma, silu)
    assert torch.isfinite(out).all(), rng.msg("rms_norm_channels produced non-finite values")
    close(out, ref, NORM_TOL[dtype], rng.msg(f"rms_norm_channels {shape} {layout} silu={silu} {dtype}"))
    assert out.stride() == x.stride(), "the output keeps the input's memory layout"


def test_rms_norm_channels_reference_is_the_wan_vae_norm(rng):
    """The reference is Wan's RMS_norm: F.normalize over channels * sqrt(C) * gamma (+ SiLU)."""
    x, gamma = rng.randn(2, 6, 3, 4, 5, device="cpu"), rng.randn(6, 1, 1, 1, device="cpu")
    wan = torch.nn.functional.normalize(x, dim=1) * 6 ** 0.5 * gamma
    close(reference.rms_norm_channels(x, gamma), wan, (1e-6, 1e-6), rng.msg("wan norm"))
    close(reference.rms_norm_channels(x, gamma, silu=True), torch.nn.functional.silu(wan), (1e-6, 1e-6),
          rng.msg("wan norm + silu"))
    norms = (reference.rms_norm_channels(x, torch.ones(6, 1, 1, 1)) ** 2).sum(1)
    close(norms, torch.full_like(norms, 6.0), (1e-4, 1e-5), rng.msg("unit gamma gives RMS 1"))


# --- dispatch ----------------------------------------------------------------------------

ENTRIES = [("attention", "triton_attention"), ("rms_norm_rope", "triton_fused"),
           ("modulated_layer_norm", "triton_fused"), ("gated_residual", "triton_fused"),
           ("rms_norm_channels", "triton_fused")]


def test_dispatch_uses_the_reference_for_cpu_tensors_by_default(monkeypatch):
    monkeypatch.delenv("LONGLIVE_KERNELS", raising=False)
    t = torch.zeros(2)
    assert dispatch.mode() == "auto"
    for kernel, module in ENTRIES:
        assert dispatch.pick(kernel, t, module) is getattr(reference, kernel)
    assert dispatch.use_triton(types.SimpleNamespace(is_cuda=True))   # CUDA tensors take Triton


def test_dispatch_torch_forces_the_reference(monkeypatch):
    monkeypatch.setenv("LONGLIVE_KERNELS", "torch")
    fake_cuda = types.SimpleNamespace(is_cuda=True)
    assert not dispatch.use_triton(fake_cuda)
    for kernel, module in ENTRIES:
        assert dispatch.pick(kernel, fake_cuda, module) is getattr(reference, kernel)


@needs_triton
def test_dispatch_triton_forces_the_kernels_even_on_cpu(monkeypatch):
    monkeypatch.setenv("LONGLIVE_KERNELS", "triton")
    t = torch.zeros(2)
    for kernel, module in ENTRIES:
        assert dispatch.pick(kernel, t, module) is getattr(triton_module(module), kernel)


def test_dispatch_rejects_a_bad_mode(monkeypatch):
    monkeypatch.setenv("LONGLIVE_KERNELS", "cuda")
    with pytest.raises(ValueError, match="LONGLIVE_KERNELS must be one of auto, triton, torch, not 'cuda'"):
        kernels.attention(torch.zeros(1, 1, 1, 16), torch.zeros(1, 1, 1, 16), torch.zeros(1, 1, 1, 16))


@needs_triton
def test_entry_points_run_the_kernels_through_dispatch(rng, monkeypatch):
    """LONGLIVE_KERNELS=triton end to end through kernels.<entry>, and the package's entry
    points stay functions after the Triton modules are imported."""
    if DEVICE == "cpu":
        monkeypatch.setenv("LONGLIVE_KERNELS", "triton")
    for _, module in ENTRIES:
        triton_module(module)
    assert isinstance(kernels.attention, types.FunctionType)
    calls = []
    for module in ("triton_attention", "triton_fused"):
        mod = triton_module(module)
        for name in ("attention", "rms_norm_rope", "modulated_layer_norm", "gated_residual", "rms_norm_channels"):
            if hasattr(mod, name):
                real = getattr(mod, name)
                monkeypatch.setattr(mod, name, lambda *a, _real=real, _n=name: calls.append(_n) or _real(*a))
    q, k, v = (rng.randn(1, 19, 2, 16) for _ in range(3))
    close(kernels.attention(q, k, v), reference.attention(q, k, v), ATTN_TOL[torch.float32], rng.msg("attention"))
    x, w = rng.randn(1, 6, 32), rng.randn(32)
    cos, sin = rng.randn(6, 8).cos(), rng.randn(6, 8).sin()
    close(kernels.rms_norm_rope(x, w, cos, sin, 2, 1e-6), reference.rms_norm_rope(x, w, cos, sin, 2, 1e-6),
          NORM_TOL[torch.float32], rng.msg("rms_norm_rope"))
    shift, scale, gate = rng.randn(1, 2, 32), rng.randn(1, 2, 32), rng.randn(1, 2, 32)
    close(kernels.modulated_layer_norm(x, shift, scale, 1e-6, torch.float16),
          reference.modulated_layer_norm(x, shift, scale, 1e-6, torch.float16), NORM_TOL[torch.float16],
          rng.msg("modulated_layer_norm"))
    close(kernels.gated_residual(x, x, gate), reference.gated_residual(x, x, gate), (1e-5, 1e-5),
          rng.msg("gated_residual"))
    vol, gamma = rng.randn(1, 8, 2, 3, 3), rng.randn(8, 1, 1, 1)
    close(kernels.rms_norm_channels(vol, gamma, True), reference.rms_norm_channels(vol, gamma, True),
          NORM_TOL[torch.float32], rng.msg("rms_norm_channels"))
    assert calls == ["attention", "rms_norm_rope", "modulated_layer_norm", "gated_residual", "rms_norm_channels"]


def test_a_triton_kernel_on_the_wrong_device_is_one_clear_error():
    with pytest.raises(RuntimeError, match="Triton kernels need CUDA tensors"):
        check_device(False, torch.zeros(1))
    with pytest.raises(ValueError, match="one device"):
        check_device(True, torch.zeros(1), torch.zeros(1, device="meta"))


# --- import hygiene and benchmark --------------------------------------------------------------

def _python(code: str, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, **(env or {})}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=full_env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_kernels_and_benchmark_work_without_triton():
    code = (
        "import sys, os; sys.modules['triton'] = None\n"
        "os.environ['LONGLIVE_KERNELS'] = 'triton'\n"
        "import torch, kernels\n"
        "from bench.kernel_speed import benchmark_kernels\n"
        "from streaming.config import load_config\n"
        "q = torch.randn(1, 5, 2, 16)\n"
        "assert torch.equal(kernels.attention(q, q, q), kernels.reference.attention(q, q, q))\n"
        "cfg = load_config('tiny').replace(video={'height': 64, 'width': 80})\n"
        "rows = benchmark_kernels(cfg, 'cpu', torch.float32, warmup=0, reps=1)\n"
        "assert rows and all(r['triton_ms'] is None and r['torch_ms'] > 0 for r in rows), rows\n"
        "print(sorted({r['kernel'].split()[0] for r in rows}))\n"
    )
    out = _python(code, {"TRITON_INTERPRET": "0"})
    assert out.strip() == "['attention', 'gated_residual', 'modulated_layer_norm', 'rms_norm', " \
                          "'rms_norm_channels', 'rms_norm_rope']"


@pytest.mark.skipif(not HAVE_TRITON or not INTERPRET or INTERPRETER_READY,
                    reason="the kernels run in this process")
def test_kernels_in_a_fresh_process():
    """triton was imported (compiled mode) before this module could enable the interpreter:
    run the kernel tests of this file again in a fresh process, where it is on from the start."""
    select = os.environ.get("LONGLIVE_FRESH_SELECT", "not fresh_process and not collected_late")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", select],
                         cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    passed = re.search(r"(\d+) passed", out.stdout)
    assert passed and int(passed.group(1)) > 0, out.stdout[-2000:]


@pytest.mark.skipif(not HAVE_TRITON or not INTERPRET or not INTERPRETER_READY,
                    reason="simulates a CPU run where triton was imported first")
def test_kernel_tests_still_run_when_collected_late():
    """A session that imported triton before collecting this file still tests the kernels."""
    code = ("import sys, triton, pytest\n"
            f"sys.exit(pytest.main([{__file__!r}, '-q', '-p', 'no:cacheprovider', "
            "'-k', 'fresh_process or test_attention_matches_reference']))\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["LONGLIVE_FRESH_SELECT"] = "test_attention_matches_reference"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    # in that session the attention tests skip in-process and pass in the fresh process
    assert re.search(r"1 passed, \d+ skipped", out.stdout), out.stdout[-2000:]


@needs_triton
def test_benchmark_rows_time_both_paths(rng):
    from bench.kernel_speed import KERNELS, benchmark_kernels
    from streaming.config import load_config

    for name in KERNELS:
        triton_module("triton_attention" if name == "attention" else "triton_fused")
    cfg = load_config("tiny").replace(video={"height": 64, "width": 80})   # 20 tokens per frame
    rows = benchmark_kernels(cfg, DEVICE, torch.float16 if DEVICE == "cpu" else torch.bfloat16,
                             warmup=0, reps=1, compile=False, triton_on_cpu=True,
                             only=("attention", "rms_norm_channels", "gated_residual"))
    kinds = [r["kernel"] for r in rows]
    assert kinds == ["attention self", "attention self window", "attention recache", "attention cross",
                     "gated_residual", "rms_norm_channels", "rms_norm_channels"]   # VAE middle and head
    for r in rows:
        assert {"kernel", "shape", "triton_ms", "torch_ms", "torch_path", "speedup"} <= r.keys()
        assert r["triton_ms"] > 0 and r["torch_ms"] > 0
        assert r["speedup"] == pytest.approx(r["torch_ms"] / r["triton_ms"])
        assert r["max_abs_err"] < 2e-2, r
        assert r["torch_path"] == ("sdpa" if r["kernel"].startswith("attention") else "eager")


# --- GPU only: LongLive's own sizes ------------------------------------------------------------

@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("lq,lk,d", [(4680, 18720, 128), (4680, 512, 128), (1567, 3121, 64)],
                         ids=["self-window", "cross", "odd-d64"])
def test_attention_full_size_on_gpu(rng, dtype, lq, lk, d):
    h = 12 if d == 128 else 4
    mod = triton_module("triton_attention")
    q = rng.randn(1, lq, h, d, dtype=dtype, device="cuda")
    cache = rng.randn(2, 1, lk + 1560, h, d, dtype=dtype, device="cuda")
    k, v = cache[0, :, :lk], cache[1, :, :lk]
    close(mod.attention(q, k, v), reference.attention(q, k, v), ATTN_TOL[dtype],
          rng.msg(f"attention {lq}x{lk} d={d} {dtype}"))


@needs_gpu
@pytest.mark.gpu
def test_fused_full_size_on_gpu(rng):
    mod = triton_module("triton_fused")
    b, n, h, d, f = 1, 4680, 12, 128, 3
    x = rng.randn(b, n, h * d, dtype=torch.bfloat16, device="cuda")
    w = rng.randn(h * d, device="cuda")
    angles = rng.randn(n, d // 2, device="cuda") * math.pi
    close(mod.rms_norm_rope(x, w, angles.cos(), angles.sin(), h, 1e-6),
          reference.rms_norm_rope(x, w, angles.cos(), angles.sin(), h, 1e-6), NORM_TOL[torch.bfloat16],
          rng.msg("rms_norm_rope full size"))
    res = rng.randn(b, n, h * d, device="cuda")
    mod6 = rng.randn(b, f, 6, h * d, device="cuda")
    shift, scale, gate = mod6[:, :, 0], mod6[:, :, 1], mod6[:, :, 2]
    close(mod.modulated_layer_norm(res, shift, scale, 1e-6, torch.bfloat16),
          reference.modulated_layer_norm(res, shift, scale, 1e-6, torch.bfloat16), NORM_TOL[torch.bfloat16],
          rng.msg("modulated_layer_norm full size"))
    close(mod.gated_residual(res, x, gate), reference.gated_residual(res, x, gate), (1e-5, 1e-5),
          rng.msg("gated_residual full size"))
    vol = rng.randn(1, 384, 2, 60, 104, dtype=torch.bfloat16, device="cuda")
    gamma = rng.randn(384, 1, 1, 1, device="cuda")
    close(mod.rms_norm_channels(vol, gamma, True), reference.rms_norm_channels(vol, gamma, True),
          NORM_TOL[torch.bfloat16], rng.msg("rms_norm_channels full size"))


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_attention_default_configs_without_autotune_on_gpu(rng, dtype, monkeypatch):
    monkeypatch.setenv("LONGLIVE_AUTOTUNE", "0")
    mod = triton_module("triton_attention")
    for lq, lk, h, d in [(333, 1001, 3, 128), (77, 130, 2, 64), (50, 17, 2, 16)]:
        q = rng.randn(2, lq, h, d, dtype=dtype, device="cuda")
        cache = rng.randn(2, 2, lk + 64, h, d, dtype=dtype, device="cuda")
        k, v = cache[0, :, :lk], cache[1, :, :lk]
        close(mod.attention(q, k, v), _attention_reference(q, k, v), ATTN_TOL[dtype],
              rng.msg(f"attention without autotune {lq}x{lk} d={d} {dtype}"))


@needs_gpu
@pytest.mark.gpu
def test_benchmark_on_gpu_times_both_paths():
    from bench.kernel_speed import benchmark_kernels
    from streaming.config import load_config

    rows = benchmark_kernels(load_config("longlive"), "cuda", torch.bfloat16, warmup=2, reps=5, compile=True,
                             only=("gated_residual", "attention"))
    assert [r["kernel"] for r in rows][-1] == "gated_residual" and len(rows) == 5
    for r in rows:
        assert r["triton_ms"] > 0 and r["torch_ms"] > 0 and r["speedup"] > 0, r
        assert r["max_abs_err"] < 5e-2, r


@needs_triton
def test_config_mode_applies_unless_the_environment_overrides(monkeypatch):
    monkeypatch.delenv("LONGLIVE_KERNELS", raising=False)
    t = torch.zeros(2)
    try:
        dispatch.set_default_mode("triton")
        assert dispatch.pick("gated_residual", t, "triton_fused") is triton_module("triton_fused").gated_residual
        monkeypatch.setenv("LONGLIVE_KERNELS", "torch")
        assert dispatch.pick("gated_residual", t, "triton_fused") is reference.gated_residual
    finally:
        dispatch.set_default_mode("auto")
    with pytest.raises(ValueError, match="kernel mode must be one of"):
        dispatch.set_default_mode("fast")
