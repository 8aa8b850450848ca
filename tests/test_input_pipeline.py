"""Live input through the pipeline (video-to-video, no network): frames fitted to the model's
size, encoded block by block with the encoder's cache carried, mixed into the blocks at a
strength; rewind carries the cache; a bad input changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streaming.config import load_config
from streaming.input_encoder import InputEncoder, InputError, fit_frames
from streaming.pipeline import VideoPipeline
from training.world import Clip, Scene, render

PROMPT = "a big blue square moving right over green grass"


def _tiny() -> VideoPipeline:
    return VideoPipeline.from_config(load_config("tiny").replace(video={"height": 64, "width": 64}))


def _clip(frames: int, h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    base = g.integers(0, 256, (1, h, w, 3))
    return np.clip(base + np.arange(frames)[:, None, None, None] * 3, 0, 255).astype(np.uint8)


def test_fitting_crops_to_the_models_aspect_about_the_centre():
    """A 16:9 frame for a 1:1 model: its left and right margins (here red) are cropped away,
    not squeezed in; what is left is resized to the model's size."""
    frame = np.zeros((1, 36, 64, 3), np.uint8)
    frame[..., 2] = 200                      # blue middle
    frame[:, :, :14, 0] = frame[:, :, 50:, 0] = 255
    frame[:, :, :14, 2] = frame[:, :, 50:, 2] = 0
    out = fit_frames(torch.from_numpy(frame), 16, 16)
    assert out.shape == (1, 3, 16, 16)
    assert float(out[:, 0].max()) < -0.9 and float(out[:, 2].min()) > 0.5


def test_the_input_streamed_block_by_block_is_encoded_as_one_clip():
    """9 then 12 then 12 frames through the input encoder equal the whole 33-frame clip
    through the same encoder; with the cache dropped between blocks they do not."""
    pipe = _tiny()
    enc: InputEncoder = pipe.input_encoder
    frames = _clip(33)
    blocks = [enc.encode(frames[:9], True), enc.encode(frames[9:21], False), enc.encode(frames[21:33], False)]
    whole = enc.encoder(fit_frames(torch.from_numpy(frames), 64, 64)[None])
    torch.testing.assert_close(torch.cat(blocks, 1), whole, atol=1e-4, rtol=1e-4)
    enc.encode(frames[:9], True)
    enc.reset()
    dropped = enc.encode(frames[9:21], False)
    assert not torch.allclose(dropped, whole[:, 3:6], atol=1e-3)


def test_input_lost_and_back_starts_a_new_clip():
    """A text block between input blocks: the next input block is encoded as a clip's start
    (the last 9 of its 12 frames)."""
    pipe = _tiny()
    frames = _clip(45)
    pipe.start(PROMPT, seed=1)
    pipe.next_frames(frames[:9], 0.5)
    pipe.next_frames()                                       # input lost
    back = pipe.input_encoder
    assert not back.started
    fresh = InputEncoder(back.encoder, pipe.cfg)
    expected = fresh.encode(frames[24:33], True)
    got = back.encode(frames[21:33], False)
    torch.testing.assert_close(got, expected)


def test_rewind_carries_the_input_encoders_cache():
    pipe = _tiny()
    frames = _clip(45)
    pipe.start(PROMPT, seed=1)
    pipe.next_frames(frames[:9], 0.5)
    pipe.next_frames(frames[9:21], 0.5)
    snap = pipe.snapshot()
    first = pipe.next_frames(frames[21:33], 0.5).frames
    pipe.next_frames(frames[33:45], 0.5)
    pipe.restore(snap)
    again = pipe.next_frames(frames[21:33], 0.5).frames
    assert np.array_equal(first, again)


@pytest.mark.parametrize("frames, strength, words", [
    (np.zeros((8, 64, 64, 3), np.uint8), 0.5, "takes 9 input frames, not 8"),
    (np.zeros((9, 64, 64, 3), np.float32), 0.5, "must be uint8"),
    (np.zeros((9, 64, 64), np.uint8), 0.5, "must be uint8"),
    (np.zeros((9, 1, 64, 3), np.uint8), 0.5, "too small"),
    (np.zeros((9, 64, 64, 3), np.uint8), 1.5, "strength must be between 0 and 1"),
])
def test_a_bad_input_is_refused_and_changes_nothing(frames, strength, words):
    pipe = _tiny()
    pipe.start(PROMPT, seed=1)
    pipe.switch_prompt("another prompt")
    with pytest.raises(ValueError, match=words):
        pipe.next_frames(frames, strength)
    assert pipe.generator.block == 0 and pipe.generator.switch_pending
    assert pipe.next_frames().frames.shape[0] == 9
    assert InputError.__mro__[1] is ValueError


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0 ** 2 / mse)


@pytest.mark.slow
def test_on_the_toy_world_the_strength_runs_from_the_input_to_the_words():
    """A red ball on snow as input, "a big blue square ... over green grass" as the words, five
    blocks each: at strength 0 the output is the input through the VAE (PSNR measured 21.6-24.6
    dB a block), at 0.1 it still follows it (13.8-16.6 dB, the snow kept), at 0.5 less (about 6
    dB), at 1 it is the text-only stream frame for frame (the grass)."""
    from bench.toy_measure import measure

    pipe = VideoPipeline.from_config(load_config("toy"))
    clip = render(Clip.of(Scene("red", "ball", "still", "snow", "big"), 9 + 12 * 4, 3))

    def run(strength: float | None) -> list[np.ndarray]:
        pipe.start(PROMPT, seed=4)
        out, at = [], 0
        for _ in range(5):
            n = pipe.input_frames_wanted
            block = pipe.next_frames(clip[at:at + n], strength) if strength is not None else pipe.next_frames()
            out.append(block.frames)
            at += n
        return out

    psnr = {}
    for s in (0.0, 0.1, 0.5):
        frames = run(s)
        psnr[s] = float(np.mean([_psnr(f, clip[i * 12 - 3 if i else 0:][:len(f)]) for i, f in enumerate(frames)]))
        if s < 0.5:
            assert measure(frames[-1][-1]).setting == "snow", s
    assert psnr[0.0] > 20 and psnr[0.1] > 12 and psnr[0.5] < psnr[0.1] < psnr[0.0], psnr
    text, full = run(None), run(1.0)
    assert all(np.array_equal(a, b) for a, b in zip(text, full))
    assert measure(full[-1][-1]).setting == "grass"
