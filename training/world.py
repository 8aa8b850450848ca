"""The toy world: procedural video of one shape moving over a setting, at the stream's size.

A `Scene` is what a caption can say: the object's colour, shape, size and motion, and the
setting behind it. A `Clip` is a run of scenes, each from a frame on (a prompt switch at a block
boundary); the object keeps its place across a switch and only what the new scene says changes.
Everything is decided by the scene and the clip's seed, so the same clip renders to the same
pixels on every machine (numpy only, no clock, no global random state).

What is drawn, so that words decide the picture (docs/TOY_WORLD.md):
- the setting fills the frame with its own colour and texture, as people picture it: a dark
  night sky with stars, green grass in blades, beige sand with grain and dunes, a blue ocean
  whose waves drift, white snow with blue-grey speckles. Its texture is seeded per clip.
- the object is a filled ball, square or triangle of the colour, small or big, with a thin
  outline of the setting's opposite lightness (so a green ball on grass or a black square on the
  night sky still stands out);
- it starts at the centre of the frame (the words decide where a clip starts: a start drawn
  at random would leave the model to average over every place), and moves left, right, up or
  down at `SPEED` pixels a second, wrapping round the frame's edges, bounces in place, or
  stays still.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

# raised whenever what a scene renders to changes: trained weights name the world they learnt
WORLD_VERSION = 1
WIDTH, HEIGHT, FPS = 320, 192, 16
SPEED = 40.0                    # pixels a second for moving left/right/up/down (a width in 8 s)
BOUNCE_HZ = 1.0                 # bounces a second
BOUNCE_PX = 36.0                # how high a bounce lifts the object
OUTLINE_PX = 2.0

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "orange": (245, 135, 20), "yellow": (245, 215, 30), "green": (30, 200, 60),
    "blue": (35, 75, 235), "purple": (150, 50, 205), "white": (250, 250, 250), "black": (15, 15, 15),
}
SHAPES = ("ball", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "still", "bouncing")
SETTINGS = ("night sky", "grass", "sand", "ocean", "snow")
SIZES: dict[str, float] = {"small": 14.0, "big": 26.0}   # half the object's extent, in pixels

# each setting's base colour (what the evaluator calls its colour) and its texture's strength
SETTING_COLOURS: dict[str, tuple[int, int, int]] = {
    "night sky": (14, 18, 48), "grass": (62, 132, 46), "sand": (214, 192, 148), "ocean": (28, 86, 168),
    "snow": (236, 239, 246),
}
# the outline contrasts with the setting (dark on light settings, light on dark ones)
_OUTLINES = {name: np.full(3, 10.0 if (max(rgb) + min(rgb)) / 510 > 0.45 else 245.0, dtype=np.float32)
             for name, rgb in SETTING_COLOURS.items()}
_DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


@dataclass(frozen=True)
class Scene:
    colour: str = "red"
    shape: str = "ball"
    motion: str = "still"
    setting: str = "grass"
    size: str = "big"

    def __post_init__(self) -> None:
        for name, value, allowed in (("colour", self.colour, COLOURS), ("shape", self.shape, SHAPES),
                                     ("motion", self.motion, MOTIONS), ("setting", self.setting, SETTINGS),
                                     ("size", self.size, SIZES)):
            if value not in allowed:
                raise ValueError(f"{name} {value!r} is not one of {', '.join(allowed)}")

    def but(self, **changes: str) -> "Scene":
        """This scene with some attributes changed (a switch)."""
        return replace(self, **changes)


@dataclass(frozen=True)
class Clip:
    """Scenes from frames on: `scenes[i]` holds from `starts[i]` (the first is 0) to the next start."""
    scenes: tuple[Scene, ...]
    starts: tuple[int, ...]
    frames: int
    seed: int

    def __post_init__(self) -> None:
        if not self.scenes or len(self.scenes) != len(self.starts) or self.starts[0] != 0:
            raise ValueError("a clip needs one start per scene, the first at frame 0")
        if list(self.starts) != sorted(set(self.starts)) or self.starts[-1] >= self.frames:
            raise ValueError(f"scene starts {self.starts} must rise and stay inside {self.frames} frames")

    @classmethod
    def of(cls, scene: Scene, frames: int, seed: int) -> "Clip":
        return cls((scene,), (0,), frames, seed)

    def scene_at(self, frame: int) -> Scene:
        return self.scenes[int(np.searchsorted(self.starts, frame, side="right")) - 1]


def positions(clip: Clip) -> np.ndarray:
    """[frames, 2] the object's centre (x, y) in pixels, frame by frame: it starts at the frame's
    centre, and each scene moves it on from where the last one left it."""
    out = np.empty((clip.frames, 2), dtype=np.float64)
    x, y = WIDTH / 2.0, HEIGHT / 2.0
    step = SPEED / FPS
    for f in range(clip.frames):
        scene = clip.scene_at(f)
        out[f] = (x, y)
        dx, dy = _DIRECTIONS.get(scene.motion, (0.0, 0.0))
        x, y = (x + dx * step) % WIDTH, (y + dy * step) % HEIGHT
    return out


def bounce_lift(clip: Clip) -> np.ndarray:
    """[frames] pixels a bouncing object is lifted above its place (0 for every other motion);
    the bounce's clock runs only while the scene bounces, so it lands where it started."""
    lift = np.zeros(clip.frames)
    t = 0
    for f in range(clip.frames):
        if clip.scene_at(f).motion == "bouncing":
            lift[f] = BOUNCE_PX * abs(np.sin(np.pi * BOUNCE_HZ * t / FPS))
            t += 1
        else:
            t = 0
    return lift


def render(clip: Clip, frames: Sequence[int] | None = None) -> np.ndarray:
    """[frames, HEIGHT, WIDTH, 3] uint8 RGB: every frame of the clip, or those listed."""
    return render_with_coverage(clip, frames)[0]


def render_with_coverage(clip: Clip, frames: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`render`'s frames, and [frames, HEIGHT, WIDTH] uint8 how much of each pixel the object
    (its fill and outline) covers, 0..255."""
    rng = np.random.default_rng(clip.seed)
    textures = {name: _texture(name, rng) for name in SETTINGS}
    centres, lift = positions(clip), bounce_lift(clip)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32) + 0.5
    wanted = range(clip.frames) if frames is None else list(frames)
    video = np.empty((len(wanted), HEIGHT, WIDTH, 3), dtype=np.uint8)
    covered = np.empty((len(wanted), HEIGHT, WIDTH), dtype=np.uint8)
    for i, f in enumerate(wanted):
        scene = clip.scene_at(f)
        frame = _background(scene.setting, textures[scene.setting], f)
        cx, cy = centres[f]
        fill, ring = _object_masks(scene.shape, SIZES[scene.size], cx, cy - lift[f], xx, yy)
        colour = np.array(COLOURS[scene.colour], dtype=np.float32)
        outline = _OUTLINES[scene.setting]
        frame = frame * (1 - ring[..., None]) + outline * ring[..., None]
        frame = frame * (1 - fill[..., None]) + colour * fill[..., None]
        video[i] = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
        covered[i] = np.clip((fill + ring) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return video, covered


# -- drawing ----------------------------------------------------------------------------------------------
def _object_masks(shape: str, half: float, cx: float, cy: float, xx: np.ndarray,
                  yy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage (0..1, one pixel of antialiasing) of the shape's fill and of its outline ring,
    drawn at (cx, cy) and again across each edge it overlaps, so it wraps round the frame."""
    fill = np.zeros_like(xx)
    whole = np.zeros_like(xx)
    for ox in (-WIDTH, 0, WIDTH):
        for oy in (-HEIGHT, 0, HEIGHT):
            x0, y0 = cx + ox, cy + oy
            if x0 + half + OUTLINE_PX < 0 or x0 - half - OUTLINE_PX > WIDTH:
                continue
            if y0 + half + OUTLINE_PX < 0 or y0 - half - OUTLINE_PX > HEIGHT:
                continue
            d = _signed_distance(shape, half, xx - x0, yy - y0)   # < 0 inside
            fill = np.maximum(fill, np.clip(0.5 - d, 0.0, 1.0))
            whole = np.maximum(whole, np.clip(0.5 - (d - OUTLINE_PX), 0.0, 1.0))
    return fill, np.clip(whole - fill, 0.0, 1.0)


def _signed_distance(shape: str, half: float, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    if shape == "ball":
        return np.hypot(dx, dy) - half
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - half
    # an upward triangle inside the square of side 2*half: base at +half, apex at -half
    # (its area is half the square's); the distance to its three edges' lines
    base = dy - half
    slope = 2.0                                    # the sides rise 2*half over half a base
    norm = np.hypot(1.0, 1.0 / slope)
    left = (-dx - (dy + half) / slope) / norm
    right = (dx - (dy + half) / slope) / norm
    return np.maximum(base, np.maximum(left, right))


def _texture(setting: str, rng: np.random.Generator) -> np.ndarray:
    """The setting's still texture, [HEIGHT, WIDTH] in -1..1 (what `_background` modulates with)."""
    h, w = HEIGHT, WIDTH
    if setting == "night sky":                     # stars: a few bright points of 2x2 pixels
        stars = (rng.random((h // 2, w // 2)) < 0.006) * rng.uniform(0.5, 1.0, (h // 2, w // 2))
        return np.kron(stars, np.ones((2, 2))).astype(np.float32)
    if setting == "grass":                         # blades, 3 pixels wide: streaks along y, varied along x
        cols = np.repeat(rng.normal(0, 1, -(-w // 3)), 3)[:w].astype(np.float32)
        streak = np.repeat(cols[None, :], h, axis=0)
        return np.clip(0.7 * streak + 0.3 * rng.normal(0, 1, (h, w)).astype(np.float32), -2, 2) / 2
    if setting == "sand":                          # grain, and dunes in slow bands
        phase = rng.uniform(0, 2 * np.pi)
        y = np.arange(h, dtype=np.float32)[:, None]
        x = np.arange(w, dtype=np.float32)[None, :]
        dunes = np.sin(y / 11.0 + 0.6 * np.sin(x / 37.0 + phase))
        return 0.5 * dunes + 0.5 * rng.uniform(-1, 1, (h, w)).astype(np.float32)
    if setting == "ocean":                         # the waves are drawn per frame; a little sparkle here
        return rng.uniform(-1, 1, (h, w)).astype(np.float32)
    return (rng.random((h, w)) < 0.03).astype(np.float32)   # snow: scattered blue-grey speckles


def _background(setting: str, texture: np.ndarray, frame: int) -> np.ndarray:
    base = np.array(SETTING_COLOURS[setting], dtype=np.float32)
    if setting == "night sky":                     # a little lighter towards the horizon, and stars
        y = np.linspace(-0.5, 0.5, HEIGHT, dtype=np.float32)[:, None, None]
        sky = base + y * np.array([10, 12, 26], dtype=np.float32)
        return sky + texture[..., None] * (np.array([235, 235, 220], dtype=np.float32) - sky)
    if setting == "grass":
        return base + texture[..., None] * np.array([18, 34, 14], dtype=np.float32)
    if setting == "sand":
        return base + texture[..., None] * np.array([14, 13, 11], dtype=np.float32)
    if setting == "ocean":                         # wave bands drifting down-left, one cycle in 2 s
        y = np.arange(HEIGHT, dtype=np.float32)[:, None]
        x = np.arange(WIDTH, dtype=np.float32)[None, :]
        waves = np.sin(y / 5.0 + x / 40.0 - 2 * np.pi * frame / (2 * FPS))
        shade = 0.8 * waves + 0.2 * texture
        return base + shade[..., None] * np.array([10, 22, 30], dtype=np.float32)
    return base - texture[..., None] * np.array([60, 48, 22], dtype=np.float32)
