"""The whole pipeline (prompt -> text encoder -> generator -> streaming decoder -> uint8 frames)
on the tiny preset: snapshot/restore is exact, and the bfloat16 path runs on the CPU."""

from __future__ import annotations

import numpy as np
import torch

from streaming.config import load_config
from streaming.pipeline import VideoPipeline


def _blocks(pipe: VideoPipeline, n: int) -> list[np.ndarray]:
    return [pipe.next_frames().frames for _ in range(n)]


def test_restore_then_generate_equals_never_having_left():
    """The one mechanism behind rewind, `back`/`goto` and restart: from a snapshot taken at a
    block boundary (with a prompt switch pending), wandering off (other prompts, more blocks,
    even a new stream) and restoring gives bit for bit the frames that never leaving gives."""
    cfg = load_config("tiny")
    pipe = VideoPipeline.from_config(cfg)
    pipe.start("a lighthouse in a storm", seed=7)
    _blocks(pipe, 5)                                   # past the window: the ring has turned
    pipe.switch_prompt("a red fox running through snow")
    snap = pipe.snapshot()
    stayed = _blocks(pipe, 4)
    pipe.switch_prompt("neon city at night")
    _blocks(pipe, 3)
    pipe.start("something else entirely", seed=99)
    _blocks(pipe, 2)
    for _ in range(2):                                 # a snapshot can be restored more than once
        pipe.restore(snap)
        assert pipe.prompt == "a lighthouse in a storm"
        again = _blocks(pipe, 4)
        assert pipe.prompt == "a red fox running through snow"
        assert all(np.array_equal(a, b) for a, b in zip(stayed, again))
    assert not np.array_equal(stayed[0], stayed[1])    # a moving picture, not one frame repeated


def test_the_bfloat16_path_runs_on_the_cpu():
    """`runtime.dtype: bfloat16` is honoured on every device: the DiT's linear layers and the
    decoder compute in bfloat16 (a float32 tensor slipping into a bfloat16 layer raises), and the
    frames stay close to the float32 pipeline's."""
    cfg = load_config("tiny")
    frames = {}
    for dtype in ("float32", "bfloat16"):
        pipe = VideoPipeline.from_config(cfg.replace(runtime={"dtype": dtype}))
        want = getattr(torch, dtype)
        assert pipe.generator.dit.blocks[0].ffn[0].weight.dtype == want
        assert pipe.generator.dit.blocks[0].modulation.dtype == torch.float32      # the adaLN path stays float32
        assert pipe.decoder.dtype == want
        pipe.start("a red fox running through snow", seed=3)
        out = _blocks(pipe, 4)
        assert all(f.dtype == np.uint8 for f in out)
        frames[dtype] = np.concatenate(out).astype(np.float64)
    diff = np.abs(frames["float32"] - frames["bfloat16"]).mean()
    assert 0 < diff < 4.0, diff          # levels of 0-255: rounding differences, not another picture
