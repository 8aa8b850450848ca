"""The evaluator's judgements (bench/toy_eval.py) on the world's own frames, where the truth is
known: every motion is read as its word over 3 s, still and bouncing apart, wraps round the
edges unwrapped; and a share is a share of what was tried."""

from __future__ import annotations

import pytest

from bench.toy_eval import Tally, majority, motion_of, net_move
from bench.toy_measure import measure
from training.world import FPS, MOTIONS, SPEED, WIDTH, Clip, Scene, render


@pytest.mark.parametrize("motion", MOTIONS)
@pytest.mark.parametrize("shape", ["ball", "triangle"])
def test_every_motion_of_the_world_reads_as_its_word(motion, shape):
    frames = render(Clip.of(Scene("orange", shape, motion, "grass", "small"), 3 * FPS, 5))
    assert motion_of([measure(f) for f in frames], 3.0) == motion


def test_a_move_across_the_edge_is_unwrapped():
    """A rightward object starting near the right edge wraps to the left: still 'right', and
    the net move is the distance travelled, not the jump across the frame."""
    frames = render(Clip.of(Scene("red", "ball", "right", "snow"), 6 * FPS, 1))[3 * FPS:]
    seen = [measure(f) for f in frames]
    assert min(s.x for s in seen) < 40 and max(s.x for s in seen) > WIDTH - 40      # it crossed the edge
    dx, dy, _ = net_move(seen)
    assert dx == pytest.approx(SPEED * (len(frames) - 1) / FPS, abs=3) and abs(dy) < 3
    assert motion_of(seen, 3.0) == "right"


def test_majority_and_tallies():
    assert majority(["red", None, "blue", "red"]) == "red" and majority([None]) is None
    t = Tally()
    for ok in (True, True, False, True):
        t.add(ok, "miss")
    assert (t.right, t.total, t.share, t.misses) == (3, 4, 0.75, ["miss"])
