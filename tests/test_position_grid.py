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
    with torch.no_grad():
        dit.position_embedding.zero_()
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


def test_at_another_frame_size_the_table_is_resized_as_a_picture():
    """A stream of another size still runs: the table is resized to its patch grid; a table
    that is one vector everywhere stays that vector everywhere, and a left-to-right ramp stays
    a left-to-right ramp."""
    cfg, rows, cols = _cfg(lambda r, c: (r + 1, c + 2))
    dit = build_dit(cfg)
    with torch.no_grad():
        dit.position_embedding.copy_(torch.arange(cfg.model.dim, dtype=torch.float32).expand(len(dit.position_embedding), -1))
    assert torch.allclose(dit.positions(rows, cols), dit.position_embedding[:1].expand(rows * cols, -1))
    ramp = torch.arange(cols + 2, dtype=torch.float32).repeat(rows + 1)[:, None].expand(-1, cfg.model.dim)
    with torch.no_grad():
        dit.position_embedding.copy_(ramp)
    table = dit.positions(rows, cols).view(rows, cols, -1)[..., 0]
    assert (table[:, 1:] > table[:, :-1]).all() and torch.allclose(table, table[:1].expand(rows, -1))
    f = cfg.latent_frames_per_block
    latents = torch.randn(1, f, cfg.model.in_dim, cfg.latent_height, cfg.latent_width)
    assert _first_block_input(dit, cfg, latents).shape[1] == f * rows * cols


def test_a_grid_without_places_is_one_clear_sentence():
    with pytest.raises(ConfigError, match=r"model.position_grid must be \[rows, columns\] of the patch grid, not \[0, 3\]") as err:
        _cfg(lambda r, c: (0, 3))
    assert "\n" not in str(err.value)
