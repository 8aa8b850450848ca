"""Drawing the world's clips for training and evaluation: scenes, switches and the split.

A switch happens where the generator can make one: at a block boundary. Block b >= 1 of a
stream starts at latent frame 3b, the video frame 12b - 3 (the first latent is one frame, every
later one four), so a clip's scenes start there. A switch changes one attribute or several,
and the object keeps its place (the world carries it over).

Some scenes are never drawn for training (`held_out`): the evaluator prompts with them, so
its figures speak of combinations of words the model never saw together.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .captions import all_scenes
from .world import COLOURS, MOTIONS, SETTINGS, SHAPES, SIZES, Clip, Scene

ATTRIBUTES = {"colour": tuple(COLOURS), "shape": SHAPES, "motion": MOTIONS, "setting": SETTINGS, "size": tuple(SIZES)}
HELD_OUT_SHARE = 0.1


def held_out(scene: Scene) -> bool:
    """True for the tenth of all scenes kept from training (a fixed hash of the scene)."""
    key = f"{scene.colour}|{scene.shape}|{scene.motion}|{scene.setting}|{scene.size}".encode()
    return hashlib.sha256(key).digest()[0] < 256 * HELD_OUT_SHARE


TRAIN_SCENES = tuple(s for s in all_scenes() if not held_out(s))
EVAL_SCENES = tuple(s for s in all_scenes() if held_out(s))


def block_start_frame(block: int, latents_per_block: int = 3, temporal_factor: int = 4) -> int:
    """The first video frame of `block` in a stream (block 0 starts at frame 0)."""
    if block == 0:
        return 0
    return 1 + temporal_factor * (latents_per_block * block - 1)


def random_scene(rng: np.random.Generator, pool: tuple[Scene, ...] = TRAIN_SCENES) -> Scene:
    return pool[int(rng.integers(len(pool)))]


def switched(scene: Scene, rng: np.random.Generator, pool: tuple[Scene, ...] = TRAIN_SCENES,
             attributes: int | None = None) -> Scene:
    """`scene` with one attribute changed (or `attributes` of them, or 1-3 at random), staying in `pool`."""
    n = attributes or int(rng.choice([1, 1, 1, 2, 3]))
    allowed = set(pool)
    for _ in range(100):
        names = rng.choice(list(ATTRIBUTES), size=n, replace=False)
        changes = {}
        for name in names:
            options = [v for v in ATTRIBUTES[name] if v != getattr(scene, name)]
            changes[str(name)] = options[int(rng.integers(len(options)))]
        out = scene.but(**changes)
        if out in allowed:
            return out
    return random_scene(rng, pool)


def random_clip(rng: np.random.Generator, blocks: int, switch_chance: float = 0.5,
                pool: tuple[Scene, ...] = TRAIN_SCENES) -> Clip:
    """A clip of `blocks` blocks' frames; with `switch_chance`, a switch at a random block
    boundary (after the first block)."""
    frames = block_start_frame(blocks)
    scenes, starts = [random_scene(rng, pool)], [0]
    if blocks > 1 and rng.random() < switch_chance:
        b = int(rng.integers(1, blocks))
        scenes.append(switched(scenes[0], rng, pool))
        starts.append(block_start_frame(b))
    return Clip(tuple(scenes), tuple(starts), frames, int(rng.integers(2**31)))


def switch_block(clip: Clip) -> int:
    """The block at which `clip` switches scene (0: it does not)."""
    if len(clip.starts) < 2:
        return 0
    block = 1
    while block_start_frame(block) < clip.starts[1]:
        block += 1
    if block_start_frame(block) != clip.starts[1]:
        raise ValueError(f"the clip switches at frame {clip.starts[1]}, not at a block boundary")
    return block
