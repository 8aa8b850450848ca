"""Bidirectional attention, FlashAttention-2 style, reading K/V where they lie.

`attention(q, k, v)` has exactly the semantics of `kernels.reference.attention`:
q [B, Lq, H, D], k/v [B, Lk, H, D] -> softmax(q k^T / sqrt(D)) v as a contiguous
[B, Lq, H, D] tensor in q's dtype. K and V are usually prefix views of the preallocated
KV window ([B, N, H, D] sliced along dim 1): they are read through their strides, so
nothing is gathered, concatenated or made contiguous.

The kernel: one program per (BLOCK_M queries, batch x head). It keeps its query tile in
registers and streams the keys in tiles of BLOCK_N, with the online softmax in float32
(base-2 exponentials, the 1/sqrt(D) scale folded into log2(e)). The full key tiles run
without masks; only the last, partial tile masks its tail. Programs along the query axis
are launched first, so the programs of one head run together and share its K/V in L2.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math

import torch
import triton
import triton.language as tl

from . import reference
from ._runtime import SHARED_MEMORY_PER_BLOCK, autotune_enabled, check_device, is_interpreted, offline_target

log = logging.getLogger(__name__)

LOG2E = 1.4426950408889634
HEAD_DIMS = (16, 32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _attend_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kl, stride_kd, stride_vl, stride_vd,
                  start, stop, Lk, qk_scale,
                  HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                  PRECISION: tl.constexpr):
    """Fold the key tiles [start, stop) into the running (acc, l_i, m_i) of one query tile."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for n0 in range(start, stop, BLOCK_N):
        rows = n0 + offs_n
        k_ptrs = k_base + rows[:, None] * stride_kl + offs_d[None, :] * stride_kd
        v_ptrs = v_base + rows[:, None] * stride_vl + offs_d[None, :] * stride_vd
        if MASKED:
            valid = rows < Lk
            k = tl.load(k_ptrs, mask=valid[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        if MASKED:
            s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)      # running max, in scaled log2 units
        p = tl.math.exp2(s * qk_scale - m_new[:, None])       # one FMA per score
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if MASKED:
            v = tl.load(v_ptrs, mask=valid[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["Lq", "Lk"])
def _attention_fwd(Q, K, V, Out,
                   stride_qb, stride_ql, stride_qh, stride_qd,
                   stride_kb, stride_kl, stride_kh, stride_kd,
                   stride_vb, stride_vl, stride_vh, stride_vd,
                   stride_ob, stride_ol, stride_oh,
                   H, Lq, Lk, qk_scale,
                   LQ_BUCKET, LK_BUCKET,  # autotune keys only
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < Lq
    q_ptrs = (Q + b.to(tl.int64) * stride_qb + h * stride_qh
              + offs_m[:, None].to(tl.int64) * stride_ql + offs_d[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)

    k_base = K + b.to(tl.int64) * stride_kb + h * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    n_full = (Lk // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kl, stride_kd, stride_vl, stride_vd,
                                  0, n_full, Lk, qk_scale, HEAD_DIM, BLOCK_N, False, PRECISION)
    if n_full < Lk:
        acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kl, stride_kd, stride_vl,
                                      stride_vd, n_full, Lk, Lk, qk_scale, HEAD_DIM, BLOCK_N, True, PRECISION)

    out = acc / l_i[:, None]
    o_ptrs = (Out + b.to(tl.int64) * stride_ob + h * stride_oh
              + offs_m[:, None].to(tl.int64) * stride_ol + offs_d[None, :])
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])


# (BLOCK_M, BLOCK_N, num_warps, num_stages), best first. For D = 128 in bf16 on H100 (sm_90,
# compiled ahead of time by `bench.compile_report`, no GPU needed): 128 queries x 64 keys, 8 warps, a
# 3-deep cp.async pipeline feeding wgmma uses 128 KB of shared memory (Q 32 KB + 3 x (K 16 KB
# + V 16 KB)) and ~180 registers per thread with no spill; 128 x 128 tiles need ~250
# registers and 160/224 KB. 4 warps with 128 queries at D = 128 spill (a 128 x 128 float32
# accumulator over 128 threads), so they are not offered. GPUs with 99 KB of shared memory
# per block (RTX 30xx/40xx/50xx, L4, L40S) fit only the smaller entries: the default is the
# first entry that fits the device, and the autotuner skips the rest.
_CONFIGS = {
    128: [(128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (128, 128, 8, 3), (64, 64, 4, 3)],
    64: [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 4)],
}
_SMALL = (64, 32, 4, 2)   # fits every supported GPU at every head size and dtype


def candidate_configs(head_dim: int) -> list[tuple[int, int, int, int]]:
    """The (BLOCK_M, BLOCK_N, num_warps, num_stages) the autotuner tries at this head size, best first."""
    return list(_CONFIGS[128 if head_dim > 64 else 64])


def _compiled_shared(args: tuple, head_dim: int, precision: str, config: tuple[int, int, int, int]) -> int:
    """Shared memory the kernel compiled with `config` needs on the current device (compiled, not run;
    Triton keeps the compiled kernel for the launch)."""
    bm, bn, w, s = config
    kernel = _attention_fwd.warmup(*args, grid=(1, 1), HEAD_DIM=head_dim, BLOCK_M=bm, BLOCK_N=bn,
                                   PRECISION=precision, num_warps=w, num_stages=s)
    return int(kernel.metadata.shared)


_UNTUNED: dict = {}


def untuned_config(args: tuple, head_dim: int, dtype: torch.dtype, device: torch.device,
                   precision: str) -> tuple[int, int, int, int]:
    """The choice without autotuning: the best candidate whose compiled kernel fits the device's
    shared memory per block (H100: the first; RTX 40xx with 99 KB: a smaller one). Decided once
    per head size, dtype and device."""
    key = (head_dim, dtype, str(device), offline_target())
    if key not in _UNTUNED:
        choice = _SMALL
        if dtype != torch.float32:   # twice the bytes per tile; float32 is never the hot path
            limit = max_shared_memory(device)
            for config in candidate_configs(head_dim):
                try:
                    shared = _compiled_shared(args, head_dim, precision, config)
                except Exception as exc:  # noqa: BLE001 - a config this Triton cannot build: try the next
                    log.info("attention: tiles %s do not compile here (%s)", config, exc)
                    continue
                if shared <= limit:
                    choice = config
                    break
        _UNTUNED[key] = choice
        log.info("attention: untuned tiles for D=%d %s on %s: %s", head_dim, dtype, device, choice)
    return _UNTUNED[key]


def max_shared_memory(device: torch.device) -> int:
    """Shared memory per block of `device`, as Triton checks it (the compile target's when offline)."""
    target = offline_target()
    if target is not None:
        return target[1]
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _device_shared_memory(index)


@functools.lru_cache(maxsize=None)
def _device_shared_memory(index: int) -> int:
    try:
        from triton.compiler.compiler import max_shared_mem
        return int(max_shared_mem(index))
    except Exception as exc:  # noqa: BLE001 - an older/newer Triton without this helper
        major, minor = torch.cuda.get_device_capability(index)
        limit = SHARED_MEMORY_PER_BLOCK.get(10 * major + minor, min(SHARED_MEMORY_PER_BLOCK.values()))
        log.info("could not ask Triton for the shared memory of cuda:%d (%s); sm_%d%d: %d bytes",
                 index, exc, major, minor, limit)
        return limit


def _autotuned(configs):
    # keep the choice on disk where this Triton can (later processes skip the sweep)
    extra = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}
    return triton.autotune(
        configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in configs],
        key=["HEAD_DIM", "LQ_BUCKET", "LK_BUCKET"],  # (dtypes are part of the key too)
        **extra,
    )(_attention_fwd)


_TUNED = {group: _autotuned(configs) for group, configs in _CONFIGS.items()}

INTERPRETED = is_interpreted(_attention_fwd)
# blocks for the CPU interpreter: small, so tests cover several tiles and the masked tail
INTERPRETER_BLOCKS = (32, 16)


def _bucket(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Shapes and dtypes the kernel handles; anything else goes to the reference."""
    return (q.dim() == 4 and k.dim() == 4 and v.dim() == 4
            and q.dtype in DTYPES and k.dtype == q.dtype and v.dtype == q.dtype
            and q.shape[-1] in HEAD_DIMS and k.shape[-1] == q.shape[-1] and v.shape[-1] == q.shape[-1]
            and k.shape == v.shape and k.shape[0] == q.shape[0] and k.shape[2] == q.shape[2]
            and k.shape[1] > 0 and q.shape[0] * q.shape[2] > 0
            # key/value row offsets are 32-bit inside a head
            and k.shape[1] * max(abs(k.stride(1)), abs(v.stride(1)), 1) < 2 ** 31)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              config: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v; q [B, Lq, H, D], k/v [B, Lk, H, D] (any strides) -> [B, Lq, H, D].

    `config` forces one (BLOCK_M, BLOCK_N, num_warps, num_stages) instead of the autotuner's
    or the default choice (for benchmarks and the ahead-of-time compile check).
    """
    if not supported(q, k, v):
        log.debug("attention: shapes %s %s %s / dtype %s not handled by the Triton kernel; using the reference",
                  tuple(q.shape), tuple(k.shape), tuple(v.shape), q.dtype)
        return reference.attention(q, k, v)
    check_device(INTERPRETED, q, k, v)
    b, lq, h, d = q.shape
    lk = k.shape[1]
    out = torch.empty((b, lq, h, d), dtype=q.dtype, device=q.device)
    if lq == 0:
        return out
    args = (q, k, v, out, *q.stride(), *k.stride(), *v.stride(), *out.stride()[:3],
            h, lq, lk, LOG2E / math.sqrt(d), _bucket(lq), _bucket(lk))
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    if INTERPRETED:   # a forced config keeps its tile shape (warps and stages mean nothing here)
        bm, bn = config[:2] if config else INTERPRETER_BLOCKS
        _attention_fwd[(triton.cdiv(lq, bm), b * h)](*args, HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn,
                                                     PRECISION=precision)
    elif config is None and autotune_enabled():
        grid = lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]), b * h)  # noqa: E731
        _TUNED[128 if d > 64 else 64][grid](*args, HEAD_DIM=d, PRECISION=precision)
    else:
        bm, bn, w, s = config or untuned_config(args, d, q.dtype, q.device, precision)
        _attention_fwd[(triton.cdiv(lq, bm), b * h)](*args, HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn,
                                                     PRECISION=precision, num_warps=w, num_stages=s)
    return out
