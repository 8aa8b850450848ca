"""`model.position_grid` (not in Wan; the toy preset): a learned embedding per patch place,
added to every frame's patch embeddings, so a model can know where in the frame a token is."""

from __future__ import annotations

import pytest
import torch

from streaming import StreamingGenerator, build_dit, load_config
from streaming.config import ConfigError


def _cfg(grid):
    cfg = load_config("tiny")
    rows, cols = cfg.latent_height // cfg.model.patch_size[1], cfg.latent_width // cfg.model.patch_size[2]
    return cfg.replace(model={"position_grid": grid(rows, cols)}), rows, cols


def _first_block_input(dit, cfg, latents):
    """What the first transformer block receives (the patch embeddings plus the table)."""
    seen = []
    hook = dit.blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    gen = StreamingGenerator(dit, cfg)
    gen.reset(torch.zeros(1, cfg.model.text_len, cfg.model.text_dim))
    dit(latents, torch.full((1, latents.shape[1]), 1000.0), gen.prompt, gen.window, 0)
    hook.remove()
    return seen[0]


def test_the_table_adds_each_place_to_that_place_in_every_frame():
    cfg, rows, cols = _cfg(lambda r, c: (r, c))
    dit = build_dit(cfg)
    f = cfg.latent_frames_per_block
    latents = torch.randn(1, f, cfg.model.in_dim, cfg.latent_height, cfg.latent_width)
    plain = _first_block_input(dit, cfg, latents)
    r, c, d = rows - 1, 1, cfg.model.dim
    with torch.no_grad():
        dit.position_embedding[r * cols + c] = torch.arange(d, dtype=torch.float32)
    moved = _first_block_input(dit, cfg, latents)
    diff = (moved - plain).view(f, rows, cols, d)
    for frame in range(f):
        assert torch.allclose(diff[frame, r, c], torch.arange(d, dtype=torch.float32), atol=1e-5)
    diff[:, r, c] = 0
    assert diff.abs().max() == 0


def test_a_model_without_the_table_has_no_such_weight():
    assert not hasattr(build_dit(load_config("tiny")), "position_embedding")


def test_a_table_of_the_wrong_size_is_one_clear_sentence():
    with pytest.raises(ConfigError, match=r"model.position_grid \[2, 3\] must be the stream's patch grid") as err:
        _cfg(lambda r, c: (2, 3))
    assert "\n" not in str(err.value)
