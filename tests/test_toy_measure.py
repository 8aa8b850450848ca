"""The toy world's measurer (bench/toy_measure.py) reads back from the world's own frames what
their scenes say: setting, colour, shape and place, for every colour on every setting, wrapped
round the edges and bouncing. The labels come from the scenes, the pixels from the world."""

from __future__ import annotations

import numpy as np
import pytest

from bench.toy_measure import colour_name, measure
from training.captions import all_scenes
from training.world import COLOURS, HEIGHT, SETTINGS, WIDTH, Clip, Scene, bounce_lift, positions, render


def torus_gap(a: float, b: float, size: int) -> float:
    d = abs(a - b) % size
    return min(d, size - d)


def test_every_colour_on_every_setting_in_every_shape_is_read_back():
    misread = []
    for colour in COLOURS:
        for setting in SETTINGS:
            for shape in ("ball", "square", "triangle"):
                scene = Scene(colour, shape, "still", setting, "small")
                seen = measure(render(Clip.of(scene, 1, seed=7))[0])
                if (seen.found, seen.colour, seen.shape, seen.setting) != (True, colour, shape, setting):
                    misread.append((scene, seen))
    assert not misread, misread[:3]


def test_moving_wrapped_and_bouncing_objects_are_read_back_with_their_place():
    rng = np.random.default_rng(11)
    scenes = all_scenes()
    for i in rng.choice(len(scenes), 40, replace=False):
        scene = scenes[int(i)]
        clip = Clip.of(scene, 96, seed=int(i))               # 6 s: moving objects cross an edge
        shown = (0, 37, 95)
        video, where, lift = render(clip, shown), positions(clip), bounce_lift(clip)
        for frame, f in zip(video, shown):
            seen = measure(frame)
            assert (seen.colour, seen.shape, seen.setting) == (scene.colour, scene.shape, scene.setting), (scene, f, seen)
            assert torus_gap(seen.x, where[f][0], WIDTH) < 2.0, (scene, f, seen.x, where[f])
            expected_y = where[f][1] - lift[f]
            if scene.shape != "triangle":                      # a triangle's centroid sits below its box's centre
                assert torus_gap(seen.y, expected_y, HEIGHT) < 2.0, (scene, f, seen.y, expected_y)


def test_colour_names_follow_hue_and_chroma():
    assert colour_name(np.array([200, 30, 40])) == "red"
    assert colour_name(np.array([40, 60, 200])) == "blue"
    assert colour_name(np.array([230, 228, 235])) == "white"
    assert colour_name(np.array([40, 38, 45])) == "black"
    assert colour_name(np.array([120, 60, 160])) == "purple"


def test_a_frame_with_no_object_finds_none():
    scene = Scene("red", "ball", "still", "night sky")
    frame = render(Clip.of(scene, 1, seed=3))[0]
    other = render(Clip.of(scene.but(colour="black"), 1, seed=3))[0]
    empty = frame.copy()
    empty[:, :WIDTH // 2] = frame[:, WIDTH // 2:][:, ::-1]     # the right half, mirrored, is empty sky too
    empty[:, WIDTH // 2:] = frame[:, WIDTH // 2:]
    half = int(26 + 3)
    empty[HEIGHT // 2 - half:HEIGHT // 2 + half, WIDTH // 2 - half:WIDTH // 2 + half] = frame[:2 * half, :2 * half]
    assert not measure(empty).found
    assert measure(other).found and measure(other).colour == "black"
