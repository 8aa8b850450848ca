"""Motion-aware strength: a still input gets `still` (0.8), full motion `still - sensitivity`
(0.6), smoothed block to block; the change across a block boundary counts; bad settings refused."""

from __future__ import annotations

import numpy as np
import pytest

from streaming.config import load_config
from streaming.motion_strength import MotionStrength
from streaming.pipeline import VideoPipeline


def _still(frames: int = 12, value: int = 100) -> np.ndarray:
    return np.full((frames, 24, 40, 3), value, np.uint8)


def _flicker(frames: int = 12) -> np.ndarray:
    out = _still(frames, 0)
    out[1::2] = 255                      # every frame the opposite of the last: RMS change 2
    return out


def test_a_still_input_gets_the_still_strength_and_motion_lowers_it_smoothly():
    m = MotionStrength()
    assert m.update(_still()) == pytest.approx(0.8)
    assert m.update(_flicker()) == pytest.approx(0.9 * 0.6 + 0.1 * 0.8)     # 0.62
    assert m.update(_flicker()) == pytest.approx(0.9 * 0.6 + 0.1 * 0.62)
    m.reset()
    assert m.update(_flicker()) == pytest.approx(0.6)


def test_half_of_full_motion_takes_off_half_the_sensitivity():
    frames = _still(12, 100)
    frames[6:] = 100 + 13            # one change of 13/127.5 = 0.102 RMS: half of full motion (0.2)
    assert MotionStrength(keep=0.0).motion(frames) == pytest.approx(13 / 127.5 / 0.2, rel=1e-4)


def test_a_cut_between_blocks_counts_as_motion():
    m = MotionStrength(keep=0.0)
    m.update(_still(12, 0))
    assert m.update(_still(12, 255)) == pytest.approx(0.6)      # each block still, but a cut between
    assert m.update(_still(12, 255)) == pytest.approx(0.8)


@pytest.mark.parametrize("kwargs, words", [({"still": 1.5}, "still must be in"), ({"keep": -0.1}, "keep must be in"),
                                           ({"full_motion": 0.0}, "full_motion must be above 0"),
                                           ({"still": 0.1, "sensitivity": 0.2}, "sensitivity must not exceed")])
def test_bad_settings_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        MotionStrength(**kwargs)


def test_the_pipeline_takes_the_strength_from_the_motion():
    pipe = VideoPipeline.from_config(load_config("tiny").replace(video={"height": 64, "width": 64}))
    pipe.motion_strength = MotionStrength()
    pipe.start("a prompt", seed=1)
    assert pipe.next_frames(_still(9), strength=0.3).strength == pytest.approx(0.8)
    assert pipe.next_frames(_flicker(12)).strength == pytest.approx(0.62)
