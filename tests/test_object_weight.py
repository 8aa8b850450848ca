"""The DiT's loss weights: the latent cells marked as the object's are where the world draws it."""

import numpy as np

from training.object_weight import object_cells, object_weights
from training.world import COLOURS, Clip, Scene, render

H, W = 24, 40          # the stream's latent grid (8x spatial)


def _object_pixels(clip: Clip, frame: int) -> np.ndarray:
    """[192, 320] bool: pixels of exactly the object's colour (no setting has it)."""
    video = render(clip, [frame])[0].astype(int)
    rgb = np.array(COLOURS[clip.scene_at(frame).colour])
    return np.abs(video - rgb).sum(-1) <= 3


def _check(clip: Clip) -> None:
    frames = 1 + (clip.frames - 1) // 4
    cells = object_cells(clip, frames, H, W)
    for k in range(frames):
        pixels = _object_pixels(clip, min(4 * k, clip.frames - 1))
        assert pixels.sum() > 50
        ys, xs = np.nonzero(pixels)
        assert cells[k][ys // 8, xs // 8].all(), f"latent {k}: object pixels outside the marked cells"
        covered = np.zeros((H, W), bool)
        covered[ys // 8, xs // 8] = True
        # a margin of about a cell round the object, not much more
        assert cells[k].sum() <= 2.5 * covered.sum(), f"latent {k}: {cells[k].sum()} cells for {covered.sum()}"


def test_cells_follow_a_moving_object_across_the_edge():
    # moving left 40 px a second from the centre: across the left edge after 4 s (64 frames)
    _check(Clip.of(Scene("red", "square", "left", "grass", "big"), 97, 3))


def test_cells_follow_a_bounce_and_a_switch_of_size():
    a = Scene("blue", "ball", "bouncing", "sand", "small")
    _check(Clip((a, a.but(size="big", motion="down")), (0, 33), 69, 5))


def test_weights_are_the_weight_on_the_object_and_one_elsewhere():
    clip = Clip.of(Scene("yellow", "triangle", "still", "ocean", "small"), 13, 1)
    w = object_weights([clip], 4, H, W, 6.0)
    assert w.shape == (1, 4, 1, H, W)
    assert set(np.unique(w.numpy())) == {1.0, 6.0}
    # a still object at the centre: the same cells at every latent, round the frame's centre
    assert (w[0, 0] == w[0, 3]).all()
    ys, xs = np.nonzero(w[0, 0, 0].numpy() == 6.0)
    assert abs(ys.mean() + 0.5 - H / 2) < 1 and abs(xs.mean() + 0.5 - W / 2) < 1
