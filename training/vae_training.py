"""Training the toy world's VAE: the Wan structure at toy width, on crops of the world's clips.

The VAE is fully convolutional, so it learns on small crops (much cheaper than whole frames)
and runs on whole frames afterwards. Each step takes `batch` crops of `frames` frames (1 + 4k,
a whole-clip encode) from a pool of rendered clips that is renewed a clip at a time; most crops
are centred near the object (where the detail the model must keep is), the rest anywhere.

Two phases (`toy_run`): short clips in large batches first, where the picture is learnt
quickly (`SHORT`), then long clips in small ones (the defaults), where the decoder learns what
a stream decoded for minutes needs. A third (`COLOUR`, after the latents are normalised) trains
the decoder alone, the encoder frozen, with the object's pixels weighed up (`object_weight`):
after the first two the latents told red, orange and yellow apart but the decoder drew a red
ball grey-green and an orange one yellow (the object is a small part of any crop's loss). The
encoder, and so every latent the DiT learns from, is unchanged by it.

Loss: mean squared error plus mean absolute error (each pixel weighed 1, plus `object_weight`
times the share of it the object covers) on the pixels decoded from the mean latent plus a
little noise (`latent_noise` of each channel's spread: the decoder then tolerates
latents that are not exactly the encoder's, which is what a DiT gives it).

`fold_normalisation` then rescales the encoder's output conv and the decoder's input conv so
that the encoder's normalised latents, ``(mu - mean) / std`` with the official Wan constants,
have zero mean and unit spread per channel over the world's frames: what the DiT's noise
schedule assumes. The decoder's function of the normalised latent is unchanged by it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from streaming.config import VAEConfig

from . import checkpoint
from .clips import random_clip
from .wan_vae import ToyVAE
from .world import HEIGHT, WIDTH, Clip, positions, render_with_coverage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VAETraining:
    steps: int = 2000
    batch: int = 2
    # 1 + 4k: a whole-clip encode of 1 + k latents. Longer than the decoder's reach back in time
    # (its causal convs see some 15 latents back), so most latents are decoded as in a long
    # stream, with no zeros before the stream in view: trained on 2 latents, the decoder broke
    # down from a stream's third latent on; on 9, from about the twelfth
    frames: int = 81
    crop: int = 32                # pixels, a multiple of the spatial factor
    lr: float = 7e-4               # 2e-3 diverged on 81-frame clips (the loss rose from step 50 to 250)
    # the decoder learns from latents with Gaussian noise of this share of each channel's own
    # spread added (so it tolerates latents that are not exactly the encoder's, as a DiT's are;
    # relative, so the encoder cannot outgrow it). Tried before: a learnt variance with a small
    # KL weight (most channels stayed drowned in their own noise) and a fixed noise with a
    # penalty on the latents' size (the penalty won and the latents collapsed to two colours)
    latent_noise: float = 0.1
    pool: int = 16                # clips rendered and kept for cropping
    pool_blocks: int = 8          # each clip's length, in blocks of the stream (93 frames)
    renew_every: int = 4          # steps between renewing one clip of the pool
    object_share: float = 0.75    # crops centred near the object
    checkpoint_every: int = 200
    warmup: int = 100             # steps of linear learning-rate warm-up
    object_weight: float = 0.0    # an object pixel's extra weight in the loss (0: a plain mean)
    decoder_only: bool = False    # the encoder frozen: its latents stay what they were


# the first phase: 2-latent clips, 8 a step, at a higher learning rate (on single frames the
# picture's error fell 4x in 1200 steps; on 81-frame clips a step costs 16x more)
SHORT = VAETraining(steps=1500, batch=8, frames=5, lr=2e-3, pool_blocks=2, warmup=50)
# the third: the decoder alone, object pixels weighed 10x. Measured from the committed VAE
# (frames 41, weight 9, lr 3e-4, 1200 steps): a red ball's middle decoded (88, 134, 77) ->
# (208, 101, 64) (drawn (215, 35, 35)); the evaluator's colour on reconstructions 56 -> 60 of 80
COLOUR = VAETraining(steps=3600, batch=2, frames=41, lr=3e-4, warmup=50, object_weight=9.0, decoder_only=True)


def _to_video(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [3, T, H, W] in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)


class CropPool:
    """Rendered clips and the object's track in each; crops drawn from them. `specs` (the
    clips themselves) is what a checkpoint keeps: rendering is a function of the clip."""

    def __init__(self, spec: VAETraining, rng: np.random.Generator, specs: list[Clip] | None = None):
        self.spec, self.rng = spec, rng
        self.specs = specs if specs is not None else [random_clip(rng, spec.pool_blocks, 0.5) for _ in range(spec.pool)]
        self.clips = [self._render(c) for c in self.specs]

    @staticmethod
    def _render(clip: Clip) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return *render_with_coverage(clip), positions(clip)

    def renew(self) -> None:
        i = int(self.rng.integers(len(self.clips)))
        self.specs[i] = random_clip(self.rng, self.spec.pool_blocks, 0.5)
        self.clips[i] = self._render(self.specs[i])

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Crops [B, 3, T, crop, crop] in [-1, 1] and each pixel's loss weight [B, 1, T, crop, crop]."""
        s, rng = self.spec, self.rng
        out, weights = [], []
        for _ in range(s.batch):
            video, covered, track = self.clips[int(rng.integers(len(self.clips)))]
            t0 = int(rng.integers(video.shape[0] - s.frames + 1))
            if rng.random() < s.object_share:
                cx, cy = track[t0 + s.frames // 2] + rng.normal(0, s.crop / 6, 2)
                x0, y0 = int(cx - s.crop / 2), int(cy - s.crop / 2)
            else:
                x0, y0 = int(rng.integers(WIDTH)), int(rng.integers(HEIGHT))
            ys = (np.arange(s.crop) + y0) % HEIGHT        # the world wraps round its edges
            xs = (np.arange(s.crop) + x0) % WIDTH
            out.append(_to_video(video[t0:t0 + s.frames][:, ys][:, :, xs]))
            share = torch.from_numpy(covered[t0:t0 + s.frames][:, ys][:, :, xs]).float().div_(255.0)
            weights.append(1.0 + s.object_weight * share[None])
        return torch.stack(out), torch.stack(weights)


def vae_loss(vae: ToyVAE, video: torch.Tensor, weight: torch.Tensor, latent_noise: float,
             encoder_grad: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """`video` [B, 3, T, H, W], `weight` [B, 1, T, H, W] each pixel's weight (means weighted by it)."""
    with torch.set_grad_enabled(encoder_grad and torch.is_grad_enabled()):
        mu, _ = vae.moments(video)
    spread = mu.detach().transpose(0, 1).flatten(1).std(1).view(1, -1, 1, 1, 1)   # per channel
    recon = vae.decode(mu + latent_noise * spread * torch.randn_like(mu))
    err = recon - video
    total = weight.expand_as(err).sum()
    mse = (err.square() * weight).sum() / total
    l1 = (err.abs() * weight).sum() / total
    loss = mse + l1
    return loss, {k: float(v.detach()) for k, v in (("loss", loss), ("mse", mse), ("l1", l1))}


def train_vae(cfg: VAEConfig, spec: VAETraining, seed: int, ckpt_path: Path, resume: bool,
              report: Callable[[int, dict[str, float]], None] | None = None, until: int | None = None,
              init: dict | None = None) -> ToyVAE:
    """Train (or go on training) the VAE; checkpoints to `ckpt_path` every `checkpoint_every`
    steps and at the end (`until`: stop after that step, as an interrupted run would; `init`: a
    state dict to start from, an earlier phase's). Returns the trained VAE, normalisation not
    yet folded."""
    torch.manual_seed(seed)
    vae = ToyVAE(cfg)
    if init is not None:
        vae.load_state_dict(init)
    trained = [*vae.decoder.parameters(), *vae.conv2.parameters()] if spec.decoder_only else list(vae.parameters())
    if spec.decoder_only:
        for p in [*vae.encoder.parameters(), *vae.conv1.parameters()]:
            p.requires_grad_(False)
    opt = torch.optim.AdamW(trained, lr=spec.lr, betas=(0.9, 0.99), weight_decay=0.0)
    rng = np.random.default_rng(seed)
    step, specs = 0, None
    if resume and ckpt_path.exists():
        state = checkpoint.load(ckpt_path)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, specs = state["step"], state["pool"]
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        log.info("VAE: resuming at step %d of %d", step, spec.steps)
    pool = CropPool(spec, rng, specs)
    sched = lambda s: spec.lr * min(1.0, (s + 1) / spec.warmup) * (0.55 + 0.45 * math.cos(math.pi * s / spec.steps))  # noqa: E731

    def save() -> None:
        checkpoint.save(ckpt_path, {"model": vae.state_dict(), "optimizer": opt.state_dict(), "step": step,
                                    "pool": list(pool.specs), "rng": rng.bit_generator.state,
                                    "torch_rng": torch.get_rng_state()})

    while step < min(spec.steps, until or spec.steps):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = sched(step)
        loss, figures = vae_loss(vae, *pool.batch(), spec.latent_noise, encoder_grad=not spec.decoder_only)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        step += 1
        if step % spec.renew_every == 0:
            pool.renew()
        figures["ms"] = 1e3 * (time.perf_counter() - t0)
        if report is not None:
            report(step, figures)
        if step % spec.checkpoint_every == 0 or step in (spec.steps, until):
            save()
    return vae


@torch.no_grad()
def latent_statistics(vae: ToyVAE, clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and spread of the raw mean latents over whole clips [3, T, H, W]."""
    mus = [vae.moments(c[None])[0] for c in clips]
    flat = torch.cat([m.transpose(0, 1).flatten(1) for m in mus], 1)     # [z, N]
    return flat.mean(1), flat.std(1).clamp_min(1e-3)


@torch.no_grad()
def fold_normalisation(vae: ToyVAE, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Rescale `conv1` (mu rows) and `conv2` so that normalised latents are standard per
    channel; `mean`/`std` are the raw statistics of `latent_statistics`."""
    enc = vae.encoder_module
    wan_mean, wan_std = enc.mean.flatten(), enc.std.flatten()
    z = mean.numel()
    a = wan_std / std                        # raw' = a * raw + c: (raw' - wan_mean) / wan_std = (raw - mean) / std
    c = wan_mean - a * mean
    w, b = vae.conv1.weight, vae.conv1.bias   # [2z, 2z, 1, 1, 1]: mu rows first
    w[:z] *= a.view(z, 1, 1, 1, 1)
    b[:z] = a * b[:z] + c
    b[z:] += 2.0 * torch.log(a)              # log-variance follows the scale
    w2, b2 = vae.conv2.weight, vae.conv2.bias  # conv2(raw) must equal conv2_old((raw' - c) / a)
    b2 -= (w2[..., 0, 0, 0] * (c / a).view(1, z)).sum(1)
    w2 /= a.view(1, z, 1, 1, 1)
