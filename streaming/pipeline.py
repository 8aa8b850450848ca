"""From a prompt to pixels: text encoder -> generator -> streaming decoder -> uint8 frames.

`VideoPipeline` is synchronous and single-owner: the server's engine thread drives it, the
offline `generate` command drives it directly. Each `next_frames()` produces one block of
video frames (the first block of a stream gives 1 + 4*(F-1) frames, later ones 4*F) as a
host `uint8` array [N, H, W, 3], after one device-to-host copy.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

import kernels

from .blend import Blend, Glide, TransitionSpec
from .config import Config, apply_runtime, preset_weights
from .errors import UserError
from .generator import GeneratorSnapshot, StreamingGenerator
from .input_encoder import InputEncoder, make_input_encoder
from .motion_strength import MotionStrength
from .weights import WeightFiles, WeightsError, build_dit, load_dit, locate

log = logging.getLogger(__name__)


class TextEncoder(Protocol):
    def encode(self, prompt: str) -> torch.Tensor:
        """[1, text_len, text_dim] float32 embedding (rows past the real tokens zero)."""
        ...


class Decoder(Protocol):
    def reset(self) -> None: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, F, C, h, w] of the next block -> video [B, T, 3, H, W] in [-1, 1]."""
        ...

    def state(self) -> Any: ...

    def set_state(self, state: Any) -> None: ...


@dataclass
class FrameBlock:
    frames: np.ndarray          # [N, H, W, 3] uint8
    block: int                  # block index in the stream
    prompt: str                 # the prompt (a blend's label) the block was generated under
    dit_ms: float
    decode_ms: float
    transition: tuple[int, int] | None = None   # (k, N): block k of an N-block transition to `prompt`
    recache_ms: float = 0.0     # of dit_ms: re-caching the window under a new prompt (0: no switch)
    strength: float | None = None   # video-to-video: the input's strength (None: text alone)
    encode_ms: float = 0.0      # encoding the input's frames (0: text alone)


@dataclass
class PipelineSnapshot:
    """The whole stream at a block boundary: generator (window, latent tail, noise), decoder
    cache and prompts. Restoring it and generating equals never having left."""

    generator: GeneratorSnapshot
    decoder: Any
    prompt: str
    pending_prompt: str | None
    glide: Glide | None = None
    input: Any = None           # the input encoder's cache (None: no input under way)

    @property
    def nbytes(self) -> int:
        """Bytes of tensor memory the snapshot holds of its own (the prompt's embedding and
        cross-attention keys, shared with the live stream, are not counted)."""
        g = self.generator
        return _tensor_bytes([g.window.k, g.window.v, g.history, self.decoder, self.input])


class DeviceError(UserError, ValueError):
    """A device that cannot be used; one sentence for the user."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name} was asked for, but torch sees no CUDA GPU; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device {name} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """[B, T, 3, H, W] in [-1, 1] -> [T, H, W, 3] uint8 (first batch item), on the device."""
    v = video[0].float().add(1.0).mul(127.5).round_().clamp_(0, 255).to(torch.uint8)
    return v.permute(0, 2, 3, 1).contiguous()


class VideoPipeline:
    def __init__(self, cfg: Config, generator: StreamingGenerator, text: TextEncoder, decoder: Decoder,
                 embedded_default: bool, weights: WeightFiles | None = None):
        self.cfg, self.generator, self.text, self.decoder = cfg, generator, text, decoder
        self.embedded_default = embedded_default
        self.weights = weights
        self.device = generator.device
        self.prompt = ""
        self._pending_prompt: str | None = None
        self._glide: Glide | None = None
        self._pinned: torch.Tensor | None = None
        self._input: InputEncoder | None = None      # made on the first input block
        self.motion_strength: MotionStrength | None = None   # set: the input's motion sets its strength

    # -- construction ------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Config, weights: str | Path | None = None, device: str | None = None) -> "VideoPipeline":
        dev = resolve_device(device or cfg.runtime.device)
        dtype = DTYPES[cfg.runtime.dtype]
        kernels.set_default_mode(cfg.runtime.kernels)
        apply_runtime(cfg.runtime)       # process-wide: torch's CPU threads
        default = weights is None
        if default and cfg.weights:
            weights = preset_weights(cfg)
            if not (weights / "manifest.json").is_file():
                raise WeightsError(f"the {cfg.name} preset's trained weights are missing from {weights}; "
                                   "train them with `longlive train` (docs/TOY_WORLD.md)")
        files = locate(weights) if weights is not None else None
        if files is None:
            dit = build_dit(cfg, dev, dtype)
        else:
            dit = load_dit(cfg, files.dit, files.lora, dev, dtype)
        gen = StreamingGenerator(_maybe_fp8(dit, cfg, dev), cfg)
        text = make_text_encoder(cfg, files, dev)
        decoder = make_decoder(cfg, files, dev, dtype)
        return cls(cfg, gen, text, decoder, embedded_default=default, weights=files)

    @classmethod
    def random(cls, cfg: Config, device: str | torch.device | None = None) -> "VideoPipeline":
        """Every part at its configured size with random weights, even where the config
        needs real files (the text encoder): what `bench` measures."""
        from .text import PromptEncoder

        dev = resolve_device(str(device or cfg.runtime.device))
        dtype = DTYPES[cfg.runtime.dtype]
        kernels.set_default_mode(cfg.runtime.kernels)
        apply_runtime(cfg.runtime)       # process-wide: torch's CPU threads
        dit = _maybe_fp8(build_dit(cfg, dev, dtype), cfg, dev)
        text = PromptEncoder.random(cfg, dev) if cfg.text.kind != "byte" else make_text_encoder(cfg, None, dev)
        return cls(cfg, StreamingGenerator(dit, cfg), text, make_decoder(cfg, None, dev, dtype), embedded_default=True)

    # -- stream control -------------------------------------------------------
    @property
    def fps(self) -> int:
        return self.cfg.video.fps

    @property
    def size(self) -> tuple[int, int]:
        return self.cfg.video.width, self.cfg.video.height

    def encode(self, prompt: str | Blend) -> torch.Tensor:
        """The conditioning of a prompt or a blend (text embeddings cached by prompt). Safe to
        call from another thread while this one generates, so a new prompt can be encoded
        without stalling the stream."""
        if isinstance(prompt, Blend):
            return prompt.embed(self.text.encode)
        return self.text.encode(prompt)

    def start(self, prompt: str | Blend, seed: int = 0, embedding: torch.Tensor | None = None) -> None:
        """A new stream under `prompt` (its `embedding` when already encoded) with noise seed `seed`."""
        embedding = self.encode(prompt) if embedding is None else embedding
        self.generator.reset(embedding, seed)
        self.decoder.reset()
        if self._input is not None:
            self._input.reset()
        self.prompt, self._pending_prompt, self._glide = _label(prompt), None, None

    def switch_prompt(self, prompt: str | Blend, embedding: torch.Tensor | None = None,
                      transition: TransitionSpec | None = None) -> None:
        """Takes effect at the next block: a cut (KV re-cache with the new conditioning), or
        with a `transition` of N > 1 blocks a glide from the conditioning the next block would
        have had to the new one, ending in the same re-cache (see `streaming.blend`). A switch
        during a glide starts from where the glide has got to."""
        embedding = self.encode(prompt) if embedding is None else embedding
        if transition is None or transition.blocks <= 1:
            self.generator.switch_prompt(embedding)
            self._glide = None
        else:
            self._glide = Glide(_label(prompt), self.generator.latest_embedding, embedding, transition)
        self._pending_prompt = _label(prompt)

    @property
    def transition(self) -> tuple[int, int] | None:
        """(blocks done, blocks in all) of the transition under way, else None."""
        return None if self._glide is None else (self._glide.step, self._glide.spec.blocks)

    @property
    def input_encoder(self) -> InputEncoder:
        """The stream's encoder for live input (built when first needed)."""
        if self._input is None:
            self._input = make_input_encoder(self.cfg, self.weights, self.device)
        return self._input

    @property
    def input_frames_wanted(self) -> int:
        """How many input frames the next block takes (the frames it will show)."""
        f, step = self.cfg.latent_frames_per_block, self.cfg.vae.temporal_factor
        return 1 + step * (f - 1) if self.generator.block == 0 else step * f

    @torch.no_grad()
    def next_frames(self, input_frames: np.ndarray | torch.Tensor | None = None, strength: float = 0.7) -> FrameBlock:
        """The next block: from text alone, or (with `input_frames`, uint8 [T, H, W, 3] of any
        size, T = `input_frames_wanted`) video-to-video from those frames at `strength`
        (0: the input itself, 1: text alone; with `motion_strength` set, the input's motion
        sets it instead). A block without input after blocks with it starts the input's clip
        afresh when it comes back."""
        source, encode_ms = None, 0.0
        if input_frames is not None:
            if self.motion_strength is None:
                self.generator.schedule.from_strength(strength)      # refused here, before anything changes
            t0 = time.perf_counter()
            source = self.input_encoder.encode(input_frames, stream_start=self.generator.block == 0)
            encode_ms = 1e3 * (time.perf_counter() - t0)
            if self.motion_strength is not None:
                strength = self.motion_strength.update(input_frames)
        elif self._input is not None:
            self._input.reset()
            if self.motion_strength is not None:
                self.motion_strength.reset()
        if self._pending_prompt is not None:
            self.prompt, self._pending_prompt = self._pending_prompt, None
        step = None
        if self._glide is not None:
            self._glide, embedding, last = self._glide.advance()
            step = (self._glide.step, self._glide.spec.blocks)
            if last:
                self.generator.switch_prompt(embedding)     # the usual re-cache, under the target
                self._glide = None
            else:
                self.generator.set_conditioning(embedding)
        block = self.generator.block
        clock = _BlockClock(self.device)
        recached = self.generator.apply_switch()
        clock.mark()
        latents = self.generator.next_block(source, strength) if source is not None else self.generator.next_block()
        clock.mark()
        frames = self._to_host(to_uint8(self.decoder.decode(latents)))  # the one sync point of a block
        recache_ms, dit_ms, decode_ms = clock.finish()
        return FrameBlock(frames, block, self.prompt, dit_ms, decode_ms, step, recache_ms if recached else 0.0,
                          strength if source is not None else None, encode_ms)

    def reseed_noise(self, seed: int) -> None:
        """Fresh noise: from the next block on it comes from `seed`; the stream's state is kept."""
        self.generator.reseed_noise(seed)

    def snapshot(self, device: torch.device | str | None = None) -> PipelineSnapshot:
        """The stream at this block boundary (`device="cpu"` keeps GPU memory free)."""
        return PipelineSnapshot(self.generator.snapshot(device), self.decoder.state(), self.prompt,
                                self._pending_prompt, self._glide,
                                None if self._input is None else self._input.state())

    def restore(self, snap: PipelineSnapshot) -> None:
        """Back to a snapshot's block boundary; the snapshot stays usable for another restore."""
        self.generator.restore(snap.generator)
        self.decoder.set_state(snap.decoder)
        if self._input is not None or snap.input is not None:
            self.input_encoder.set_state(snap.input)
        self.prompt, self._pending_prompt, self._glide = snap.prompt, snap.pending_prompt, snap.glide

    # -- internals ------------------------------------------------------------
    def _to_host(self, frames: torch.Tensor) -> np.ndarray:
        """One device-to-host copy per block (through pinned memory on CUDA)."""
        if frames.device.type != "cuda":
            return frames.numpy()
        if self._pinned is None or self._pinned.shape != frames.shape:
            self._pinned = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
        self._pinned.copy_(frames)
        return self._pinned.numpy().copy()


class _BlockClock:
    """Times the parts of a block (re-cache, DiT with the re-cache, decode); CUDA events on the
    GPU, so timing adds no synchronisation of its own (the host copy at the end of a block is
    the only one)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
            self.events[0].record()
        else:
            self.times = [time.perf_counter()]
        self._marks = 0

    def mark(self) -> None:
        self._marks += 1
        if self.cuda:
            self.events[self._marks].record()
        else:
            self.times.append(time.perf_counter())

    def finish(self) -> tuple[float, float, float]:
        """(re-cache ms, DiT ms including the re-cache, decode ms)."""
        if self.cuda:
            self.events[3].record()
            self.events[3].synchronize()
            e = self.events
            return e[0].elapsed_time(e[1]), e[0].elapsed_time(e[2]), e[2].elapsed_time(e[3])
        self.times.append(time.perf_counter())
        t = self.times
        return (t[1] - t[0]) * 1e3, (t[2] - t[0]) * 1e3, (t[3] - t[2]) * 1e3


def _label(prompt: str | Blend) -> str:
    return prompt.label if isinstance(prompt, Blend) else prompt


def _maybe_fp8(dit, cfg: Config, device: torch.device):
    """FP8 linear layers when the config asks for them and the GPU has FP8 tensor cores."""
    if cfg.runtime.fp8:
        from .fp8 import convert_blocks_to_fp8
        if kernels.fp8_tensor_cores(device):
            convert_blocks_to_fp8(dit)
        else:
            log.warning("runtime.fp8 is set but %s has no FP8 tensor cores this torch can use; running without it",
                        device)
    return dit


def _tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in nested lists, tuples, dicts and dataclasses."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return sum(_tensor_bytes(getattr(obj, name)) for name in obj.__dataclass_fields__)
    return 0


# -- pieces -------------------------------------------------------------------
def make_text_encoder(cfg: Config, files: WeightFiles | None, device: torch.device) -> TextEncoder:
    from . import text as text_mod  # noqa: F401  (real encoder, when present)
    return text_mod.PromptEncoder.from_config(cfg, files, device)


def make_decoder(cfg: Config, files: WeightFiles | None, device: torch.device, dtype: torch.dtype) -> Decoder:
    from . import vae as vae_mod
    return vae_mod.make_decoder(cfg, files, device, dtype)
