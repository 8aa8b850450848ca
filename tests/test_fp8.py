"""The FP8 linear path: one kernel (`kernels.fp8_linear`) behind the common dispatch, its
reference (emulated e4m3 in float32) and its fast twin (`torch._scaled_mm`, row-wise scales)."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import dispatch, fp8_scaled_mm, reference
from kernels.reference import FP8_MAX, quantize_rows
from streaming import StreamingGenerator, build_dit, load_config
from streaming.fp8 import Fp8Linear, convert_blocks_to_fp8

CPU_SCALED_MM = fp8_scaled_mm.runs_on("cpu")   # torch 2.13 runs row-wise _scaled_mm on the CPU (2.11 does not)


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
    emb = torch.randn(1, cfg.model.text_len, cfg.model.text_dim,
                      generator=torch.Generator().manual_seed(0))   # fixed: an unseeded draw made it flaky (0.104)
    outs = []
    for model in (ref, fp8):
        g = StreamingGenerator(model, cfg)
        g.reset(emb, seed=1)
        outs.append(g.next_block())
    err = (outs[0] - outs[1]).norm() / outs[0].norm()
    assert err < 0.1, err


def test_fp8_goes_through_the_one_dispatch(monkeypatch):
    """CPU tensors take the reference by default; forcing the fast paths takes _scaled_mm where
    this torch runs it, the reference where its probe fails; `torch` always the reference."""
    x = torch.zeros(2, 64)
    monkeypatch.delenv("LONGLIVE_KERNELS", raising=False)
    assert dispatch.pick("fp8_linear", x, "fp8_scaled_mm") is reference.fp8_linear
    monkeypatch.setenv("LONGLIVE_KERNELS", "triton")
    fast = fp8_scaled_mm.fp8_linear if CPU_SCALED_MM else reference.fp8_linear
    assert dispatch.pick("fp8_linear", x, "fp8_scaled_mm") is fast
    monkeypatch.setattr(fp8_scaled_mm, "runs_on", lambda device: False)
    assert dispatch.pick("fp8_linear", x, "fp8_scaled_mm") is reference.fp8_linear
    monkeypatch.setenv("LONGLIVE_KERNELS", "torch")
    assert dispatch.pick("fp8_linear", x, "fp8_scaled_mm") is reference.fp8_linear


def test_cpu_never_claims_fp8_tensor_cores():
    assert not kernels.fp8_tensor_cores(torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not kernels.fp8_tensor_cores(torch.device("cuda")),
                    reason="needs an FP8-capable NVIDIA GPU")
def test_scaled_mm_matches_the_reference_on_the_gpu():
    lin = torch.nn.Linear(1536, 1536).cuda().to(torch.bfloat16)
    f = Fp8Linear.from_linear(lin)
    x = torch.randn(4680, 1536, device="cuda", dtype=torch.bfloat16)
    fast = fp8_scaled_mm.fp8_linear(x, f.weight_q, f.weight_scale, f.bias, torch.bfloat16)
    slow = reference.fp8_linear(x, f.weight_q, f.weight_scale, f.bias, torch.float32)
    torch.testing.assert_close(fast.float(), slow, atol=2e-2, rtol=2e-2)


@pytest.mark.skipif(not CPU_SCALED_MM, reason="this torch has no CPU _scaled_mm with row-wise scales")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_the_scaled_mm_call_computes_the_reference_product(bias):
    """The exact call the GPU path makes (operand layouts, scale shapes, bias), run by torch's
    CPU _scaled_mm, against the float32 reference; at LongLive's widths and an odd row count."""
    lin = torch.nn.Linear(1536, 8960 // 4, bias=bias).to(torch.bfloat16)
    f = Fp8Linear.from_linear(lin)
    x = torch.randn(2, 117, 1536, dtype=torch.bfloat16) * torch.logspace(-1, 1, 117)[None, :, None]
    fast = fp8_scaled_mm.fp8_linear(x, f.weight_q, f.weight_scale, f.bias, torch.bfloat16)
    slow = reference.fp8_linear(x, f.weight_q, f.weight_scale, f.bias, torch.bfloat16)
    assert fast.shape == slow.shape == (2, 117, lin.out_features) and fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), slow.float(), atol=3e-2, rtol=2e-2)


@pytest.mark.skipif(not CPU_SCALED_MM, reason="this torch has no CPU _scaled_mm with row-wise scales")
def test_probe_refuses_a_scaled_mm_that_fails_or_disagrees(monkeypatch):
    real = fp8_scaled_mm.scaled_product

    def raises(*a, **k):
        raise RuntimeError("Only sm_90 is supported for rowwise scaling\nmore")

    def off_by_a_scale(*args):   # e.g. a scale applied twice
        return real(*args) * 1.5

    try:
        for broken in (raises, off_by_a_scale):
            fp8_scaled_mm._probe.cache_clear()
            monkeypatch.setattr(fp8_scaled_mm, "scaled_product", broken)
            assert not fp8_scaled_mm.runs_on("cpu"), broken.__name__
        monkeypatch.setattr(fp8_scaled_mm, "scaled_product", real)
        fp8_scaled_mm._probe.cache_clear()
        assert fp8_scaled_mm.runs_on("cpu")
    finally:
        fp8_scaled_mm._probe.cache_clear()
