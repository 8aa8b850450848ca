"""`longlive train`: the toy world's model from a seed, stage by stage, resumable.

Stages, each checkpointed in the run folder so `--resume` continues where a run stopped:

1. ``vae-short``, ``vae``: the Wan-structured VAE on crops of the world's clips
   (`vae_training`), short clips first, then long ones, then its latents normalised
   (`fold_normalisation`) -> ``vae_base.safetensors``;
2. ``latents``: `clips` clips of the world (training scenes only, half with a switch) encoded
   whole by the trained encoder -> ``latents.pt``;
3. ``dit``: the DiT and the text encoder by teacher forcing (`dit_training`) ->
   ``diffusion_pytorch_model.safetensors``, ``text_encoder.safetensors``, ``tokenizer.json``;
4. ``vae-colour``: the decoder alone, the object's pixels weighed up (`vae_training.COLOUR`;
   the encoder, so the latents the DiT learnt from, unchanged) -> ``vae.safetensors``;
5. ``manifest.json``: the command, seed, world version, sizes, losses, time per stage and the
   sha256 of every weight file.

A resumed run skips a stage whose output files are all there (the latents and the DiT together:
the latents are only the DiT's input).

Every step's figures go to ``losses.jsonl``; progress bars go to stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from streaming.config import Config, load_config
from streaming.vae_encoder import load_encoder

from . import checkpoint
from .clips import random_clip, switch_block
from .dit_training import DiTTraining, LatentClips, train_dit, use_bfloat16
from .vae_training import COLOUR, SHORT, VAETraining, fold_normalisation, latent_statistics, train_vae, _to_video
from .vocabulary import build_tokenizer
from .wan_vae import ToyVAE
from .world import WORLD_VERSION, render

log = logging.getLogger(__name__)

CLIP_BLOCKS = 6


@dataclass(frozen=True)
class ToyTraining:
    vae_short: VAETraining = SHORT       # the VAE's first phase: short clips, large batches
    vae: VAETraining = field(default_factory=VAETraining)   # then long clips
    vae_colour: VAETraining = COLOUR     # last, the decoder alone with the object weighed up
    clips: int = 300
    stats_clips: int = 12
    dit: DiTTraining = field(default_factory=DiTTraining)


# `--quick`: a few steps of every stage, to see the command work end to end (not a model)
QUICK = ToyTraining(vae_short=VAETraining(steps=2, batch=1, frames=5, crop=32, pool=1, pool_blocks=1),
                    vae=VAETraining(steps=4, batch=1, frames=5, crop=32, pool=1, pool_blocks=1, checkpoint_every=2),
                    vae_colour=VAETraining(steps=2, batch=1, frames=5, crop=32, pool=1, pool_blocks=1,
                                           object_weight=9.0, decoder_only=True),
                    clips=2, stats_clips=1,
                    dit=DiTTraining(steps=3, batch=1, checkpoint_every=2))


class Log:
    """losses.jsonl: one line per step of every stage."""

    def __init__(self, path: Path):
        self.path = path
        self.file = path.open("a")

    def __call__(self, stage: str, step: int, figures: dict) -> None:
        self.file.write(json.dumps({"stage": stage, "step": step, **{k: round(v, 6) for k, v in figures.items()}}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def _progress(stage: str, total: int, ckpt: Path, resume: bool, log_: Log):
    """A progress bar from where a resumed stage stands, and the callback a training loop
    reports each step to (the bar moves, the figures go to losses.jsonl)."""
    start = checkpoint.load(ckpt)["step"] if resume and ckpt.exists() else 0
    with tqdm(total=total, initial=start, desc=stage, unit="step", file=sys.stderr, dynamic_ncols=True) as bar:
        def report(step: int, figures: dict) -> None:
            log_(stage, step, figures)
            bar.update(1)
            bar.set_postfix(loss=f"{figures['loss']:.4f}")
        yield report


def _save(module: torch.nn.Module, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))


DIT_FILES = ("diffusion_pytorch_model.safetensors", "text_encoder.safetensors", "tokenizer.json")


def _done(out: Path, names: tuple[str, ...], resume: bool) -> bool:
    return resume and all((out / n).exists() for n in names)


def stage_vae(cfg: Config, plan: ToyTraining, out: Path, seed: int, resume: bool, log_: Log) -> Path:
    final = out / "vae_base.safetensors"
    if resume and final.exists():
        return final
    short = out / "vae_short.ckpt"
    with _progress("vae-short", plan.vae_short.steps, short, resume, log_) as report:
        first = train_vae(cfg.vae, plan.vae_short, seed, short, resume, report)
    ckpt = out / "vae.ckpt"
    with _progress("vae", plan.vae.steps, ckpt, resume, log_) as report:
        vae = train_vae(cfg.vae, plan.vae, seed, ckpt, resume, report, init=first.state_dict())
    rng = np.random.default_rng(seed + 1)
    clips = [_to_video(render(random_clip(rng, 3))) for _ in range(plan.stats_clips)]
    mean, std = latent_statistics(vae, clips)
    fold_normalisation(vae, mean, std)
    _save(vae, final)
    return final


def stage_latents(cfg: Config, plan: ToyTraining, out: Path, vae_path: Path, seed: int, resume: bool) -> LatentClips:
    path = out / "latents.pt"
    state = checkpoint.load(path) if resume and path.exists() else {"step": 0, "latents": [], "clips": [], "switch": []}
    enc = load_encoder(cfg.vae, vae_path)
    rng = np.random.default_rng([seed, 2])
    draws = [random_clip(rng, CLIP_BLOCKS) for _ in range(plan.clips)]   # the same clips on a resumed run
    with tqdm(total=plan.clips, initial=state["step"], desc="latents", unit="clip", file=sys.stderr,
              dynamic_ncols=True) as bar, torch.no_grad():
        for i in range(state["step"], plan.clips):
            clip = draws[i]
            video = torch.from_numpy(render(clip)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
            state["latents"].append(enc(video[None])[0].half())
            state["clips"].append(clip)
            state["switch"].append(switch_block(clip))
            state["step"] = i + 1
            bar.update(1)
            if state["step"] % 20 == 0 or state["step"] == plan.clips:
                checkpoint.save(path, state)
    return LatentClips(torch.stack(state["latents"]), state["clips"], state["switch"])


def stage_dit(cfg: Config, plan: ToyTraining, out: Path, data: LatentClips, seed: int, resume: bool, log_: Log) -> None:
    tokenizer = build_tokenizer()
    if tokenizer.get_vocab_size() > cfg.text.vocab_size:
        raise checkpoint.CheckpointError(f"the world's tokenizer has {tokenizer.get_vocab_size()} tokens, more than "
                                         f"{cfg.source}'s text.vocab_size ({cfg.text.vocab_size})")
    ckpt = out / "dit.ckpt"
    with _progress("dit", plan.dit.steps, ckpt, resume, log_) as report:
        dit, text = train_dit(cfg, plan.dit, data, tokenizer, seed, ckpt, resume, report)
    _save(dit, out / "diffusion_pytorch_model.safetensors")
    _save(text, out / "text_encoder.safetensors")
    tokenizer.save(str(out / "tokenizer.json"))


def stage_vae_colour(cfg: Config, plan: ToyTraining, out: Path, base: Path, seed: int, resume: bool, log_: Log) -> None:
    """The decoder of the normalised VAE `base` trained on alone -> vae.safetensors."""
    ckpt = out / "vae_colour.ckpt"
    with _progress("vae-colour", plan.vae_colour.steps, ckpt, resume, log_) as report:
        vae = train_vae(cfg.vae, plan.vae_colour, seed + 3, ckpt, resume, report, init=load_file(str(base)))
    _save(vae, out / "vae.safetensors")


def _loss_summary(path: Path) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = {}
    for stage in ("vae-short", "vae", "dit", "vae-colour"):
        losses = [r["loss"] for r in rows if r["stage"] == stage]
        if losses:
            k = max(1, min(50, len(losses) // 10))
            out[stage] = {"steps": len(losses), "first": float(np.mean(losses[:k])), "last": float(np.mean(losses[-k:]))}
    return out


def train(out: Path, seed: int, resume: bool, quick: bool, config: str = "toy", argv: list[str] | None = None) -> dict:
    """Every stage in order; returns the manifest (also written to out/manifest.json)."""
    cfg = load_config(config)
    plan = QUICK if quick else ToyTraining()
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    log_ = Log(out / "losses.jsonl")
    times: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        vae_path = stage_vae(cfg, plan, out, seed, resume, log_)
        times["vae_s"] = time.perf_counter() - t0
        if not _done(out, DIT_FILES, resume):
            t0 = time.perf_counter()
            data = stage_latents(cfg, plan, out, vae_path, seed, resume)
            times["latents_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            stage_dit(cfg, plan, out, data, seed, resume, log_)
            times["dit_s"] = time.perf_counter() - t0
        if not _done(out, ("vae.safetensors",), resume):
            t0 = time.perf_counter()
            stage_vae_colour(cfg, plan, out, vae_path, seed, resume, log_)
            times["vae_colour_s"] = time.perf_counter() - t0
    finally:
        log_.close()
    files = ["vae.safetensors", "diffusion_pytorch_model.safetensors", "text_encoder.safetensors", "tokenizer.json"]
    manifest = {
        "what": "the toy world's LongLive-architecture model, trained by `longlive train`",
        "command": " ".join(["longlive", "train", *(argv or [])]),
        "config": config, "seed": seed, "world_version": WORLD_VERSION, "quick": quick,
        "plan": dataclasses.asdict(plan),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": threads,
                    "dit_bfloat16": use_bfloat16(plan.dit),
                    "cpu": platform.processor() or platform.machine()},
        "seconds_this_run": {k: round(v, 1) for k, v in times.items()},
        "losses": _loss_summary(out / "losses.jsonl"),
        "files": {name: {"sha256": _sha256(out / name), "bytes": (out / name).stat().st_size} for name in files},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def run(args) -> int:
    """`longlive train`: every stage into `--out`, resumable; prints where the weights are."""
    out = args.out
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise checkpoint.CheckpointError(f"{out} already holds a run; --resume to continue it, or choose another --out")
    argv = ["--out", str(out), "--seed", str(args.seed)] + (["--quick"] if args.quick else [])
    manifest = train(out, args.seed, args.resume, args.quick, argv=argv)
    times = manifest["seconds_this_run"]
    print(f"trained in {sum(times.values()):.0f} s ({', '.join(f'{k[:-2]} {v:.0f} s' for k, v in times.items())}); "
          f"weights and manifest.json in {out}")
    return 0
