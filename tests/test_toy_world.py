"""The toy world (training/world.py) draws what its scene says, and its captions
(training/captions.py) say it in many ways with a known vocabulary. Expected values come from
the world's specification (its colour table, the shapes' areas, its speed), measured on the
rendered pixels."""

from __future__ import annotations

import re

import numpy as np
import pytest

from training.captions import DEFAULT_MOTION, DEFAULT_SIZE, SHAPE_WORDS, SETTING_PHRASES, all_scenes, caption, \
    made_up_word, words
from training.world import COLOURS, FPS, HEIGHT, SETTING_COLOURS, SIZES, SPEED, WIDTH, Clip, Scene, render


def object_mask(video: np.ndarray, scene: Scene) -> np.ndarray:
    """Pixels within 30 of the object's colour in every channel ([frames, H, W] bool)."""
    return (np.abs(video.astype(int) - np.array(COLOURS[scene.colour])) <= 30).all(-1)


def centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_the_same_clip_renders_the_same_pixels_and_the_seed_moves_only_the_texture():
    scene = Scene("red", "ball", "left", "sand")
    a, b = render(Clip.of(scene, 8, seed=3)), render(Clip.of(scene, 8, seed=3))
    assert a.shape == (8, HEIGHT, WIDTH, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    c = render(Clip.of(scene, 8, seed=4))
    assert not np.array_equal(a, c)
    for ma, mc in zip(object_mask(a, scene), object_mask(c, scene)):        # the object is where it was
        assert centroid(ma) == pytest.approx(centroid(mc), abs=0.2) and abs(int(ma.sum()) - int(mc.sum())) < 20


@pytest.mark.parametrize("shape, fill", [("ball", np.pi / 4), ("square", 1.0), ("triangle", 0.5)])
def test_each_shape_fills_its_bounding_box_as_its_geometry_says(shape, fill):
    for size in SIZES:
        scene = Scene("orange", shape, "still", "snow", size)
        mask = object_mask(render(Clip.of(scene, 1, seed=0)), scene)[0]
        ys, xs = np.nonzero(mask)
        box = (np.ptp(xs) + 1) * (np.ptp(ys) + 1)
        assert mask.sum() / box == pytest.approx(fill, abs=0.06), (shape, size)
        assert np.ptp(xs) + 1 == pytest.approx(2 * SIZES[size], abs=2)          # its size, as the table says


@pytest.mark.parametrize("colour", list(COLOURS))
@pytest.mark.parametrize("setting", list(SETTING_COLOURS))
def test_the_object_has_its_colour_and_stands_out_from_every_setting(colour, setting):
    scene = Scene(colour, "square", "still", setting)
    frame = render(Clip.of(scene, 1, seed=1))[0].astype(int)
    assert np.abs(frame[HEIGHT // 2, WIDTH // 2] - COLOURS[colour]).max() <= 1           # its colour, at its centre
    # the setting's colour around it (the median of the border rows)
    edge = np.concatenate([frame[:8].reshape(-1, 3), frame[-8:].reshape(-1, 3)])
    assert np.abs(np.median(edge, axis=0) - SETTING_COLOURS[setting]).max() <= 20
    # its outline: right outside the square, a pixel far from the setting's colour (a green square on grass too)
    half = int(SIZES["big"])
    ring = frame[HEIGHT // 2, WIDTH // 2 + half + 1]
    assert np.abs(ring - SETTING_COLOURS[setting]).max() > 90, ring


@pytest.mark.parametrize("motion, direction", [("left", (-1, 0)), ("right", (1, 0)), ("up", (0, -1)),
                                               ("down", (0, 1)), ("still", (0, 0))])
def test_the_object_moves_at_the_world_s_speed_from_the_centre(motion, direction):
    scene = Scene("purple", "ball", motion, "grass")
    video = render(Clip.of(scene, FPS + 1, seed=2))
    mask = object_mask(video, scene)
    start, after_1s = centroid(mask[0]), centroid(mask[-1])
    assert start == pytest.approx([WIDTH / 2, HEIGHT / 2], abs=1)
    assert after_1s - start == pytest.approx(np.array(direction) * SPEED, abs=1)


def test_a_clip_renders_the_frames_asked_for_as_in_the_whole_clip():
    clip = Clip((Scene("red", "ball", "up", "ocean"), Scene("white", "triangle", "left", "ocean")), (0, 12), 24, 9)
    assert np.array_equal(render(clip, [3, 12, 23]), render(clip)[[3, 12, 23]])


def test_moving_off_an_edge_comes_back_on_the_other():
    scene = Scene("yellow", "square", "right", "ocean")
    frames = int((WIDTH / 2) / SPEED * FPS) + 8            # past the right edge
    video = render(Clip.of(scene, frames, seed=0))
    last = object_mask(video, scene)[-1]
    assert last[:, :10].any() and last[:, -10:].any()       # split across the edges
    assert 0.9 < last.sum() / object_mask(video, scene)[0].sum() < 1.1


def test_a_bouncing_object_rises_and_lands_where_it_was():
    scene = Scene("blue", "ball", "bouncing", "snow")
    video = render(Clip.of(scene, FPS + 1, seed=0))
    ys = [centroid(m)[1] for m in object_mask(video, scene)]
    assert min(ys) < HEIGHT / 2 - 25 and abs(ys[0] - HEIGHT / 2) < 1 and abs(ys[-1] - HEIGHT / 2) < 1.5


def test_a_switch_changes_what_the_new_scene_says_and_keeps_the_object_where_it_is():
    first = Scene("red", "ball", "left", "grass")
    second = first.but(colour="blue", motion="up")
    clip = Clip((first, second), (0, 24), 48, seed=5)
    video = render(clip)
    before, after = object_mask(video[23:24], first)[0], object_mask(video[24:25], second)[0]
    assert not object_mask(video[24:25], first)[0].any()                   # no red left
    step = SPEED / FPS
    assert centroid(after) - centroid(before) == pytest.approx([-step, 0], abs=1)   # one frame's move on
    assert centroid(object_mask(video[47:48], second)[0])[1] < centroid(after)[1] - 20   # then it rises


def test_a_scene_or_clip_the_world_does_not_have_is_one_sentence():
    with pytest.raises(ValueError, match="colour 'pink' is not one of red, orange"):
        Scene("pink")
    with pytest.raises(ValueError, match="one start per scene"):
        Clip((Scene(), Scene()), (0,), 10, 0)
    with pytest.raises(ValueError, match="must rise"):
        Clip((Scene(), Scene()), (0, 12), 10, 0)


# -- captions ----------------------------------------------------------------------------------------------
def test_every_caption_names_what_the_scene_decides_in_the_grammar_s_words():
    rng = np.random.default_rng(0)
    vocabulary = set(words())
    shapes_said = {s: set() for s in SHAPE_WORDS}
    for scene in all_scenes()[::7]:
        for _ in range(3):
            text = caption(scene, rng)
            said = re.findall(r"[a-z]+", text.lower())
            assert scene.colour in said, text
            assert set(SHAPE_WORDS[scene.shape]) & set(said), text
            shapes_said[scene.shape] |= set(SHAPE_WORDS[scene.shape]) & set(said)
            assert any(re.sub(r"^(the|a) ", "", p) in text.lower() for p in SETTING_PHRASES[scene.setting]), text
            unknown = [w for w in said if w not in vocabulary]
            assert len(unknown) <= 1, text                                    # at most one made-up word
    assert all(shapes_said[s] == set(SHAPE_WORDS[s]) for s in SHAPE_WORDS)    # every synonym in use


def test_captions_leave_out_only_the_defaults_and_vary():
    rng = np.random.default_rng(1)
    small = Scene("green", "triangle", "down", "sand", "small")
    texts = {caption(small, rng, unknown_words=0) for _ in range(200)}
    assert all(re.search(r"\b(small|tiny|little)\b", t.lower()) for t in texts)
    assert all(re.search(r"\b(down|falling|falls|sinking|sinks|dropping|drops|downward)\b", t.lower()) for t in texts)
    assert len(texts) > 100                                                     # orders, synonyms, openings
    plain = Scene("green", "triangle", DEFAULT_MOTION, "sand", DEFAULT_SIZE)
    quiet = [caption(plain, rng, unknown_words=0) for _ in range(200)]
    assert any(not re.search(r"\b(big|large|huge)\b", t.lower()) for t in quiet)


def test_made_up_words_are_never_in_the_vocabulary():
    rng = np.random.default_rng(2)
    vocabulary = set(words())
    assert not {made_up_word(rng) for _ in range(500)} & vocabulary
    assert {"red", "ball", "night", "sky", "left", "small"} <= vocabulary


# -- the tokenizer -----------------------------------------------------------------------------------------
def test_the_tokenizer_gives_each_known_word_its_token_and_every_other_word_the_same_unknown_one():
    from training.vocabulary import EOS, PAD, UNK, build_tokenizer

    tok = build_tokenizer()
    assert tok.to_str() == build_tokenizer().to_str()                       # the same ids on every run
    assert (tok.token_to_id(PAD), tok.token_to_id(EOS)) == (0, 1)            # as the byte tokenizer's
    assert tok.get_vocab_size() == len(words()) + 3 + 3                      # words, punctuation, specials
    unknown = tok.token_to_id(UNK)
    ids = tok.encode("Blue TRIANGLE. Night sky, it drifts upward").ids
    assert unknown not in ids and len(ids) == 9 and ids[2] == tok.token_to_id(".")
    said = tok.encode("a red ball over grass").ids
    odd = tok.encode("a red zorblax ball over quixotic grass").ids
    assert [i for i in odd if i != unknown] == said and odd.count(unknown) == 2
    rng = np.random.default_rng(3)
    assert all(tok.encode(made_up_word(rng)).ids == [unknown] for _ in range(20))
