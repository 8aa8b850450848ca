"""The self-attention KV window: a sink of frames kept for ever plus a rolling region.

Semantics are those of the official LongLive v1 cache, counted in latent frames instead of
tokens (every call covers whole frames):

- `end` (g) is the number of frames the stream has written, `filled` (l) the number of
  logical positions in use (at most `capacity` K). Positions [0, S) are the sink.
- A call appending frames [g, g+n) evicts e = n + l - K of the oldest rolling frames when
  the window would overflow (the official code shifts the rolling region left by e), then
  writes the n frames at logical [le-n, le). It advances g and l.
- A call at frames already written (end <= g: the denoising steps after the first, the
  context pass, a prompt re-cache) is a recompute: it writes in place and advances
  nothing. When it starts after frame 0 the sink is protected (its frames are dropped),
  unless `rewrite_sink` is asked for (the re-cache of `global_sink: false`).
- Attention covers logical positions [0, le): the call's own frames included; and always
  the whole sink, even before it is written (those slots hold zeros, as in the official
  zero-initialised cache; it matters only when a sink is larger than the first call).

Storage is preallocated once: per layer K and V of [B, K*frame_len, H, D]. The rolling
region is a ring: eviction moves an offset instead of copying, so no forward clones, shifts
or concatenates anything. Keys are stored after RoPE at absolute positions, which makes the
order of slots irrelevant to attention; and because the ring only turns once the window is
full, the slots attended are always the physical prefix [0, le*frame_len): a plain view.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WindowPlan:
    """Where one forward call writes and what it attends. Computed once, used by every layer."""

    start: int                                  # first frame of the call (absolute)
    frames: int                                 # frames in the call
    writes: tuple[tuple[int, int, int], ...]    # (physical slot, source frame offset, count), in frames
    attend_frames: int                          # attention over physical slots [0, attend_frames)
    new_end: int
    new_filled: int
    new_offset: int


@dataclass
class WindowSnapshot:
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    end: int
    filled: int
    offset: int


class KVWindow:
    def __init__(self, num_layers: int, capacity: int, sink: int, frame_len: int, num_heads: int,
                 head_dim: int, batch: int = 1, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        if not 0 <= sink < capacity:
            raise ValueError(f"sink ({sink}) must be in [0, capacity={capacity})")
        self.num_layers, self.capacity, self.sink, self.frame_len = num_layers, capacity, sink, frame_len
        self.ring = capacity - sink
        shape = (batch, capacity * frame_len, num_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.end = 0
        self.filled = 0
        self.offset = 0

    # -- bookkeeping ---------------------------------------------------------
    def reset(self) -> None:
        """Forget everything (a new stream). The storage stays allocated; only the sink
        slots are cleared, since they are the only ones attended before being written."""
        self._clear_sink()
        self.end = self.filled = self.offset = 0

    def _clear_sink(self) -> None:
        n = self.sink * self.frame_len
        for t in self.k + self.v:
            t[:, :n].zero_()

    def _physical(self, logical: int, offset: int) -> int:
        if logical < self.sink:
            return logical
        return self.sink + (logical - self.sink + offset) % self.ring

    def plan(self, start: int, frames: int, rewrite_sink: bool = False) -> WindowPlan:
        g, l, cap, s = self.end, self.filled, self.capacity, self.sink
        stop = start + frames
        if frames <= 0 or start < 0:
            raise ValueError(f"a window call needs frames > 0 at start >= 0 (got start={start}, frames={frames})")
        if frames > cap:
            raise ValueError(f"a call of {frames} frames does not fit a window of {cap}")
        if stop <= g:
            if stop != g:
                raise ValueError(f"a recompute must end at the newest frame {g}, not {stop}")
            if frames > l:
                raise ValueError(f"frames {start}..{stop - 1} are no longer all in the window (it holds {l})")
            recompute, evict, le = start > 0, 0, l
        elif start == g:
            recompute = False
            evict = max(0, frames + l - cap)
            le = l + frames - evict
        else:
            raise ValueError(f"frames must continue the stream at frame {g}, not start at {start}")
        ls = le - frames
        ws = max(ls, s) if (recompute and not rewrite_sink) else ls
        new_offset = (self.offset + evict) % self.ring if self.ring else 0
        writes: list[tuple[int, int, int]] = []
        pos = ws
        while pos < le:  # split the logical range where the sink ends and where the ring wraps
            phys = self._physical(pos, new_offset)
            if pos < s:
                run = min(le, s) - pos
            else:
                run = min(le - pos, self.sink + self.ring - phys)
            writes.append((phys, pos - ls, run))
            pos += run
        return WindowPlan(start, frames, tuple(writes), max(le, s),
                          g if recompute or stop <= g else stop,
                          l if recompute else le, new_offset)

    def commit(self, plan: WindowPlan) -> None:
        """Advance the indices after every layer of the call has written."""
        self.end, self.filled, self.offset = plan.new_end, plan.new_filled, plan.new_offset

    # -- per-layer work ------------------------------------------------------
    def write(self, layer: int, plan: WindowPlan, k: torch.Tensor, v: torch.Tensor) -> None:
        """Copy this call's keys and values ([B, frames*frame_len, H, D]) into their slots."""
        fl = self.frame_len
        kc, vc = self.k[layer], self.v[layer]
        for slot, src, count in plan.writes:
            kc[:, slot * fl:(slot + count) * fl].copy_(k[:, src * fl:(src + count) * fl])
            vc[:, slot * fl:(slot + count) * fl].copy_(v[:, src * fl:(src + count) * fl])

    def view(self, layer: int, plan: WindowPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values this call attends: views of the physical prefix, no copy."""
        n = plan.attend_frames * self.frame_len
        return self.k[layer][:, :n], self.v[layer][:, :n]

    # -- snapshot ------------------------------------------------------------
    def snapshot(self, device: torch.device | str | None = None) -> WindowSnapshot:
        n = self.filled * self.frame_len  # only filled slots matter
        dev = device if device is not None else self.k[0].device
        return WindowSnapshot([t[:, :n].to(dev, copy=True) for t in self.k],
                              [t[:, :n].to(dev, copy=True) for t in self.v],
                              self.end, self.filled, self.offset)

    def restore(self, snap: WindowSnapshot) -> None:
        self._clear_sink()
        n = snap.filled * self.frame_len
        for dst, src in zip(self.k + self.v, snap.k + snap.v):
            dst[:, :n].copy_(src)
        self.end, self.filled, self.offset = snap.end, snap.filled, snap.offset
