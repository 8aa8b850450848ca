"""The first block's noise rolled so its mark sits where the object starts (training/noise_mark.py)."""

import torch

from training.noise_mark import mark, roll_to


def test_mark_is_the_token_whose_values_sum_highest():
    noise = torch.zeros(3, 8, 24, 40)
    noise[1, 2, 9, 30] = 5.0                    # latent cell (9, 30): token (2, 7) with 4x4 patches
    noise[0, 0, 20, 3] = 4.0
    assert mark(noise, 4) == (2, 7)
    assert mark(noise, 8) == (1, 3)


def test_rolled_noise_is_the_same_draw_with_its_mark_at_the_corner():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        noise = torch.randn(3, 8, 24, 40, generator=g)
        rolled = roll_to(noise, 4, (12, 20))
        assert mark(rolled, 4) == (3, 5)
        # a permutation of whole tokens: the same values, each token's content kept
        assert torch.equal(rolled.flatten().sort().values, noise.flatten().sort().values)
        ty, tx = mark(noise, 4)
        torch.testing.assert_close(rolled[:, :, 12:16, 20:24], noise[:, :, ty * 4:ty * 4 + 4, tx * 4:tx * 4 + 4])


def test_training_rolls_only_the_pure_noise_of_the_first_step_level():
    from streaming.config import load_config
    from training.dit_training import _marked
    from training.world import Clip, Scene

    cfg = load_config("toy")                              # 4x4 patches on 24x40 latents
    clips = [Clip.of(Scene(), 13, 1), Clip.of(Scene(), 13, 2)]
    noise = torch.randn(2, 3, 8, 24, 40, generator=torch.Generator().manual_seed(3))
    out = _marked(noise, torch.tensor([0, 1]), clips, cfg)
    assert mark(out[0], 4) == (3, 5)                      # the world's start, the centre: latent (12, 20)
    assert torch.equal(out[1], noise[1])                  # another level: untouched
