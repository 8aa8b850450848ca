"""The KV window against a literal, token-level transcription of the official cache:
clone per call, shift copies on eviction, concatenated key selection."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import kernels
from streaming.kv_window import KVWindow


class OfficialCache:
    """The official LongLive v1 semantics, token by token, as simply as possible."""

    def __init__(self, capacity_tokens: int, sink_tokens: int, heads: int, dim: int):
        self.K, self.S = capacity_tokens, sink_tokens
        self.k = torch.zeros(capacity_tokens, heads, dim, dtype=torch.float64)
        self.v = torch.zeros_like(self.k)
        self.g = self.l = 0

    def call(self, q, k, v, start, sink_recache=False):
        K, S, g, l = self.K, self.S, self.g, self.l
        n = k.shape[0]
        end = start + n
        recompute = end <= g and start > 0
        kc, vc = self.k.clone(), self.v.clone()
        if end > g and n + l > K:
            e = n + l - K
            r = l - e - S
            kc[S:S + r] = kc[S + e:S + e + r].clone()
            vc[S:S + r] = vc[S + e:S + e + r].clone()
            le = l + end - g - e
        else:
            le = l + end - g
        ls = le - n
        ws = max(ls, S) if recompute else ls
        if sink_recache:
            ws = ls
        kc[ws:le], vc[ws:le] = k[ws - ls:], v[ws - ls:]
        if S > 0:
            keys = torch.cat([kc[:S], kc[max(S, le - (K - S)):le]])
            vals = torch.cat([vc[:S], vc[max(S, le - (K - S)):le]])
        else:
            keys, vals = kc[max(0, le - K):le], vc[max(0, le - K):le]
        att = torch.softmax(torch.einsum("qhd,khd->hqk", q, keys) / q.shape[-1] ** 0.5, dim=-1)
        out = torch.einsum("hqk,khd->qhd", att, vals)
        self.k, self.v = kc, vc
        if not recompute:
            self.g, self.l = end, le
        return out


def _drive(capacity, sink, block, frame_len, ops, seed):
    """Run the same calls through both caches; return the largest output difference."""
    heads, dim = 2, 4
    torch.manual_seed(seed)
    ours = KVWindow(num_layers=1, capacity=capacity, sink=sink, frame_len=frame_len, num_heads=heads,
                    head_dim=dim, dtype=torch.float64)
    ref = OfficialCache(capacity * frame_len, sink * frame_len, heads, dim)
    worst, frame = 0.0, 0

    def call(start, frames, rewrite_sink=False):
        n = frames * frame_len
        q, k, v = (torch.randn(n, heads, dim, dtype=torch.float64) for _ in range(3))
        expected = ref.call(q, k, v, start * frame_len, sink_recache=rewrite_sink)
        plan = ours.plan(start, frames, rewrite_sink)
        ours.write(0, plan, k[None], v[None])
        keys, vals = ours.view(0, plan)
        got = kernels.reference.attention(q[None], keys, vals)[0]
        ours.commit(plan)
        assert (ours.end, ours.filled) == (ref.g // frame_len, ref.l // frame_len)
        return (got - expected).abs().max().item()

    for op in ops:
        if op == "block":
            for step in range(3):  # first call appends, later ones recompute in place
                worst = max(worst, call(frame, block))
            worst = max(worst, call(frame, block))  # context pass
            frame += block
        elif frame > 0:  # a prompt switch: re-cache the newest frames
            n = min(capacity, frame)
            worst = max(worst, call(frame - n, n, rewrite_sink=(op == "recache_sink")))
    return worst


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(2, 12), sink=st.integers(0, 4), block=st.integers(1, 4), frame_len=st.integers(1, 3),
    ops=st.lists(st.sampled_from(["block", "block", "block", "recache", "recache_sink"]), min_size=1, max_size=14),
    seed=st.integers(0, 2**16),
)
def test_window_matches_official_cache(capacity, sink, block, frame_len, ops, seed):
    assume(sink < capacity and capacity - sink >= block)   # a valid window (the config rejects others)
    assert _drive(capacity, sink, block, frame_len, ops, seed) < 1e-9


def test_longlive_shape_many_blocks_and_switches():
    """LongLive's own window (12 frames, sink 3, blocks of 3) over 40 blocks with switches,
    including one before the window is full."""
    ops = ["block", "block", "recache"] + (["block"] * 6 + ["recache"]) * 5 + ["block"] * 4 + ["recache_sink", "block"]
    assert _drive(12, 3, 3, 2, ops, seed=7) < 1e-9


def test_eviction_turns_the_ring_without_moving_data():
    w = KVWindow(num_layers=1, capacity=5, sink=1, frame_len=1, num_heads=1, head_dim=1)
    for start in range(0, 10, 2):
        plan = w.plan(start, 2)
        w.write(0, plan, torch.full((1, 2, 1, 1), float(start)), torch.zeros(1, 2, 1, 1))
        w.commit(plan)
    # sink slot keeps frame 0; the ring holds the newest four frames in some slot order
    assert w.k[0][0, 0].item() == 0.0
    assert sorted(w.k[0][0, 1:, 0, 0].tolist()) == [6.0, 6.0, 8.0, 8.0]
    assert (w.end, w.filled) == (10, 5)


@pytest.mark.parametrize("start,frames,msg", [(5, 2, "continue the stream"), (1, 2, "must end at the newest"),
                                              (0, 9, "does not fit")])
def test_bad_calls_are_refused(start, frames, msg):
    w = KVWindow(num_layers=1, capacity=6, sink=2, frame_len=1, num_heads=1, head_dim=1)
    w.commit(w.plan(0, 4))
    with pytest.raises(ValueError, match=msg):
        w.plan(start, frames)
