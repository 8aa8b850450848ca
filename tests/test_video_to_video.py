"""Video-to-video per block (the generator's side of live input): the schedule a strength gives,
and a block started from an input's latents mixed with noise."""

from __future__ import annotations

import pytest
import torch

from streaming import StreamingGenerator, build_dit, load_config
from streaming.config import ScheduleConfig
from streaming.schedule import Schedule


def _steps(shift: float, strength: float) -> list[tuple[float, float]]:
    sched = Schedule.from_config(ScheduleConfig(denoising_steps=(1000, 750, 500, 250), shift=shift, warp=True))
    return [(round(t, 3), round(s, 4)) for t, s in sched.from_strength(strength)]


def test_a_strength_starts_the_schedule_at_its_own_level_and_only_goes_down():
    # the toy world's schedule (shift 1): its steps at sigma 1, 0.75, 0.5, 0.25
    assert _steps(1.0, 0.7) == [(700.0, 0.7), (500.0, 0.5), (250.0, 0.25)]
    assert _steps(1.0, 0.5) == [(500.0, 0.5), (250.0, 0.25)]
    assert _steps(1.0, 0.1) == [(100.0, 0.1)]
    # LongLive's (shift 5): its steps at sigma 1, 0.9375, 0.8333, 0.625
    assert _steps(5.0, 0.7) == [(700.0, 0.7), (625.0, 0.625)]
    assert _steps(5.0, 0.9) == [(900.0, 0.9), (833.333, 0.8333), (625.0, 0.625)]
    assert _steps(5.0, 1.0) == [(1000.0, 1.0), (937.5, 0.9375), (833.333, 0.8333), (625.0, 0.625)]
    assert _steps(5.0, 0.0) == []


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan")])
def test_a_strength_outside_zero_to_one_is_refused(strength):
    sched = Schedule.from_config(ScheduleConfig())
    with pytest.raises(ValueError, match="strength must be between 0 and 1"):
        sched.from_strength(strength)


def _gen() -> tuple[StreamingGenerator, torch.Tensor]:
    cfg = load_config("tiny").replace(video={"height": 64, "width": 64})
    torch.manual_seed(0)
    gen = StreamingGenerator(build_dit(cfg), cfg)
    emb = torch.randn(1, cfg.model.text_len, cfg.model.text_dim, generator=torch.Generator().manual_seed(1))
    return gen, emb


def _source(gen: StreamingGenerator, seed: int) -> torch.Tensor:
    return torch.randn(gen.block_shape, generator=torch.Generator().manual_seed(seed))


def test_strength_one_is_text_alone_and_zero_is_the_input_itself():
    gen, emb = _gen()
    gen.reset(emb, seed=5)
    text = [gen.next_block() for _ in range(2)]
    gen.reset(emb, seed=5)
    driven = [gen.next_block(_source(gen, b), strength=1.0) for b in range(2)]
    for a, b in zip(text, driven):
        assert torch.equal(a, b)
    gen.reset(emb, seed=5)
    for b in range(2):
        assert torch.equal(gen.next_block(_source(gen, b), strength=0.0), _source(gen, b))


def test_the_lower_the_strength_the_closer_the_block_to_its_input():
    """From the same noise (random weights, whose flows are large): at strength 0.05 the block
    is within a tenth of text alone's distance from the input; at 0.5 further; text alone
    furthest."""
    gen, emb = _gen()
    distances = []
    for s in (0.05, 0.5, 1.0):
        gen.reset(emb, seed=5)
        gen.next_block(_source(gen, 0), strength=s)
        out = gen.next_block(_source(gen, 1), strength=s)
        distances.append(float((out - _source(gen, 1)).pow(2).mean().sqrt()))
    assert distances[0] < 0.1 * distances[2] and distances[0] < distances[1] < distances[2], distances


def test_text_and_input_blocks_follow_each_other_in_one_stream():
    """Input lost, input back: a stream changes between text-only and input-driven blocks at
    block boundaries; the text blocks after an input block see it in their window."""
    gen, emb = _gen()
    gen.reset(emb, seed=5)
    mixed = [gen.next_block(), gen.next_block(_source(gen, 1), 0.3), gen.next_block(), gen.next_block(_source(gen, 3), 0.3)]
    gen.reset(emb, seed=5)
    text = [gen.next_block() for _ in range(4)]
    assert torch.equal(mixed[0], text[0])
    assert not torch.allclose(mixed[2], text[2])       # the input block is in the window
    assert gen.block == 4


def test_an_input_of_the_wrong_shape_is_refused_and_changes_nothing():
    gen, emb = _gen()
    gen.reset(emb, seed=5)
    gen.next_block()
    gen.switch_prompt(emb * 2)
    with pytest.raises(ValueError, match="an input block's latents must be"):
        gen.next_block(torch.zeros(1, 2, 3, 4, 5), 0.5)
    with pytest.raises(ValueError, match="strength must be between 0 and 1"):
        gen.next_block(_source(gen, 1), 2.0)
    assert gen.block == 1 and gen.switch_pending      # the switch waits for the next block
