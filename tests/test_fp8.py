"""The FP8 linear path: its CPU twin (emulated e4m3) and, on a Hopper GPU, _scaled_mm."""

from __future__ import annotations

import pytest
import torch

from streaming import StreamingGenerator, build_dit, load_config
from streaming.fp8 import FP8_MAX, Fp8Linear, convert_blocks_to_fp8, hopper_fp8_available, quantize_rows


def test_row_quantisation_round_trip():
    x = torch.randn(64, 128) * torch.logspace(-3, 3, 64)[:, None]
    q, s = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (64, 1)
    assert (q.float().abs().amax(dim=1) <= FP8_MAX).all()
    rel = ((q.float() * s - x).abs() / x.abs().amax(dim=1, keepdim=True)).max()
    assert rel < 2 ** -4  # e4m3 keeps 3 mantissa bits: relative error <= 1/16 of the row's range


def test_fp8_linear_is_close_to_the_linear_it_replaces():
    lin = torch.nn.Linear(256, 96)
    x = torch.randn(3, 40, 256)
    f = Fp8Linear.from_linear(lin)
    exact, approx = lin(x), f(x)
    assert approx.shape == exact.shape
    err = (approx - exact).norm() / exact.norm()
    assert err < 0.05, err


def test_converted_dit_still_generates_close_latents():
    cfg = load_config("tiny").replace(video={"height": 64, "width": 64}, model={"dim": 64, "ffn_dim": 128})
    ref = build_dit(cfg)
    fp8 = build_dit(cfg)
    n = convert_blocks_to_fp8(fp8)
    assert n == 10 * cfg.model.num_layers
    emb = torch.randn(1, cfg.model.text_len, cfg.model.text_dim)
    outs = []
    for model in (ref, fp8):
        g = StreamingGenerator(model, cfg)
        g.reset(emb, seed=1)
        outs.append(g.next_block())
    err = (outs[0] - outs[1]).norm() / outs[0].norm()
    assert err < 0.1, err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not hopper_fp8_available(torch.device("cuda")),
                    reason="needs an FP8-capable NVIDIA GPU")
def test_scaled_mm_matches_the_emulation():
    lin = torch.nn.Linear(1536, 1536).cuda().to(torch.bfloat16)
    f = Fp8Linear.from_linear(lin)
    x = torch.randn(4680, 1536, device="cuda", dtype=torch.bfloat16)
    aq, s = quantize_rows(x)
    emulated = ((aq.float() * s) @ (f.weight_q.float() * f.weight_scale).t() + f.bias.float())
    torch.testing.assert_close(f(x).float(), emulated, atol=2e-2, rtol=2e-2)
