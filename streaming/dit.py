"""The causal Wan2.1 DiT of LongLive, built bottom-up: embeddings, attention, block, head.

Parameter names are the official ones (`blocks.N.self_attn.q.weight`, ...), so official
state dicts load without renaming. Numerics follow the official model:

- the residual stream, adaLN modulation and time embedding are float32; linear layers run
  in the compute dtype (bfloat16 on GPU, float32 on CPU);
- q/k RMSNorm is over the full projection width, then 3D RoPE at absolute frame positions;
- self-attention runs against the KV window (sink + rolling + the call's own frames);
- cross-attention K/V depend only on the prompt and are computed once per prompt
  (`CrossKV`), never per block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels

from .config import ModelConfig
from .kv_window import KVWindow, WindowPlan
from .rope import Rope3D


def sinusoidal_embedding(dim: int, position: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, dim] float64: cos of the half ladder first, then sin (base 10000)."""
    half = dim // 2
    pos = position.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=pos.device) / half)
    angles = torch.outer(pos, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class RMSNorm(nn.Module):
    """RMSNorm over the full projection width (Wan's q/k norm), split into heads, and with
    `cos`/`sin` given, RoPE on each head: one fused kernel (`kernels.rms_norm_rope`)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, num_heads: int, cos: torch.Tensor | None = None,
                sin: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L, C] -> [B, L, H, C/H] in x's dtype."""
        return kernels.rms_norm_rope(x, self.weight, cos, sin, num_heads, self.eps)


class Attention(nn.Module):
    """What self- and cross-attention share: q/k/v/o projections and the q/k RMSNorms."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, C] -> [B, L, H, C/H] (a view)."""
        return x.view(*x.shape[:2], self.num_heads, -1)


class SelfAttention(Attention):
    """Video tokens against the KV window: RoPE at absolute positions, K/V written in place."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, window: KVWindow,
                layer: int, plan: WindowPlan) -> torch.Tensor:
        q = self.norm_q(self.q(x), self.num_heads, cos, sin)
        k = self.norm_k(self.k(x), self.num_heads, cos, sin)
        window.write(layer, plan, k, self.heads(self.v(x)))
        keys, values = window.view(layer, plan)
        return self.o(kernels.attention(q, keys, values).flatten(2))


class CrossAttention(Attention):
    """Video tokens against the prompt's text tokens (no RoPE); K/V computed once per prompt."""

    def prompt_kv(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the embedded prompt [B, T, C] -> 2 x [B, T, H, D]."""
        return self.norm_k(self.k(text), self.num_heads), self.heads(self.v(text))

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q = self.norm_q(self.q(x), self.num_heads)
        return self.o(kernels.attention(q, kv[0], kv[1]).flatten(2))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.dim
        self.eps = cfg.eps
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d ** 0.5)
        self.self_attn = SelfAttention(d, cfg.num_heads, cfg.eps)
        self.norm3 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(d, cfg.num_heads, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))

    def forward(self, x: torch.Tensor, e0: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cross_kv: tuple[torch.Tensor, torch.Tensor], window: KVWindow, layer: int,
                plan: WindowPlan, dtype: torch.dtype) -> torch.Tensor:
        """x: [B, L, C] float32 residual; e0: [B, F, 6, C] float32 time modulation;
        dtype: the compute dtype of the linear layers' inputs."""
        mod = self.modulation.float() + e0                      # [B, F, 6, C]
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = mod.unbind(2)
        h = kernels.modulated_layer_norm(x, shift_a, scale_a, self.eps, dtype)
        x = kernels.gated_residual(x, self.self_attn(h, cos, sin, window, layer, plan), gate_a)
        h = F.layer_norm(x, (x.shape[-1],), self.norm3.weight.float(), self.norm3.bias.float(), self.eps)
        x = kernels.gated_residual(x, self.cross_attn(h.to(dtype), cross_kv))
        h = kernels.modulated_layer_norm(x, shift_f, scale_f, self.eps, dtype)
        return kernels.gated_residual(x, self.ffn(h), gate_f)


class Head(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.eps = cfg.eps
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """x: [B, L, C] float32; e: [B, F, C] float32 time embedding (no SiLU)."""
        shift, scale = (self.modulation.float()[:, None] + e[:, :, None]).unbind(2)
        h = kernels.modulated_layer_norm(x, shift, scale, self.eps, dtype)
        return self.head(h)


@dataclass
class CrossKV:
    """Per-prompt cross-attention keys and values of every layer."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]


class CausalDiT(nn.Module):
    """LongLive's block-causal Wan2.1 T2V model. See module docstring for the numerics."""

    # parameters kept in float32 whatever the compute dtype (the adaLN / time path, norms)
    FLOAT32_KEYS = ("modulation", "time_embedding", "time_projection", "norm")

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        if cfg.position_grid is not None:   # not in Wan (ModelConfig.position_grid)
            # random at about the patch embeddings' own size: a table started at zero stayed near
            # it (600 steps of training left it at 3 % of them; the model never used it)
            self.position_embedding = nn.Parameter(0.5 * torch.randn(cfg.position_grid[0] * cfg.position_grid[1], d))
        self._rope: Rope3D | None = None

    # -- setup ---------------------------------------------------------------
    def cast_(self, dtype: torch.dtype) -> "CausalDiT":
        """Linear and conv weights to `dtype`; the float32 path stays float32."""
        for name, p in self.named_parameters():
            keep = any(part in name for part in self.FLOAT32_KEYS)
            p.data = p.data.to(torch.float32 if keep else dtype)
        return self

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    def rope(self) -> Rope3D:
        dev = self.patch_embedding.weight.device
        if self._rope is None or self._rope.device != dev:
            self._rope = Rope3D(self.cfg.rope_split, self.cfg.rope_theta, dev)
        return self._rope

    def positions(self, rows: int, cols: int) -> torch.Tensor:
        """[rows*cols, dim] float32: the position table (`ModelConfig.position_grid`), resized
        (bilinear, as a picture) where the stream's patch grid is another size."""
        table = self.position_embedding.float()
        grid = tuple(self.cfg.position_grid)
        if (rows, cols) == grid:
            return table
        picture = table.view(1, *grid, -1).permute(0, 3, 1, 2)
        resized = torch.nn.functional.interpolate(picture, size=(rows, cols), mode="bilinear", align_corners=False)
        return resized.permute(0, 2, 3, 1).reshape(rows * cols, -1)

    def new_window(self, capacity: int, sink: int, frame_len: int, batch: int = 1) -> KVWindow:
        p = self.patch_embedding.weight
        return KVWindow(self.cfg.num_layers, capacity, sink, frame_len, self.cfg.num_heads, self.cfg.head_dim,
                        batch, p.dtype, p.device)

    # -- per prompt ----------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, context: torch.Tensor) -> CrossKV:
        """Text encoder output [B, text_len, text_dim] (pad rows zero) -> per-layer cross K/V."""
        return self.cross_kv(context)

    def cross_kv(self, context: torch.Tensor) -> CrossKV:
        """`encode_prompt` with gradients (training)."""
        if context.shape[-2:] != (self.cfg.text_len, self.cfg.text_dim):
            raise ValueError(f"prompt embedding must be [B, {self.cfg.text_len}, {self.cfg.text_dim}], "
                             f"not {list(context.shape)}")
        text = self.text_embedding(context.to(self.compute_dtype))
        return CrossKV([blk.cross_attn.prompt_kv(text) for blk in self.blocks])

    # -- forward -------------------------------------------------------------
    @torch.no_grad()
    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, prompt: CrossKV, window: KVWindow,
                start_frame: int, rewrite_sink: bool = False) -> torch.Tensor:
        """Flow prediction for latents [B, F, C, H, W] at per-frame timesteps [B, F].

        The call's keys and values go into `window` (see `KVWindow.plan`); the window's
        indices move only if the call appends new frames.
        """
        return self.predict(latents, timestep, prompt, window, start_frame, rewrite_sink)

    def predict(self, latents: torch.Tensor, timestep: torch.Tensor, prompt: CrossKV, window: KVWindow,
                start_frame: int, rewrite_sink: bool = False) -> torch.Tensor:
        """`forward` with gradients (training: the window's slots this call writes then carry
        them, so train on a window made for the step)."""
        cfg = self.cfg
        b, f, c, hgt, wid = latents.shape
        pt, ph, pw = cfg.patch_size
        if pt != 1:
            raise ValueError("only patch_size[0] == 1 is supported (one latent frame per token frame)")
        x = self.patch_embedding(latents.transpose(1, 2).to(self.compute_dtype))   # [B, C', F, h, w]
        rows, cols = x.shape[-2:]
        frame_len = rows * cols
        if frame_len != window.frame_len:
            raise ValueError(f"latents give {frame_len} tokens per frame, the window holds {window.frame_len}")
        x = x.flatten(2).transpose(1, 2).float()                                      # [B, L, C]
        if cfg.position_grid is not None:
            x = (x.view(b, f, frame_len, -1) + self.positions(rows, cols)).view(b, f * frame_len, -1)

        e = self.time_embedding(sinusoidal_embedding(cfg.freq_dim, timestep.flatten()).float())
        e0 = self.time_projection(e).unflatten(1, (6, cfg.dim)).unflatten(0, (b, f))  # [B, F, 6, C]
        e = e.unflatten(0, (b, f))                                                    # [B, F, C]

        cos, sin = self.rope().cos_sin(start_frame, f, rows, cols)
        plan = window.plan(start_frame, f, rewrite_sink)
        dtype = self.compute_dtype
        for i, blk in enumerate(self.blocks):
            x = blk(x, e0, cos, sin, prompt.layers[i], window, i, plan, dtype)
        window.commit(plan)

        out = self.head(x, e, dtype)                                                          # [B, L, ph*pw*C]
        out = out.float().view(b, f, rows, cols, ph, pw, cfg.out_dim)
        return out.permute(0, 1, 6, 2, 4, 3, 5).reshape(b, f, cfg.out_dim, rows * ph, cols * pw)
