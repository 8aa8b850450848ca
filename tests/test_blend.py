"""Blends and transitions in embedding space, checked on the embeddings handed to the model:
what `dit.encode_prompt` receives per block (the cross-attention conditioning) and when the
window is re-cached (the generator's trace hook)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streaming.blend import Blend, BlendError, TransitionSpec, interpolate
from streaming.config import load_config
from streaming.pipeline import VideoPipeline

A, B, C = "a lighthouse in a storm", "a red fox running through snow", "neon city at night"


@pytest.fixture(scope="module")
def pipe() -> VideoPipeline:
    return VideoPipeline.from_config(load_config("tiny"))


class Spy:
    """Records every embedding the DiT turns into cross-attention K/V, and every re-cache."""

    def __init__(self, pipe: VideoPipeline, monkeypatch: pytest.MonkeyPatch):
        self.seen: list[torch.Tensor] = []
        self.recache_blocks: list[int] = []
        dit = pipe.generator.dit
        original = dit.encode_prompt

        def encode_prompt(context: torch.Tensor):
            self.seen.append(context.detach().clone())
            return original(context)

        monkeypatch.setattr(dit, "encode_prompt", encode_prompt)

        def trace(kind, block, step, x, x0):
            if kind == "recache":
                self.recache_blocks.append(block)
        pipe.generator.trace = trace
        monkeypatch.setattr(pipe.generator, "trace", trace)


def _slerp_by_hand(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    va, vb = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    theta = math.acos(np.dot(va, vb) / (np.linalg.norm(va) * np.linalg.norm(vb)))
    out = (math.sin((1 - t) * theta) * va + math.sin(t * theta) * vb) / math.sin(theta)
    return out.reshape(a.shape)


def test_weights_are_normalised_and_validated():
    blend = Blend.of([(A, 3), (B, 1)])
    assert blend.parts == ((A, 0.75), (B, 0.25))
    assert Blend.of([(A, 2), (A, 2), (B, 0)]).parts == ((A, 1.0),)     # one text, one prompt; weight 0 drops out
    assert Blend.of(A).single == A
    for bad in ([], [(A, 0), (B, 0)], [(A, -1), (B, 2)], [(A, float("nan"))]):
        with pytest.raises(BlendError):
            Blend.of(bad)
    with pytest.raises(BlendError):
        TransitionSpec(4, "cubic")


def test_a_blend_conditions_the_model_on_the_weighted_mean(pipe, monkeypatch):
    ea, eb = pipe.text.encode(A).numpy(), pipe.text.encode(B).numpy()
    spy = Spy(pipe, monkeypatch)
    pipe.start(Blend.of([(A, 70), (B, 30)]), seed=1)
    assert pipe.prompt == f"{A} (70%) + {B} (30%)"
    np.testing.assert_allclose(spy.seen[-1].numpy(), 0.7 * ea + 0.3 * eb, rtol=1e-6, atol=1e-7)
    one = VideoPipeline.from_config(load_config("tiny"))
    one.start(Blend.of([(A, 5)]), seed=1)          # a blend of one prompt is that prompt, bit for bit
    plain = VideoPipeline.from_config(load_config("tiny"))
    plain.start(A, seed=1)
    assert np.array_equal(one.next_frames().frames, plain.next_frames().frames)


@pytest.mark.slow
def test_a_four_block_slerp_transition_feeds_the_spec_conditioning(pipe, monkeypatch):
    ea, eb = pipe.text.encode(A).numpy(), pipe.text.encode(B).numpy()
    pipe.start(A, seed=2)
    for _ in range(5):                               # a full window to re-cache at the end
        pipe.next_frames()
    spy = Spy(pipe, monkeypatch)
    pipe.switch_prompt(B, transition=TransitionSpec(4, "slerp"))
    assert spy.seen == []                            # nothing reaches the model before the next block
    steps = []
    for k in range(1, 5):
        before = len(spy.seen)
        blk = pipe.next_frames()
        steps.append(blk.transition)
        assert len(spy.seen) == before + 1, "one conditioning per block"
        want = eb if k == 4 else _slerp_by_hand(ea, eb, k / 4)
        np.testing.assert_allclose(spy.seen[-1].numpy(), want, rtol=1e-5, atol=1e-6)
        assert blk.prompt == B
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert spy.recache_blocks == [8], "only the block that reaches the target re-caches the window"
    blk = pipe.next_frames()
    assert blk.transition is None and len(spy.seen) == 4       # the target stays, encoded once


def test_linear_transition_and_slerp_falls_back_for_parallel_embeddings():
    a = torch.randn(1, 6, 4)
    b = torch.randn(1, 6, 4)
    torch.testing.assert_close(interpolate(a, b, 0.25, "linear"), 0.75 * a + 0.25 * b)
    parallel = 3 * a                                   # the angle is 0: slerp is undefined, linear is the answer
    torch.testing.assert_close(interpolate(a, parallel, 0.5, "slerp"), 2 * a)
    zero = torch.zeros_like(a)
    torch.testing.assert_close(interpolate(zero, b, 0.5, "slerp"), 0.5 * b)
    mid = interpolate(a, b, 0.5, "slerp").numpy()
    np.testing.assert_allclose(mid, _slerp_by_hand(a.numpy(), b.numpy(), 0.5), rtol=1e-5, atol=1e-6)


def test_a_switch_during_a_transition_starts_where_the_glide_has_got_to(pipe, monkeypatch):
    ea, eb, ec = (pipe.text.encode(t).numpy() for t in (A, B, C))
    pipe.start(A, seed=3)
    pipe.next_frames()
    spy = Spy(pipe, monkeypatch)
    pipe.switch_prompt(B, transition=TransitionSpec(4, "linear"))
    pipe.next_frames()                               # a quarter of the way to B
    here = 0.75 * ea + 0.25 * eb
    pipe.switch_prompt(C, transition=TransitionSpec(2, "linear"))
    pipe.next_frames()
    np.testing.assert_allclose(spy.seen[-1].numpy(), 0.5 * here + 0.5 * ec, rtol=1e-5, atol=1e-6)
    pipe.next_frames()
    np.testing.assert_allclose(spy.seen[-1].numpy(), ec, rtol=0, atol=0)
    pipe.switch_prompt(A)                            # a cut ends nothing else: it is a cut
    assert pipe.transition is None


@pytest.mark.slow
def test_restore_mid_transition_continues_it_exactly(pipe):
    pipe.start(A, seed=4)
    for _ in range(3):
        pipe.next_frames()
    pipe.switch_prompt(Blend.of([(B, 1), (C, 1)]), transition=TransitionSpec(3, "slerp"))
    pipe.next_frames()
    snap = pipe.snapshot("cpu")
    stayed = [pipe.next_frames() for _ in range(3)]
    pipe.start(C, seed=9)
    pipe.next_frames()
    pipe.restore(snap)
    again = [pipe.next_frames() for _ in range(3)]
    assert [b.transition for b in again] == [(2, 3), (3, 3), None]
    assert all(np.array_equal(x.frames, y.frames) for x, y in zip(stayed, again))
