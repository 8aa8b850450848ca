"""Blends and transitions: conditioning made from several prompts, and conditioning that moves.

A `Blend` is a weighted list of prompts. Its conditioning is the weighted mean of the
prompts' text embeddings, in embedding space (the encoder's output, [1, text_len, text_dim],
pad rows zero): weights are normalised to sum to 1, so `{a: 3, b: 1}` is `0.75 a + 0.25 b`.
A blend of one prompt is that prompt, bit for bit.

A `TransitionSpec` moves the conditioning from where it is to a new one over N blocks. Block
k of N (k = 1..N) is generated under `interpolate(source, target, k / N, method)`:

- `linear`: `(1 - t) source + t target`, element by element;
- `slerp`: spherical interpolation of the whole embedding seen as one vector (every token
  row together), `sin((1-t)θ)/sin θ · source + sin(tθ)/sin θ · target` with θ the angle
  between them; for nearly parallel embeddings (|cos θ| > 1 - `PARALLEL_EPS`: slerp and linear agree
  there, and sin θ would divide by ~0), or a zero one, it falls back to linear.

Blocks 1..N-1 change only the cross-attention conditioning: the KV window keeps the keys
and values each frame was generated with. Block N, which reaches the target, is an ordinary
prompt switch: the window's recent frames are re-cached under the target, exactly as a cut
to it would be (see `generator._recache`). So a transition ends in the same state
structure as a cut, and what follows it behaves like any prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from .errors import UserError

if TYPE_CHECKING:       # torch is imported where tensors are made: the protocol uses these types without it
    import torch

METHODS = ("linear", "slerp")
PARALLEL_EPS = 1e-4        # cos θ above 1 - this: slerp falls back to linear
MAX_PARTS = 8              # prompts in one blend
MAX_TRANSITION_BLOCKS = 64


class BlendError(UserError, ValueError):
    """A blend or transition that cannot be used; one sentence."""


@dataclass(frozen=True)
class Blend:
    """Prompts with weights normalised to sum to 1 (construct with `Blend.of`)."""

    parts: tuple[tuple[str, float], ...]

    @classmethod
    def of(cls, prompts: str | Iterable[tuple[str, float]]) -> "Blend":
        """One prompt (a string) or (text, weight) pairs; weights >= 0, not all 0."""
        if isinstance(prompts, str):
            return cls(((prompts, 1.0),))
        items = [(str(t), float(w)) for t, w in prompts]
        if not items:
            raise BlendError("a blend needs at least one prompt")
        if len(items) > MAX_PARTS:
            raise BlendError(f"a blend has at most {MAX_PARTS} prompts, not {len(items)}")
        if any(not math.isfinite(w) or w < 0 for _, w in items):
            raise BlendError("blend weights must be finite and not negative")
        total = sum(w for _, w in items)
        if total <= 0:
            raise BlendError("blend weights add up to 0; give at least one prompt a weight above 0")
        merged: dict[str, float] = {}
        for t, w in items:                 # the same text twice is one prompt with both weights
            merged[t] = merged.get(t, 0.0) + w
        return cls(tuple((t, w / total) for t, w in merged.items() if w > 0))

    @property
    def single(self) -> str | None:
        """The prompt when the blend is one prompt, else None."""
        return self.parts[0][0] if len(self.parts) == 1 else None

    @property
    def label(self) -> str:
        """How the blend reads in the state and logs: the prompt, or `a (70%) + b (30%)`."""
        if self.single is not None:
            return self.single
        return " + ".join(f"{t} ({w:.0%})" for t, w in self.parts)

    def embed(self, encode: Callable[[str], torch.Tensor]) -> torch.Tensor:
        """The blend's conditioning: the weighted mean of `encode(text)` (each cached by the encoder)."""
        if self.single is not None:
            return encode(self.single)
        out: torch.Tensor | None = None
        for text, w in self.parts:
            e = encode(text).float() * w
            out = e if out is None else out + e
        assert out is not None
        return out


@dataclass(frozen=True)
class TransitionSpec:
    blocks: int
    method: str = "linear"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BlendError(f"transition method must be linear or slerp, not {self.method!r}")
        if not 0 <= self.blocks <= MAX_TRANSITION_BLOCKS:
            raise BlendError(f"a transition lasts 0 to {MAX_TRANSITION_BLOCKS} blocks, not {self.blocks}")


@dataclass(frozen=True)
class Glide:
    """A transition under way: block `step + 1` of `spec.blocks` comes next."""

    label: str
    source: torch.Tensor
    target: torch.Tensor
    spec: TransitionSpec
    step: int = 0

    def advance(self) -> tuple["Glide", torch.Tensor, bool]:
        """The next block's conditioning: (the glide after it, its embedding, whether it is the last)."""
        step = self.step + 1
        last = step >= self.spec.blocks
        emb = self.target if last else interpolate(self.source, self.target, step / self.spec.blocks,
                                                   self.spec.method)
        return Glide(self.label, self.source, self.target, self.spec, step), emb, last


def interpolate(source: torch.Tensor, target: torch.Tensor, t: float, method: str = "linear") -> torch.Tensor:
    """Conditioning a fraction `t` of the way from `source` to `target` (see the module doc)."""
    import torch

    if method not in METHODS:
        raise BlendError(f"transition method must be linear or slerp, not {method!r}")
    a, b = source.float(), target.to(source.device).float()
    if method == "slerp":
        a64, b64 = a.double().flatten(), b.double().flatten()
        na, nb = a64.norm(), b64.norm()
        if na > 0 and nb > 0:
            cos = float(torch.dot(a64, b64) / (na * nb))
            if abs(cos) <= 1 - PARALLEL_EPS:
                theta = math.acos(max(-1.0, cos))
                s = math.sin(theta)
                return (a64 * (math.sin((1 - t) * theta) / s) + b64 * (math.sin(t * theta) / s)) \
                    .reshape(a.shape).to(a.dtype)
    return a * (1 - t) + b * t
