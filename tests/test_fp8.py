"""The FP8 linear path: its CPU twin (emulated e4m3) and, on a Hopper GPU, _scaled_mm."""

from __future__ import annotations

import pytest
import torch

from streaming import StreamingGenerator, build_dit, load_config
from streaming import fp8 as fp8_mod
from streaming.fp8 import (FP8_MAX, Fp8Linear, convert_blocks_to_fp8, emulated_linear, fp8_matmul_available,
                           quantize_rows, scaled_linear, scaled_mm_works)

CPU_SCALED_MM = scaled_mm_works("cpu")   # torch 2.13 runs row-wise _scaled_mm on the CPU (2.11 does not)


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
@pytest.mark.skipif(not torch.cuda.is_available() or not fp8_matmul_available(torch.device("cuda")),
                    reason="needs an FP8-capable NVIDIA GPU")
def test_scaled_mm_matches_the_emulation():
    lin = torch.nn.Linear(1536, 1536).cuda().to(torch.bfloat16)
    f = Fp8Linear.from_linear(lin)
    x = torch.randn(4680, 1536, device="cuda", dtype=torch.bfloat16)
    aq, s = quantize_rows(x)
    emulated = ((aq.float() * s) @ (f.weight_q.float() * f.weight_scale).t() + f.bias.float())
    torch.testing.assert_close(f(x).float(), emulated, atol=2e-2, rtol=2e-2)


def test_cpu_linear_never_claims_fp8_tensor_cores():
    assert not fp8_matmul_available(torch.device("cpu"))
    f = Fp8Linear.from_linear(torch.nn.Linear(64, 32))
    f(torch.randn(5, 64))
    assert f.use_scaled_mm is False


@pytest.mark.skipif(not CPU_SCALED_MM, reason="this torch has no CPU _scaled_mm with row-wise scales")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_the_scaled_mm_call_computes_the_emulated_product(bias):
    """The exact call the GPU path makes (operand layouts, scale shapes, bias), run by torch's
    CPU _scaled_mm, against the float32 emulation; at LongLive's widths and an odd row count."""
    lin = torch.nn.Linear(1536, 8960 // 4, bias=bias).to(torch.bfloat16)
    f = Fp8Linear.from_linear(lin)
    x = torch.randn(2, 117, 1536, dtype=torch.bfloat16) * torch.logspace(-1, 1, 117)[None, :, None]
    f.use_scaled_mm = True
    fast = f(x)
    f.use_scaled_mm = False
    slow = f(x)
    assert fast.shape == slow.shape == (2, 117, lin.out_features) and fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), slow.float(), atol=3e-2, rtol=2e-2)


@pytest.mark.skipif(not CPU_SCALED_MM, reason="this torch has no CPU _scaled_mm with row-wise scales")
def test_probe_refuses_a_scaled_mm_that_fails_or_disagrees(monkeypatch):
    def raises(*a, **k):
        raise RuntimeError("Only sm_90 is supported for rowwise scaling\nmore")

    def off_by_a_scale(aq, a_scale, wq, w_scale, bias, out_dtype):   # e.g. a scale applied twice
        return emulated_linear(aq, a_scale, wq, w_scale, bias, out_dtype) * 1.5

    for broken in (raises, off_by_a_scale):
        scaled_mm_works.cache_clear()
        monkeypatch.setattr(fp8_mod, "scaled_linear", broken)
        assert not scaled_mm_works("cpu"), broken.__name__
    monkeypatch.setattr(fp8_mod, "scaled_linear", scaled_linear)
    scaled_mm_works.cache_clear()
    assert scaled_mm_works("cpu")
