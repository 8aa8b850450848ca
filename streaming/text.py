"""Prompt -> text embedding: the UMT5-XXL encoder, its tokenizers and an embedding cache.

Output format (Wan's text encoder): one prompt gives a float32 tensor
[1, cfg.model.text_len, cfg.model.text_dim] on the pipeline's device. The rows of the real
tokens (the prompt's tokens plus the EOS token ``</s>``) hold the encoder output; every row
past them is exactly zero. Padding is kept, not trimmed.

The encoder (`UMT5Encoder`) is config-driven (`cfg.text`) and uses the official key names of
`models_t5_umt5-xxl-enc-bf16.pth`, so the same class serves the real 5.7 B-parameter
encoder and the tiny preset's seeded one:

- T5 RMSNorm (no mean subtraction, eps 1e-6), computed in float32;
- self-attention without the 1/sqrt(head_dim) scale, plus a learned relative position bias
  per layer (or one shared bias with `shared_pos`): bidirectional buckets, 32 buckets, max
  distance 128; padded keys get the dtype's minimum as bias;
- gated GELU(tanh) feed-forward: fc2(fc1(x) * gelu_tanh(gate(x)));
- a final RMSNorm.

Tokenizers. Every prompt is cleaned first as the official code does (ftfy.fix_text, HTML
unescaped twice, whitespace collapsed to single spaces, stripped); then tokenized, EOS
appended, truncated to text_len keeping EOS as the last real token, padded with id 0.
`cfg.text.kind == "umt5"` reads google/umt5-xxl's tokenizer.json with the `tokenizers`
library; `"byte"` (the tiny preset, no download) maps UTF-8 byte b to id b + 2 (0 = pad,
1 = EOS), so it needs vocab_size >= 258.

Cache and placement. Embeddings are kept in an LRU cache keyed by the cleaned prompt
(`cfg.text.cache_size` entries; 0 disables it), so switching back to an earlier prompt costs
no encoder pass (`PromptEncoder.passes` counts the passes actually run). `cfg.text.placement`:

- ``"resident"``: the encoder stays on the device. Uncached prompts cost only the encoder
  pass (tens of ms for UMT5-XXL on a modern GPU), but the weights hold ~11.4 GB (bf16) of
  device memory for the life of the server.
- ``"offload"``: the weights live in (pinned when possible) CPU memory and are copied to the
  device only for an uncached encode, then dropped again. The device memory is free for
  the generator between prompts, at the price of a host-to-device copy of ~11 GB per
  uncached prompt (roughly 0.5-3 s, depending on pinning and the bus). Cached prompts cost
  nothing in either mode. On a CPU device both modes are the same.

Loading the real file never holds two copies: the module is built on the meta device, the
checkpoint is memory-mapped (`streaming.weights.read_checkpoint`), its keys and shapes are
checked (`check_state`), and tensors are moved one at a time in the target dtype (bfloat16 on
CUDA, float32 on CPU). Thread-safety is not provided: one worker thread owns the encoder.
"""

from __future__ import annotations

import functools
import html
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Config, ConfigError, TextConfig
from .weights import WeightFiles, WeightsError, check_state, read_checkpoint

log = logging.getLogger(__name__)

EPS = 1e-6
MAX_DISTANCE = 128
PAD_ID = 0
BYTE_EOS_ID = 1
BYTE_OFFSET = 2  # byte b -> id b + 2 (0 = pad, 1 = EOS)


# -- layers -------------------------------------------------------------------
class RMSNorm(nn.Module):
    """T5 layer norm: x / rms(x) * weight, statistics in float32, no mean subtraction."""

    def __init__(self, dim: int, eps: float = EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * y.to(self.weight.dtype)


def relative_position_buckets(lq: int, lk: int, num_buckets: int, max_distance: int = MAX_DISTANCE,
                              device: torch.device | str | None = None) -> torch.Tensor:
    """Bidirectional T5 buckets [lq, lk] of the offset key - query.

    Half of the buckets are for keys after the query. Within a half, the first half of the
    buckets are exact offsets, the rest grow logarithmically up to `max_distance`.
    """
    rel = torch.arange(lk, device=device)[None, :] - torch.arange(lq, device=device)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).long() * half
    dist = rel.abs()
    exact = half // 2
    far = exact + (torch.log(dist.clamp(min=1).float() / exact) / math.log(max_distance / exact)
                   * (half - exact)).long()
    far = far.clamp(max=half - 1)
    return buckets + torch.where(dist < exact, dist, far)


class RelativePositionBias(nn.Module):
    """A learned bias per (bucket, head); key name `...pos_embedding.embedding.weight`."""

    def __init__(self, num_buckets: int, num_heads: int, max_distance: int = MAX_DISTANCE):
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)
        self._buckets: dict[tuple[int, int, str], torch.Tensor] = {}

    def forward(self, lq: int, lk: int) -> torch.Tensor:
        """[1, heads, lq, lk] in the embedding's dtype."""
        device = self.embedding.weight.device
        key = (lq, lk, str(device))
        buckets = self._buckets.get(key)
        if buckets is None:
            buckets = relative_position_buckets(lq, lk, self.num_buckets, self.max_distance, device)
            self._buckets = {key: buckets}  # one length in practice (text_len)
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)


class T5Attention(nn.Module):
    """Multi-head self-attention without the 1/sqrt(d) scale; the bias carries position and mask."""

    def __init__(self, dim: int, dim_attn: int, num_heads: int):
        super().__init__()
        if dim_attn % num_heads:
            raise ConfigError(f"text.dim_attn ({dim_attn}) must be a multiple of text.num_heads ({num_heads})")
        self.num_heads, self.head_dim = num_heads, dim_attn // num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (proj(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)
        return self.o(y.transpose(1, 2).reshape(b, n, -1))


class GatedFFN(nn.Module):
    """fc2(fc1(x) * gelu_tanh(gate(x))); `gate` is a Sequential so its key is `gate.0.weight`."""

    def __init__(self, dim: int, dim_ffn: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class T5Block(nn.Module):
    def __init__(self, tc: TextConfig):
        super().__init__()
        self.norm1 = RMSNorm(tc.dim)
        self.attn = T5Attention(tc.dim, tc.dim_attn, tc.num_heads)
        self.norm2 = RMSNorm(tc.dim)
        self.ffn = GatedFFN(tc.dim, tc.dim_ffn)
        self.pos_embedding = None if tc.shared_pos else RelativePositionBias(tc.num_buckets, tc.num_heads)

    def forward(self, x: torch.Tensor, key_pad: torch.Tensor, shared_bias: torch.Tensor | None = None) -> torch.Tensor:
        """`key_pad` [B, 1, 1, L] is True for padded keys."""
        n = x.shape[1]
        pos = shared_bias if self.pos_embedding is None else self.pos_embedding(n, n)
        bias = pos.to(x.dtype).masked_fill(key_pad, torch.finfo(x.dtype).min)
        x = x + self.attn(self.norm1(x), bias)
        return x + self.ffn(self.norm2(x))


class UMT5Encoder(nn.Module):
    """The UMT5 encoder stack (official key names). forward(ids, mask) -> [B, L, dim]."""

    def __init__(self, tc: TextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(tc.vocab_size, tc.dim)
        self.pos_embedding = RelativePositionBias(tc.num_buckets, tc.num_heads) if tc.shared_pos else None
        self.blocks = nn.ModuleList(T5Block(tc) for _ in range(tc.num_layers))
        self.norm = RMSNorm(tc.dim)

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids)
        n = ids.shape[1]
        key_pad = (mask == 0).view(mask.shape[0], 1, 1, n)
        shared = self.pos_embedding(n, n) if self.pos_embedding is not None else None
        for block in self.blocks:
            x = block(x, key_pad, shared)
        return self.norm(x)


def encoder_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA (as released), float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def build_tiny_encoder(cfg: Config, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                       weights_seed: int | None = None) -> UMT5Encoder:
    """A UMT5 encoder with seeded random weights (drawn on the CPU, so identical on every device).

    `cfg.init.text_mixing` multiplies each block's attention-output and FFN-output projections
    after the draw, so every token's embedding carries the whole prompt (1: plain init)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.weights_seed if weights_seed is None else weights_seed)
        with torch.device("cpu"):
            model = UMT5Encoder(cfg.text)
    if cfg.init.text_mixing != 1.0:
        with torch.no_grad():
            for block in model.blocks:
                block.attn.o.weight.mul_(cfg.init.text_mixing)
                block.ffn.fc2.weight.mul_(cfg.init.text_mixing)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def random_encoder(cfg: Config, device: torch.device | str, dtype: torch.dtype) -> UMT5Encoder:
    """Random weights at any size, allocated directly on the device in `dtype` (benchmarks:
    the full 5.7 B-parameter encoder without a float32 copy)."""
    with torch.device("meta"):
        model = UMT5Encoder(cfg.text).to(dtype)
    model = model.to_empty(device=device)
    for p in model.parameters():
        p.data.normal_(0.0, 0.02)
    return model.eval().requires_grad_(False)


def _pin(t: torch.Tensor) -> torch.Tensor:
    try:
        return t.pin_memory()
    except RuntimeError:  # no CUDA driver or locked-memory limit: unpinned still works
        return t


def load_umt5(cfg: Config, path: str | Path, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32, pin: bool = False) -> UMT5Encoder:
    """The encoder from a checkpoint (.pth memory-mapped or .safetensors), one tensor at a time.

    `pin` puts CPU weights in page-locked memory (faster copies for the offload placement).
    """
    path, device = Path(path), torch.device(device)
    with torch.device("meta"):
        model = UMT5Encoder(cfg.text)
    sd: Mapping[str, torch.Tensor] = read_checkpoint(path)
    check_state(model, sd, path)
    for name, value in sd.items():
        owner, _, leaf = name.rpartition(".")
        mod = model.get_submodule(owner) if owner else model
        t = value.to(device=device, dtype=dtype)
        if pin and device.type == "cpu":
            t = _pin(t)
        setattr(mod, leaf, nn.Parameter(t, requires_grad=False))
    del sd
    log.info("loaded UMT5 text encoder from %s (%s, %s)", path, device, str(dtype).removeprefix("torch."))
    return model.eval().requires_grad_(False)


# -- tokenizers ----------------------------------------------------------------
_SPACES = re.compile(r"\s+")


@functools.lru_cache(maxsize=1)
def _ftfy():
    try:
        import ftfy
        return ftfy
    except ImportError:  # GPU benchmark machines lack it; the bench does not need it
        log.warning("ftfy is not installed: prompts are cleaned without mojibake repair")
        return None


def _fix_text(text: str) -> str:
    ftfy = _ftfy()
    return text if ftfy is None else ftfy.fix_text(text)


def clean_prompt(text: str) -> str:
    """The official cleaning: fix mojibake, unescape HTML twice, collapse whitespace, strip."""
    text = _fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _SPACES.sub(" ", text).strip()


def pad_ids(ids: list[int], eos_id: int, text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncate to text_len - 1 tokens, append EOS, pad with 0: (ids [1, L], mask [1, L]) int64."""
    real = list(ids[: text_len - 1]) + [eos_id]
    out = torch.full((1, text_len), PAD_ID, dtype=torch.long)
    mask = torch.zeros((1, text_len), dtype=torch.long)
    out[0, : len(real)] = torch.tensor(real, dtype=torch.long)
    mask[0, : len(real)] = 1
    return out, mask


class Tokenizer(Protocol):
    def __call__(self, cleaned: str) -> tuple[torch.Tensor, torch.Tensor]:
        """An already cleaned prompt -> (ids [1, text_len], mask [1, text_len]) int64."""
        ...


class ByteTokenizer:
    """UTF-8 bytes as ids (b + 2); 0 = pad, 1 = EOS. For the tiny preset: nothing to download."""

    vocab_size = 256 + BYTE_OFFSET

    def __init__(self, text_len: int, vocab_size: int | None = None):
        """`vocab_size` below 258 (random weights of a smaller vocabulary: `bench`) folds the
        byte ids into it, so every id is a row of the embedding."""
        self.text_len = text_len
        self.fold = vocab_size if vocab_size is not None and vocab_size < self.vocab_size else None

    def __call__(self, cleaned: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [b + BYTE_OFFSET for b in cleaned.encode("utf-8")]
        if self.fold is not None:
            ids = [BYTE_OFFSET + (i - BYTE_OFFSET) % (self.fold - BYTE_OFFSET) for i in ids]
        return pad_ids(ids, BYTE_EOS_ID, self.text_len)


class UMT5Tokenizer:
    """google/umt5-xxl's tokenizer.json through the `tokenizers` library."""

    def __init__(self, tokenizer, eos_id: int, text_len: int):
        self.tokenizer, self.eos_id, self.text_len = tokenizer, eos_id, text_len

    @classmethod
    def from_folder(cls, folder: str | Path | None, text_len: int) -> "UMT5Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        if folder is None:
            raise WeightsError("no tokenizer for the UMT5 text encoder: expected google/umt5-xxl/tokenizer.json "
                               "in the weights folder (official layout or directly in it)")
        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise WeightsError(f"tokenizer file {path} does not exist (the google/umt5-xxl folder must hold "
                               "tokenizer.json)")
        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as exc:
            raise WeightsError(f"{path} is not a readable tokenizer.json ({exc})") from None
        eos = tok.token_to_id("</s>")
        if eos is None:
            raise WeightsError(f"{path} has no '</s>' token, so it is not a T5 tokenizer")
        return cls(tok, eos, text_len)

    def __call__(self, cleaned: str) -> tuple[torch.Tensor, torch.Tensor]:
        # EOS is appended here (not by the post-processor) so truncation keeps it last.
        ids = self.tokenizer.encode(cleaned, add_special_tokens=False).ids
        return pad_ids(ids, self.eos_id, self.text_len)


class WordTokenizer:
    """A word-level tokenizer.json (the toy world's, `training/vocabulary.py`) through the
    `tokenizers` library: one id per known word, `[UNK]` for every other, `[EOS]` appended."""

    def __init__(self, tokenizer, eos_id: int, text_len: int):
        self.tokenizer, self.eos_id, self.text_len = tokenizer, eos_id, text_len

    @classmethod
    def from_folder(cls, folder: str | Path | None, text_len: int, vocab_size: int) -> "WordTokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        if folder is None:
            raise WeightsError("no tokenizer for the word-level text encoder: expected tokenizer.json in the weights folder")
        path = Path(folder) / "tokenizer.json"
        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as exc:
            raise WeightsError(f"{path} is not a readable tokenizer.json ({exc})") from None
        eos = tok.token_to_id("[EOS]")
        if eos is None or tok.token_to_id("[UNK]") is None:
            raise WeightsError(f"{path} has no [EOS] or [UNK] token, so it is not a word-level tokenizer of this project")
        if tok.get_vocab_size() > vocab_size:
            raise WeightsError(f"{path} has {tok.get_vocab_size()} tokens, more than the config's text.vocab_size "
                               f"({vocab_size})")
        return cls(tok, eos, text_len)

    def __call__(self, cleaned: str) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_ids(self.tokenizer.encode(cleaned).ids, self.eos_id, self.text_len)


# -- the encoder the pipeline uses ----------------------------------------------
class PromptEncoder:
    """Prompt -> [1, text_len, text_dim] float32 embedding, cached by cleaned prompt."""

    def __init__(self, cfg: Config, model: UMT5Encoder, tokenizer: Tokenizer, device: torch.device,
                 placement: str | None = None, cache_size: int | None = None):
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.device = torch.device(device)
        self.placement = placement or cfg.text.placement
        self.cache_size = cfg.text.cache_size if cache_size is None else cache_size
        self.passes = 0  # encoder passes run (cache misses)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()   # one encoding at a time, from whichever thread asks

    @property
    def offloaded(self) -> bool:
        """True when the weights live on the CPU and visit the device only to encode."""
        return self.placement == "offload" and self.device.type != "cpu"

    @classmethod
    def random(cls, cfg: Config, device: torch.device | str) -> "PromptEncoder":
        """The configured encoder size with random weights and the byte tokenizer: what
        `bench` needs to measure memory and speed without any files."""
        device = torch.device(device)
        return cls(cfg, random_encoder(cfg, device, encoder_dtype(device)),
                   ByteTokenizer(cfg.model.text_len, cfg.text.vocab_size), device, placement="resident")

    @classmethod
    def from_config(cls, cfg: Config, files: WeightFiles | None, device: torch.device | str) -> "PromptEncoder":
        device = torch.device(device)
        tc, m = cfg.text, cfg.model
        dtype = encoder_dtype(device)
        home = torch.device("cpu") if cfg.text.placement == "offload" else device
        if tc.kind == "byte":
            model = build_tiny_encoder(cfg, home, dtype)
            tokenizer: Tokenizer = ByteTokenizer(m.text_len)
            log.info("text encoder: byte tokenizer + tiny seeded UMT5 (%d layers, dim %d)", tc.num_layers, tc.dim)
        else:
            word = tc.kind == "word"
            if files is None or files.t5 is None:
                where = f" in {files.root}" if files is not None else ""
                wanted = "text_encoder.safetensors" if word else "models_t5_umt5-xxl-enc-bf16.pth"
                raise WeightsError(f"the {cfg.source} config needs the {'word-level' if word else 'UMT5'} text encoder "
                                   f"{wanted}, which was not found{where}")
            if word:
                tokenizer = WordTokenizer.from_folder(files.tokenizer, m.text_len, tc.vocab_size)
            else:
                tokenizer = UMT5Tokenizer.from_folder(files.tokenizer, m.text_len)
            model = load_umt5(cfg, files.t5, home, dtype, pin=home != device and device.type == "cuda")
        return cls(cfg, model, tokenizer, device)

    # -- tokenizing and encoding ----------------------------------------------
    def tokenize(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) [1, text_len] int64 of a raw prompt (cleaned here)."""
        return self.tokenizer(clean_prompt(prompt))

    @torch.no_grad()
    def _run(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.offloaded:
            return self.model(ids.to(self.device), mask.to(self.device))
        params = list(self.model.parameters())
        home = [p.data for p in params]
        try:
            for p in params:
                p.data = p.data.to(self.device, non_blocking=True)
            return self.model(ids.to(self.device), mask.to(self.device))
        finally:
            for p, h in zip(params, home):
                p.data = h
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    @torch.no_grad()
    def encode(self, prompt: str) -> torch.Tensor:
        """[1, text_len, text_dim] float32 on the device; rows past the real tokens are zero.
        Thread-safe: the server encodes new prompts off its generation thread."""
        key = clean_prompt(prompt)
        with self._lock:
            return self._encode(key)

    def _encode(self, key: str) -> torch.Tensor:
        """`encode` under the lock: the cache, else one encoder pass."""
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit.to(self.device, copy=True)
        ids, mask = self.tokenizer(key)
        t0 = time.perf_counter()
        out = self._run(ids, mask).float()
        out[:, int(mask.sum()):] = 0
        self.passes += 1
        log.debug("encoded prompt (%d tokens) in %.1f ms", int(mask.sum()), 1e3 * (time.perf_counter() - t0))
        if self.cache_size > 0:
            store = out.cpu() if self.offloaded else out
            self._cache[key] = store.clone()
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out

    def cached_prompts(self) -> list[str]:
        """Cleaned prompts in the cache, least recently used first."""
        with self._lock:
            return list(self._cache)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
