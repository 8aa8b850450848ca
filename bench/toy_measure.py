"""What a toy-world frame shows, measured from its pixels alone: the setting, and the object's
colour, shape and place. The evaluator of the trained default (issue 21) runs this on generated
frames; on the world's own frames it reads back what the scene says.

The method, frame by frame:
1. The setting's colour is the median of the frame (the object covers at most a twentieth of it);
   the setting is the nearest of the world's five setting colours.
2. Object pixels are far from the setting's colour: further in some channel than twice the
   frame's 90th percentile of that distance (the setting's own texture), and at least 40.
3. Holes are filled (what the border cannot reach through non-object pixels is inside: an
   object the colour of its setting still has its outline), then an opening (a 3x3 erosion and
   dilation) removes specks: stars, speckles, single pixels of texture.
4. Its colour is the mean of its interior (the mask eroded twice more, clear of the outline):
   white or black when it has little chroma, else the world colour of the nearest hue.
5. Its place is the circular mean of its pixels on the frame's torus (the world wraps objects
   round the edges, so an object split across an edge is still one place); steps 3 and 4 work on
   the frame rolled so that the object's first estimate of that place is at the centre. Its fill
   ratio is its area over its bounding box: a ball ~0.79, a square ~1, a triangle ~0.5, classed
   at 0.65 and 0.9.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from training.world import COLOURS, SETTING_COLOURS

CHROMATIC = {name: rgb for name, rgb in COLOURS.items() if name not in ("white", "black")}
FILL_CLASSES = ((0.65, "triangle"), (0.9, "ball"), (np.inf, "square"))   # upper bound of each class


@dataclass(frozen=True)
class Seen:
    setting: str
    found: bool
    colour: str | None = None
    shape: str | None = None
    fill: float | None = None
    x: float | None = None           # the object's centre, pixels
    y: float | None = None
    area: int = 0


def measure(frame: np.ndarray) -> Seen:
    """What `frame` ([H, W, 3] uint8 RGB) shows."""
    setting, rgb, mask, shift = _find(frame)
    area = int(mask.sum())
    if area < 20:
        return Seen(setting, False)
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    fill = area / float((np.ptp(xs) + 1) * (np.ptp(ys) + 1))
    shape = next(name for bound, name in FILL_CLASSES if fill < bound)
    x, y = (_circular_mean(mask, 1) - shift[1]) % w, (_circular_mean(mask, 0) - shift[0]) % h
    return Seen(setting, True, colour_name(_interior(rgb, mask).mean(0)), shape, fill, x, y, area)


@dataclass(frozen=True)
class Quality:
    """How crisp the object is: its area (pixels), the saturation of its interior (HLS, 0-1)
    and its edge contrast (the mean luminance gradient on its boundary, levels a pixel)."""
    found: bool
    area: int = 0
    saturation: float = 0.0
    edge: float = 0.0


def quality(frame: np.ndarray) -> Quality:
    """The object's `Quality` in `frame` (found as `measure` finds it)."""
    _, rgb, mask, _ = _find(frame)
    area = int(mask.sum())
    if area < 20:
        return Quality(False)
    r, g, b = (_interior(rgb, mask).mean(0) / 255.0).tolist()
    saturation = colorsys.rgb_to_hls(r, g, b)[2]
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gy = np.abs(np.roll(luma, -1, 0) - np.roll(luma, 1, 0)) / 2
    gx = np.abs(np.roll(luma, -1, 1) - np.roll(luma, 1, 1)) / 2
    boundary = _dilate(mask) & ~_erode(mask)
    return Quality(True, area, float(saturation), float(np.hypot(gx, gy)[boundary].mean()))


def _find(frame: np.ndarray) -> tuple[str, np.ndarray, np.ndarray, tuple[int, int]]:
    """(setting, the frame rolled so the object is central, its mask there, the roll)."""
    rgb = frame.astype(np.float32)
    h, w = rgb.shape[:2]
    background = np.median(rgb.reshape(-1, 3), axis=0)
    setting = min(SETTING_COLOURS, key=lambda s: np.abs(background - SETTING_COLOURS[s]).max())
    distance = np.abs(rgb - background).max(-1)
    mask = distance > max(40.0, 2.0 * float(np.percentile(distance, 90)))
    if mask.sum() < 20:
        return setting, rgb, np.zeros_like(mask), (0, 0)
    # the object moved to the centre first (specks spread evenly barely move a circular mean), so
    # that one split across an edge is whole when its holes are filled and its box is taken
    shift = (int(round(h / 2 - _circular_mean(mask, 0))), int(round(w / 2 - _circular_mean(mask, 1))))
    mask = _open(_fill_holes(np.roll(mask, shift, axis=(0, 1))))
    return setting, np.roll(rgb, shift, axis=(0, 1)), mask, shift


def _interior(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The object's pixels clear of its outline (the mask eroded twice), or all of them when few."""
    interior = _erode(_erode(mask))
    return rgb[interior if interior.sum() >= 4 else mask]


def colour_name(rgb: np.ndarray) -> str:
    """The world's colour a mean RGB is: white or black when it has little chroma, else the nearest hue."""
    r, g, b = (float(c) / 255.0 for c in rgb)
    hue, lightness, saturation = colorsys.rgb_to_hls(r, g, b)
    if max(r, g, b) - min(r, g, b) < 0.2:
        return "white" if lightness > 0.5 else "black"

    def gap(name: str) -> float:
        other = colorsys.rgb_to_hls(*(c / 255.0 for c in CHROMATIC[name]))[0]
        d = abs(hue - other) % 1.0
        return min(d, 1.0 - d)
    return min(CHROMATIC, key=gap)


# -- masks -------------------------------------------------------------------------------------------------
def _neighbours(mask: np.ndarray, combine) -> np.ndarray:
    padded = np.pad(mask, 1, mode="wrap")          # the world is a torus
    out = mask.copy()
    h, w = mask.shape
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out = combine(out, padded[dy:dy + h, dx:dx + w])
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    return _neighbours(mask, np.logical_and)


def _dilate(mask: np.ndarray) -> np.ndarray:
    return _neighbours(mask, np.logical_or)


def _open(mask: np.ndarray) -> np.ndarray:
    return _dilate(_erode(mask))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """`mask` with every region the frame's border cannot reach through non-mask pixels filled."""
    free = ~mask
    outside = np.zeros_like(mask)
    outside[0, :], outside[-1, :], outside[:, 0], outside[:, -1] = free[0, :], free[-1, :], free[:, 0], free[:, -1]
    while True:
        grown = _dilate(outside) & free
        if np.array_equal(grown, outside):
            return ~outside
        outside = grown


def _circular_mean(mask: np.ndarray, axis: int) -> float:
    """The mean position along `axis` (1: x, 0: y) of the mask's pixels on a circle of the frame's size."""
    size = mask.shape[axis]
    coords = np.nonzero(mask)[0 if axis == 0 else 1].astype(np.float64) + 0.5
    angle = np.arctan2(np.sin(2 * np.pi * coords / size).mean(), np.cos(2 * np.pi * coords / size).mean())
    return float((angle % (2 * np.pi)) * size / (2 * np.pi) - 0.5)
