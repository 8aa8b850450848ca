"""The toy world's captions: many ways to say one scene, and the words they use.

A caption always names the object's colour and shape and the setting; it names the size and
the motion unless they are the world's defaults (big, still), which it may leave out, so what a
caption leaves unsaid is decided too. Word order, articles, synonyms and filler vary ("a red
ball rolling to the left over green grass", "Blue triangle. Night sky. It drifts upward.");
setting phrases may carry colour words of their own ("green grass", "white snow"), so a model
learns colour from where a word stands, not from the word alone. Some captions carry words no
vocabulary has (made-up words), which the tokenizer reads as unknown: the model learns that
they change nothing.

`words()` lists every word the grammar uses: the tokenizer's vocabulary, and what the README
lists as the words the default knows.
"""

from __future__ import annotations

import re

import numpy as np

from .world import COLOURS, MOTIONS, SETTINGS, SHAPES, SIZES, Scene

DEFAULT_SIZE, DEFAULT_MOTION = "big", "still"

SHAPE_WORDS = {"ball": ("ball", "circle", "disc", "sphere", "dot"),
               "square": ("square", "box", "block", "cube"),
               "triangle": ("triangle", "pyramid", "wedge")}
SIZE_WORDS = {"small": ("small", "tiny", "little"), "big": ("big", "large", "huge")}
# how the motion follows the object ("a red ball ___"), and as a sentence's verb ("It ___.")
MOTION_PHRASES = {
    "left": ("moving left", "rolling to the left", "drifting left", "heading left", "sliding to the left",
             "going leftward"),
    "right": ("moving right", "rolling to the right", "drifting right", "heading right", "sliding to the right",
              "going rightward"),
    "up": ("moving up", "rising", "floating upward", "drifting up", "climbing", "going up"),
    "down": ("moving down", "falling", "sinking", "dropping", "drifting down", "going down"),
    "still": ("standing still", "not moving", "resting", "motionless", "at rest", "staying put"),
    "bouncing": ("bouncing", "hopping", "bouncing up and down", "jumping in place"),
}
MOTION_VERBS = {
    "left": ("moves left", "rolls to the left", "drifts left", "heads left", "slides leftward"),
    "right": ("moves right", "rolls to the right", "drifts right", "heads right", "slides rightward"),
    "up": ("moves up", "rises", "drifts upward", "floats up", "climbs"),
    "down": ("moves down", "falls", "sinks", "drops", "drifts downward"),
    "still": ("stays still", "does not move", "rests", "stays put"),
    "bouncing": ("bounces", "hops", "bounces up and down", "jumps in place"),
}
SETTING_PHRASES = {
    "night sky": ("the night sky", "a night sky", "a starry sky", "the dark night sky", "the stars at night"),
    "grass": ("grass", "green grass", "a meadow", "a lawn", "a grassy field"),
    "sand": ("sand", "a sandy beach", "the desert", "sand dunes", "beige sand"),
    "ocean": ("the ocean", "the sea", "ocean waves", "blue water", "the deep blue ocean"),
    "snow": ("snow", "a snowy field", "white snow", "fresh snow", "a snowfield"),
}
PREPOSITIONS = ("over", "on", "above", "across", "against", "in front of")
ARTICLES = ("a", "one", "the")
OPENINGS = ("", "", "", "a video of", "a shot of", "we see", "look:", "there is", "a scene with")
# made-up syllables for words no vocabulary has
_SYLLABLES = ("bl", "zu", "qo", "rv", "ix", "pla", "morn", "gr", "ef", "tz", "vu", "kw")


def caption(scene: Scene, rng: np.random.Generator, unknown_words: float = 0.15) -> str:
    """One way to say `scene`, drawn with `rng`; `unknown_words`: the chance it carries a made-up word."""
    pick = lambda options: options[int(rng.integers(len(options)))]   # noqa: E731
    colour, shape = scene.colour, pick(SHAPE_WORDS[scene.shape])
    say_size = scene.size != DEFAULT_SIZE or rng.random() < 0.5
    size = pick(SIZE_WORDS[scene.size]) + " " if say_size else ""
    say_motion = scene.motion != DEFAULT_MOTION or rng.random() < 0.7
    setting = pick(SETTING_PHRASES[scene.setting])
    article = pick(ARTICLES)
    form = int(rng.integers(4))
    if form == 0:      # a red ball rolling to the left over green grass
        motion = " " + pick(MOTION_PHRASES[scene.motion]) if say_motion else ""
        text = f"{article} {size}{colour} {shape}{motion} {pick(PREPOSITIONS)} {setting}"
    elif form == 1:    # Blue triangle. Night sky. It drifts upward.
        verb = f" It {pick(MOTION_VERBS[scene.motion])}." if say_motion else ""
        text = f"{size}{colour} {shape}. {_bare(setting)}.{verb}"
    elif form == 2:    # the ocean, a small yellow square falling
        motion = " " + pick(MOTION_PHRASES[scene.motion]) if say_motion else ""
        text = f"{setting}, {article} {size}{colour} {shape}{motion}"
    else:              # over sand: a big purple box, sinking
        motion = ", " + pick(MOTION_PHRASES[scene.motion]) if say_motion else ""
        text = f"{pick(PREPOSITIONS)} {setting}: {article} {size}{colour} {shape}{motion}"
    opening = pick(OPENINGS)
    text = f"{opening} {text}" if opening and form in (0, 2) else text
    if rng.random() < unknown_words:     # before or after what is said, never inside a phrase
        text = f"{made_up_word(rng)} {text}" if rng.random() < 0.5 else f"{text} {made_up_word(rng)}"
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


def made_up_word(rng: np.random.Generator) -> str:
    """A word of two or three made-up syllables (never one of `words()`)."""
    n = int(rng.integers(2, 4))
    return "".join(_SYLLABLES[int(i)] for i in rng.integers(len(_SYLLABLES), size=n))


def _bare(phrase: str) -> str:
    """A setting phrase without its article ("the night sky" -> "night sky")."""
    return re.sub(r"^(the|a|an) ", "", phrase)


def words() -> list[str]:
    """Every word the captions use, lowercased, sorted (punctuation apart)."""
    phrases = [*COLOURS, *(w for ws in SHAPE_WORDS.values() for w in ws),
               *(w for ws in SIZE_WORDS.values() for w in ws),
               *(p for ps in MOTION_PHRASES.values() for p in ps), *(p for ps in MOTION_VERBS.values() for p in ps),
               *(p for ps in SETTING_PHRASES.values() for p in ps), *PREPOSITIONS, *ARTICLES, *OPENINGS, "it"]
    return sorted({w for p in phrases for w in re.findall(r"[a-z]+", p.lower())})


def all_scenes() -> list[Scene]:
    """Every scene the world has, in a fixed order."""
    return [Scene(c, s, m, st, z) for c in COLOURS for s in SHAPES for m in MOTIONS for st in SETTINGS
            for z in SIZES]
