"""Side-by-side timings: each Triton kernel against the best torch path, at a config's sizes.

`benchmark_kernels(cfg, device)` returns one row per kernel and shape:

    {"kernel", "shape", "triton_ms", "torch_ms", "torch_path", "speedup", ...}

`torch_ms` is the best torch path on the same device (attention: SDPA, which dispatches to
FlashAttention / memory-efficient kernels on CUDA; the fused ops: the eager reference and,
when it compiles, `torch.compile` of it). `speedup` is torch_ms / triton_ms. Extra keys:
`torch_eager_ms`, `torch_compile_ms`, `max_abs_err` (Triton vs reference output) and a
throughput figure (`triton_tflops`/`torch_tflops` for attention, `..._gbps` otherwise).

Timing: warmup runs (they also compile and autotune), then the median of several runs, on
CUDA with CUDA events and the L2 cache flushed before each run. Without CUDA or without
triton only the torch path is timed (`triton_ms` None).
Used by `longlive bench` (every shape from the config it measures); this module prints nothing.
"""

from __future__ import annotations

import importlib
import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from kernels import reference
from streaming.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchSizes:
    """The shapes benchmarked, as one generator block of a config makes them."""

    batch: int
    heads: int
    head_dim: int
    frame_len: int                 # tokens per latent frame
    latent_frames_per_block: int   # latent frames per block (the queries of a forward)
    window_frames: int             # KV window (sink + rolling), also the re-cache length
    text_len: int                  # cross-attention keys
    eps: float
    # VAE decoder norms [B, C, T, H, W]: the middle (widest, at twice the latent size) and the
    # head (narrowest, at the picture's size), with the frames one decoder call holds there
    vae_shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def from_config(cls, cfg: Config) -> "BenchSizes":
        m, v = cfg.model, cfg.vae
        middle = (1, v.dim * v.dim_mult[-1], 2, 2 * cfg.latent_height, 2 * cfg.latent_width)
        head = (1, v.dim * v.dim_mult[0], 4, cfg.video.height, cfg.video.width)
        return cls(batch=1, heads=m.num_heads, head_dim=m.head_dim, frame_len=cfg.frame_seq_length,
                   latent_frames_per_block=cfg.latent_frames_per_block, window_frames=cfg.window.local_attn_size,
                   text_len=m.text_len, eps=m.eps, vae_shapes=(middle, head) if v.kind == "wan" else ())

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim


KERNELS = ("attention", "rms_norm_rope", "modulated_layer_norm", "gated_residual", "rms_norm_channels")


def _triton_modules(device: torch.device, on_cpu: bool):
    """(kernels.triton_attention, kernels.triton_fused) when Triton can run on `device`, else None."""
    if device.type != "cuda" and not on_cpu:
        return None
    try:
        return importlib.import_module("kernels.triton_attention"), importlib.import_module("kernels.triton_fused")
    except ImportError as exc:
        log.info("triton unavailable (%s): timing the torch paths only", exc)
        return None


class _Timer:
    def __init__(self, device: torch.device, warmup: int, reps: int):
        self.device, self.warmup, self.reps = device, warmup, reps
        self.cuda = device.type == "cuda"
        # flushing L2 (50 MB on H100) between runs keeps the memory-bound ops honest
        self.flush = torch.empty(256 * 2 ** 20, dtype=torch.int8, device=device) if self.cuda else None

    def __call__(self, fn: Callable[[], object]) -> float:
        for _ in range(self.warmup):
            fn()
        if not self.cuda:
            times = []
            for _ in range(self.reps):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(times)
        torch.cuda.synchronize(self.device)
        events = []
        for _ in range(self.reps):
            self.flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize(self.device)
        return statistics.median(s.elapsed_time(e) for s, e in events)


def _compiled(fn: Callable, enabled: bool) -> Callable | None:
    if not enabled or not hasattr(torch, "compile"):
        return None
    try:
        return torch.compile(fn, dynamic=False)
    except Exception as exc:  # noqa: BLE001 - compile support varies by platform
        log.info("torch.compile unavailable: %s", exc)
        return None


def _shape(t: torch.Tensor) -> str:
    return f"[{','.join(map(str, t.shape))}]"


def _row(kernel: str, shape: str, timer: _Timer, triton_fn: Callable | None, ref_fn: Callable,
         compile_fn: Callable | None, work: float, unit: str) -> dict:
    """Time the paths of one kernel and compare the Triton output with the reference's."""
    eager_ms = timer(ref_fn)
    compile_ms = None
    if compile_fn is not None:
        try:
            compile_ms = timer(compile_fn)
        except Exception as exc:  # noqa: BLE001 - e.g. no compiler toolchain
            log.info("torch.compile of %s failed: %s", kernel, exc)
    torch_ms, torch_path = eager_ms, ("sdpa" if kernel.startswith("attention") else "eager")
    if compile_ms is not None and compile_ms < eager_ms:
        torch_ms, torch_path = compile_ms, "compile"
    triton_ms = err = None
    if triton_fn is not None:
        triton_ms = timer(triton_fn)
        err = (triton_fn().float() - ref_fn().float()).abs().max().item()
    scale = 1e-12 if unit == "tflops" else 1e-9

    def rate(ms):
        return None if ms is None else work * scale / (ms * 1e-3)

    return {
        "kernel": kernel, "shape": shape,
        "triton_ms": triton_ms, "torch_ms": torch_ms, "torch_path": torch_path,
        "speedup": None if triton_ms is None else torch_ms / triton_ms,
        "torch_eager_ms": eager_ms, "torch_compile_ms": compile_ms, "max_abs_err": err,
        f"triton_{unit}": rate(triton_ms), f"torch_{unit}": rate(torch_ms),
    }


def benchmark_kernels(cfg: Config, device: torch.device | str, dtype: torch.dtype = torch.bfloat16,
                      *, warmup: int = 5, reps: int = 20,
                      compile: bool | None = None, only: tuple[str, ...] | None = None,
                      triton_on_cpu: bool = False) -> list[dict]:
    """Time every kernel on `device` at the sizes of `cfg`'s blocks, or those of `only`
    (names from `KERNELS`). `compile` also times torch.compile of the references (default: on
    CUDA only). `triton_on_cpu` runs the Triton path on CPU tensors too, which only works
    under TRITON_INTERPRET=1 (for tests; interpreter timings mean nothing).
    """
    device = torch.device(device)
    sizes = BenchSizes.from_config(cfg)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    compile = device.type == "cuda" if compile is None else compile
    mods = _triton_modules(device, triton_on_cpu)
    timer = _Timer(device, warmup, reps)
    s, rows = sizes, []
    b, h, d, c = s.batch, s.heads, s.head_dim, s.dim
    lq, lw = s.latent_frames_per_block * s.frame_len, s.window_frames * s.frame_len

    def wanted(name: str) -> bool:
        return only is None or name in only

    def randn(*shape, dt=dtype):
        return torch.randn(*shape, device=device, dtype=dt)

    with torch.inference_mode():
        if wanted("attention"):
            cache_k, cache_v = randn(b, lw, h, d), randn(b, lw, h, d)
            text_k, text_v = randn(b, s.text_len, h, d), randn(b, s.text_len, h, d)
            cases = [("attention self", lq, cache_k[:, :lq], cache_v[:, :lq]),     # first block
                     ("attention self window", lq, cache_k, cache_v),             # window full
                     ("attention recache", lw, cache_k, cache_v),
                     ("attention cross", lq, text_k, text_v)]
            for name, n, k, v in cases:
                q = randn(b, n, h, d)
                tri = None if mods is None else (lambda q=q, k=k, v=v: mods[0].attention(q, k, v))
                rows.append(_row(name, f"B{b} Lq{n} Lk{k.shape[1]} H{h} D{d}", timer, tri,
                                 lambda q=q, k=k, v=v: reference.attention(q, k, v), None,
                                 4.0 * b * h * n * k.shape[1] * d, "tflops"))
            del cache_k, cache_v, text_k, text_v

        if wanted("rms_norm_rope"):
            x, w = randn(b, lq, c), randn(c, dt=torch.float32)
            ang = torch.rand(lq, d // 2, device=device) * 2 * math.pi
            cos, sin = ang.cos(), ang.sin()
            comp = _compiled(reference.rms_norm_rope, compile)
            for name, cs, sn in (("rms_norm_rope", cos, sin), ("rms_norm", None, None)):
                tri = None if mods is None else (lambda cs=cs, sn=sn: mods[1].rms_norm_rope(x, w, cs, sn, h, s.eps))
                rows.append(_row(name, _shape(x), timer, tri,
                                 lambda cs=cs, sn=sn: reference.rms_norm_rope(x, w, cs, sn, h, s.eps),
                                 None if comp is None else (lambda cs=cs, sn=sn: comp(x, w, cs, sn, h, s.eps)),
                                 2.0 * x.numel() * x.element_size(), "gbps"))

        frames = s.latent_frames_per_block
        if wanted("modulated_layer_norm"):
            x = randn(b, lq, c, dt=torch.float32)
            mod = randn(b, frames, 6, c, dt=torch.float32)
            shift, scale = mod[:, :, 0], mod[:, :, 1]   # strided views, as the DiT passes them
            comp = _compiled(reference.modulated_layer_norm, compile)
            rows.append(_row("modulated_layer_norm", _shape(x), timer,
                             None if mods is None else (lambda: mods[1].modulated_layer_norm(x, shift, scale, s.eps, dtype)),
                             lambda: reference.modulated_layer_norm(x, shift, scale, s.eps, dtype),
                             None if comp is None else (lambda: comp(x, shift, scale, s.eps, dtype)),
                             x.numel() * (4 + torch.empty((), dtype=dtype).element_size()), "gbps"))

        if wanted("gated_residual"):
            x, y = randn(b, lq, c, dt=torch.float32), randn(b, lq, c)
            gate = randn(b, frames, 6, c, dt=torch.float32)[:, :, 2]
            comp = _compiled(reference.gated_residual, compile)
            rows.append(_row("gated_residual", _shape(x), timer,
                             None if mods is None else (lambda: mods[1].gated_residual(x, y, gate)),
                             lambda: reference.gated_residual(x, y, gate),
                             None if comp is None else (lambda: comp(x, y, gate)),
                             x.numel() * (8 + y.element_size()), "gbps"))

        if wanted("rms_norm_channels"):
            comp = _compiled(reference.rms_norm_channels, compile)
            for shape in s.vae_shapes:
                x, gamma = randn(*shape), randn(shape[1], 1, 1, 1, dt=torch.float32)
                rows.append(_row("rms_norm_channels", _shape(x) + "+silu", timer,
                                 None if mods is None else (lambda x=x, g=gamma: mods[1].rms_norm_channels(x, g, True)),
                                 lambda x=x, g=gamma: reference.rms_norm_channels(x, g, True),
                                 None if comp is None else (lambda x=x, g=gamma: comp(x, g, True)),
                                 2.0 * x.numel() * x.element_size(), "gbps"))
                del x
    for r in rows:
        log.info("%-28s %-40s triton %s ms, torch %.3f ms (%s)", r["kernel"], r["shape"],
                 "-" if r["triton_ms"] is None else f"{r['triton_ms']:.3f}", r["torch_ms"], r["torch_path"])
    return rows
