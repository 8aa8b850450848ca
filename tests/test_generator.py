"""Block loop behaviour beyond the golden cases: reproducibility, snapshot/restore, switches."""

from __future__ import annotations

import re

import pytest
import torch

from streaming import StreamingGenerator, build_dit, load_config
from streaming.config import Config
from streaming.weights import parameter_count


def small_config(**window) -> Config:
    cfg = load_config("tiny")
    return cfg.replace(video={"height": 64, "width": 64}, window=window or {})


def _embedding(cfg: Config, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, cfg.model.text_len, cfg.model.text_dim, generator=g)


def _gen(cfg: Config) -> StreamingGenerator:
    return StreamingGenerator(build_dit(cfg), cfg)


def _run(gen: StreamingGenerator, blocks: int, switches: dict[int, torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for b in range(blocks):
        if b in switches:
            gen.switch_prompt(switches[b])
        out.append(gen.next_block())
    return out


def test_same_seed_prompts_and_switches_give_same_latents():
    cfg = small_config()
    a, b = _gen(cfg), _gen(cfg)
    pa, pb = _embedding(cfg, 1), _embedding(cfg, 2)
    a.reset(pa, seed=5)
    b.reset(pa, seed=5)
    ra, rb = _run(a, 7, {3: pb}), _run(b, 7, {3: pb})
    assert all(torch.equal(x, y) for x, y in zip(ra, rb))
    c = _gen(cfg)
    c.reset(pa, seed=6)
    assert not torch.equal(_run(c, 1, {})[0], ra[0])


def test_switch_changes_the_following_blocks_only():
    cfg = small_config()
    a, b = _gen(cfg), _gen(cfg)
    pa, pb = _embedding(cfg, 1), _embedding(cfg, 2)
    a.reset(pa, seed=1)
    b.reset(pa, seed=1)
    ra, rb = _run(a, 6, {}), _run(b, 6, {4: pb})
    assert all(torch.equal(x, y) for x, y in zip(ra[:4], rb[:4]))
    assert not torch.allclose(ra[4], rb[4])


@pytest.mark.parametrize("global_sink", [True, False])
def test_restore_continues_bit_identically(global_sink):
    cfg = small_config(global_sink=global_sink)
    gen = _gen(cfg)
    p1, p2, p3 = (_embedding(cfg, s) for s in (1, 2, 3))
    gen.reset(p1, seed=3)
    _run(gen, 6, {2: p2})            # the window is full and has turned
    snap = gen.snapshot(device="cpu")
    first = _run(gen, 6, {1: p3, 4: p1})
    gen.restore(snap)
    again = _run(gen, 6, {1: p3, 4: p1})
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    # and a fresh generator restored from the same snapshot agrees as well
    other = _gen(cfg)
    other.reset(p3, seed=99)
    _run(other, 2, {})
    other.restore(snap)
    assert all(torch.equal(x, y) for x, y in zip(first, _run(other, 6, {1: p3, 4: p1})))


def test_restore_keeps_a_pending_switch():
    cfg = small_config()
    gen = _gen(cfg)
    p1, p2 = _embedding(cfg, 1), _embedding(cfg, 2)
    gen.reset(p1, seed=0)
    _run(gen, 2, {})
    gen.switch_prompt(p2)
    snap = gen.snapshot()
    first = gen.next_block()
    gen.restore(snap)
    assert gen.switch_pending
    assert torch.equal(first, gen.next_block())


def test_switch_before_the_first_block_is_just_the_prompt():
    cfg = small_config()
    a, b = _gen(cfg), _gen(cfg)
    p1, p2 = _embedding(cfg, 1), _embedding(cfg, 2)
    a.reset(p1, seed=0)
    a.switch_prompt(p2)
    b.reset(p2, seed=0)
    assert torch.equal(a.next_block(), b.next_block())


def test_generating_before_reset_is_a_clear_error():
    with pytest.raises(RuntimeError, match="reset"):
        _gen(small_config()).next_block()


def test_full_size_instantiates_on_meta_with_official_names(fixture_set):
    cfg = load_config("longlive")
    n = parameter_count(cfg)
    assert round(n / 1e9, 3) == 1.419
    # official key names: the fixture set's keys (official code) generalised to every block
    from safetensors import safe_open
    with safe_open(str(fixture_set.file("generator.safetensors")), "pt") as f:
        fixture_keys = set(f.keys())
    per_block = {re.sub(r"^blocks\.\d+\.", "", k) for k in fixture_keys if k.startswith("blocks.")}
    expected = {k for k in fixture_keys if not k.startswith("blocks.")}
    expected |= {f"blocks.{i}.{k}" for i in range(cfg.model.num_layers) for k in per_block}
    with torch.device("meta"):
        from streaming.dit import CausalDiT
        keys = set(CausalDiT(cfg.model).state_dict())
    assert keys == expected


def test_long_streams_pass_the_official_rope_table_end():
    """The official tables stop at frame 1024; ours continue (a live stream runs for hours)."""
    from streaming.rope import Rope3D
    rope = Rope3D((4, 2, 2))
    cos, sin = rope.cos_sin(1023, 3, 2, 2)
    assert cos.shape == (12, 8) and torch.isfinite(cos).all()
    a = rope.angles(1500, 1, 1, 1)[0, :4]
    assert torch.allclose(a, 1500 * rope.inv[0])


@pytest.mark.parametrize("window,sink,block", [(12, 3, 3), (9, 3, 3), (8, 2, 2), (7, 1, 3), (6, 0, 2)])
def test_skipping_discarded_recache_frames_changes_nothing(window, sink, block, monkeypatch):
    """The frames a global-sink re-cache would throw away are not computed: the window holds
    the same keys and values afterwards, and the stream continues the same."""
    cfg = small_config(local_attn_size=window, sink_size=sink).replace(video={"latent_frames_per_block": block})
    prompts = [_embedding(cfg, s) for s in (1, 2, 3)]
    runs, windows = [], []
    for skip in (True, False):
        monkeypatch.setattr(StreamingGenerator, "skip_discarded_recache", skip)
        dit = build_dit(cfg)
        for blk in dit.blocks:      # make keys and values depend strongly on the prompt
            blk.cross_attn.o.weight.data *= 20
        gen = StreamingGenerator(dit, cfg)
        gen.reset(prompts[0], seed=4)
        out = _run(gen, 6, {1: prompts[1]})
        gen.switch_prompt(prompts[2])
        gen._recache(*gen._pending)             # the re-cache alone, then compare the windows
        gen._pending = None
        windows.append([t[:, :gen.window.filled * gen.window.frame_len].clone() for t in gen.window.k + gen.window.v])
        runs.append(out + _run(gen, 4, {2: prompts[0]}))
    for a, b in zip(*windows):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_switch_before_the_window_is_full_rewrites_the_sink_in_both_modes():
    """Official edge case: a switch before `local_attn_size` frames exist re-caches from frame
    0 and rewrites the sink whatever global_sink says; later switches keep it (global_sink)."""
    streams = {}
    for global_sink in (True, False):
        cfg = small_config(local_attn_size=12, sink_size=3, global_sink=global_sink)
        dit = build_dit(cfg)
        for blk in dit.blocks:   # let the prompt shape the keys and values
            blk.cross_attn.o.weight.data *= 20
        p1, p2, p3 = (_embedding(cfg, s) for s in (1, 2, 3))
        early, late = StreamingGenerator(dit, cfg), StreamingGenerator(dit, cfg)
        for gen, at in ((early, 2), (late, 6)):   # frame 6 < 12; frame 18 > 12
            gen.reset(p1, seed=2)
            streams[(global_sink, at)] = _run(gen, 9, {at: p2 if at == 2 else p3})
    for a, b in zip(streams[(True, 2)], streams[(False, 2)]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(streams[(True, 6)][-1], streams[(False, 6)][-1], atol=1e-3)


@pytest.mark.parametrize("switch_at", [None, 2, 5])
def test_feeding_a_generated_block_continues_exactly_as_generating_it(switch_at):
    """`feed` (teacher forcing, encoded input) settles a block as the sampler settles its own:
    a stream fed the latents another stream generated, with the same switches, generates
    the same next blocks."""
    cfg = small_config()
    a, b = _gen(cfg), _gen(cfg)
    b.dit.load_state_dict(a.dit.state_dict())
    pa, pb = _embedding(cfg, 1), _embedding(cfg, 2)
    a.reset(pa, seed=3)
    b.reset(pa, seed=3)
    switches = {} if switch_at is None else {switch_at: pb}
    made = _run(a, 6, switches)
    for i, x0 in enumerate(made):
        if i in switches:
            b.switch_prompt(switches[i])
        b.feed(x0)
    assert (b.frame, b.block) == (a.frame, a.block)
    assert torch.equal(a.next_block(), b.next_block())


def test_feeding_a_block_of_the_wrong_shape_is_refused():
    cfg = small_config()
    gen = _gen(cfg)
    gen.reset(_embedding(cfg, 1))
    with pytest.raises(ValueError, match="a fed block must be"):
        gen.feed(torch.zeros(1, 2, 16, 8, 8))
