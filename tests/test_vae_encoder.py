"""The Wan VAE encoder against the official `WanVAE_.encode` (golden `vae_encode.*` of every
fixture set that has them), whole clips and streamed in chunks, and its clear refusals."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file

from golden import assert_close, fixture_sets, FixtureSet
from streaming.config import ConfigError, VAEConfig, load_config
from streaming.vae_encoder import WanVAEEncoder, load_encoder
from streaming.weights import WeightsError

ENCODE_FILE = "vae_encode.safetensors"


def _encode_sets() -> list[FixtureSet]:
    return [FixtureSet(p) for p in fixture_sets() if (p / ENCODE_FILE).is_file()]


def _cases(s: FixtureSet) -> dict[str, torch.Tensor]:
    return load_file(str(s.file(ENCODE_FILE)))


def _names(tensors: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k.split(".")[1] for k in tensors if k.endswith(".video"))


@pytest.fixture(scope="module", params=_encode_sets() or [None], ids=lambda s: s.name if s else "none")
def golden_encoder(request):
    s = request.param
    if s is None:
        pytest.fail("no fixture set has vae_encode.safetensors (the official encoder's golden outputs)")
    cfg = s.config().vae
    return load_encoder(cfg, s.file("vae.safetensors")), _cases(s), cfg


def test_whole_clip_matches_official(golden_encoder):
    enc, t, cfg = golden_encoder
    assert _names(t), "the set's vae_encode file holds no cases"
    assert torch.equal(enc.mean.flatten(), t["vae_encode.mean"]) and torch.equal(enc.std.flatten(), t["vae_encode.std"])
    for name in _names(t):
        with torch.no_grad():
            out = enc(t[f"vae_encode.{name}.video"])
        assert_close(out, t[f"vae_encode.{name}.latents"], f"vae_encode.{name}.latents")


def test_streamed_chunks_match_official(golden_encoder):
    """A first chunk of 1 + 4j frames, then chunks of 4k frames, carrying the causal cache:
    the whole clip's latents (the official encoder's own chunking is 1, 4, 4, ...)."""
    enc, t, cfg = golden_encoder
    step = cfg.temporal_factor
    for name in _names(t):
        video = t[f"vae_encode.{name}.video"]
        frames = video.shape[1]
        for first, size in ((1, step), (1 + 2 * step, 3 * step)):
            state, parts, at = enc.new_state(), [], 0
            for n in [first] + [size] * frames:
                n = min(n, frames - at)
                if n <= 0:
                    break
                with torch.no_grad():
                    parts.append(enc(video[:, at:at + n], state))
                at += n
            assert_close(torch.cat(parts, 1), t[f"vae_encode.{name}.latents"], f"streamed {name} ({first}, {size}...)")


def _small() -> WanVAEEncoder:
    torch.manual_seed(0)
    return WanVAEEncoder(VAEConfig(dim=4, dim_mult=(1, 1, 2, 4), num_res_blocks=0, encoder_res_blocks=1)).eval()


@pytest.mark.parametrize("frames, state_used, words", [(4, False, "1 + 4k"), (5, True, "a multiple of 4")])
def test_chunk_of_the_wrong_length_is_refused(frames, state_used, words):
    enc = _small()
    state = enc.new_state()
    if state_used:
        enc(torch.zeros(1, 1, 3, 16, 16), state)
    with pytest.raises(ValueError, match=re.escape(words)):
        enc(torch.zeros(1, frames, 3, 16, 16), state)


def test_frames_not_a_multiple_of_the_spatial_factor_are_refused():
    with pytest.raises(ValueError, match="multiples of 8"):
        _small()(torch.zeros(1, 1, 3, 20, 16))


def test_encoder_without_blocks_cannot_change_width():
    with pytest.raises(ValueError, match="encoder_res_blocks"):
        WanVAEEncoder(VAEConfig(dim=4, dim_mult=(1, 1, 2, 4), num_res_blocks=0))


def test_gradients_reach_every_parameter():
    """The toy world's VAE is trained through this module: a loss on the latents reaches
    every weight."""
    enc = _small()
    enc(torch.rand(1, 5, 3, 16, 16) * 2 - 1).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


def test_checkpoint_for_another_size_is_one_clear_error(fixture_set):
    cfg = VAEConfig(dim=4, dim_mult=(1, 1, 2, 4), num_res_blocks=0, encoder_res_blocks=1)
    with pytest.raises(WeightsError, match="does not fit this config"):
        load_encoder(cfg, fixture_set.file("vae.safetensors"))


def test_negative_encoder_blocks_is_a_config_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("vae:\n  encoder_res_blocks: -1\n")
    with pytest.raises(ConfigError, match="encoder_res_blocks"):
        load_config(p)
