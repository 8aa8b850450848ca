"""Golden fixture sets: discovery and translation of a set's config.json into our Config.

A fixture root is `$LONGLIVE_FIXTURES` when set, else `../shared/fixtures` beside the
repository (or `shared/fixtures` inside it). Every subfolder holding a config.json and a
cases.safetensors is one LongLive set; every size is read from its config.json. Every
subfolder holding taehv.json, taehv_decoder.safetensors and taehv_cases.safetensors is one
TAEHV set (golden outputs of madebyollin/taehv's own code); its sizes come from taehv.json.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from streaming.config import Config, config_from_mapping

REPO = Path(__file__).resolve().parent.parent
ATOL = RTOL = 1e-4


def fixture_root() -> Path | None:
    env = os.environ.get("LONGLIVE_FIXTURES")
    if env:
        return Path(env)
    for candidate in (REPO.parent / "shared" / "fixtures", REPO / "shared" / "fixtures"):
        if candidate.is_dir():
            return candidate
    return None


def fixture_sets() -> list[Path]:
    root = fixture_root()
    if root is None or not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "config.json").is_file() and (p / "cases.safetensors").is_file())


TAEHV_FILES = ("taehv.json", "taehv_decoder.safetensors", "taehv_cases.safetensors")


def taehv_sets() -> list[Path]:
    """The TAEHV sets under the fixture root (found like `fixture_sets`, by their files)."""
    root = fixture_root()
    if root is None or not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if all((p / f).is_file() for f in TAEHV_FILES))


class TaehvSet:
    """One TAEHV golden set: `meta` is its taehv.json, `tensors` its cases."""

    def __init__(self, path: Path):
        self.path = path
        self.name = path.name
        self.meta: dict = json.loads((path / "taehv.json").read_text())
        self.decoder_file = path / "taehv_decoder.safetensors"

    @functools.cached_property
    def tensors(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / "taehv_cases.safetensors"))


class FixtureSet:
    def __init__(self, path: Path):
        self.path = path
        self.name = path.name
        self.meta = json.loads((path / "config.json").read_text())
        self.cases = json.loads((path / "cases.json").read_text())["cases"] if (path / "cases.json").is_file() else {}

    @functools.cached_property
    def tensors(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / "cases.safetensors"))

    def file(self, name: str) -> Path:
        return self.path / name

    def config(self, global_sink: bool | None = None) -> Config:
        """Our Config with every size taken from the set's config.json."""
        g = self.meta["generator"]["constructor_args"]
        pipe = self.meta["pipeline"]
        vae = self.meta["vae"]["cfg"]
        t5 = self.meta["t5"]["overrides"]
        latent = self.meta["latent"]
        spatial = 2 ** (len(vae["dim_mult"]) - 1)
        model_keys = ("dim", "ffn_dim", "freq_dim", "text_dim", "text_len", "num_heads", "num_layers",
                      "in_dim", "out_dim", "patch_size", "eps")
        lora = self.meta.get("lora", {}).get("adapter", {})
        window = g["local_attn_size"]
        if window == -1:  # the official "global attention": a cache as long as the whole stream
            window = self.meta["stream"]["num_output_frames"]
        return config_from_mapping({
            "name": f"fixture-{self.name}",
            "model": {k: g[k] for k in model_keys},
            "window": {"local_attn_size": window, "sink_size": g["sink_size"],
                       "global_sink": pipe["global_sink"] if global_sink is None else global_sink},
            "schedule": {"denoising_steps": pipe["denoising_step_list"], "shift": pipe["timestep_shift"],
                         "warp": pipe["warp_denoising_step"], "context_noise": pipe["context_noise"]},
            "video": {"height": latent["height"] * spatial, "width": latent["width"] * spatial, "fps": 16,
                      "latent_frames_per_block": pipe["num_frame_per_block"]},
            "lora": {"alpha": lora.get("alpha", 1)},
            "vae": {"dim": vae["dim"], "z_dim": vae["z_dim"], "dim_mult": vae["dim_mult"],
                    "num_res_blocks": vae["num_res_blocks"], "temporal_downsample": vae["temperal_downsample"]},
            "text": {"kind": "umt5", "vocab_size": t5["vocab_size"], "dim": t5["dim"], "dim_attn": t5["dim_attn"],
                     "dim_ffn": t5["dim_ffn"], "num_heads": t5["num_heads"], "num_layers": t5["encoder_layers"],
                     "num_buckets": t5["num_buckets"], "shared_pos": t5["shared_pos"]},
            "runtime": {"dtype": "float32", "device": "cpu"},
        }, source=str(self.path / "config.json"))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual.float(), expected.float(), atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}")
