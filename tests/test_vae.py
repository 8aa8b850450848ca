"""The streaming Wan2.1 VAE decoder: golden equality with the official decoder (whole clip
and chunk-reset), streaming == whole clip, rewind state, checkpoint errors."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from golden import REPO, assert_close
from streaming.config import VAEConfig, load_config
from streaming.vae import (DecoderState, StreamingVAEDecoder, build_vae, decode_flops, load_vae,
                           make_decoder)
from streaming.weights import WeightFiles, WeightsError

SMALL = VAEConfig(dim=2, num_res_blocks=1)   # fast random decoder with the real structure


def _frames(f: int, tf: int = 4) -> int:
    return 1 + tf * (f - 1)


@pytest.fixture(scope="module")
def golden(fixture_set):
    """The set's decoder (loaded through `make_decoder`) and its `vae_decode` case."""
    cfg = fixture_set.config()
    files = WeightFiles(root=fixture_set.path, vae=fixture_set.file("vae.safetensors"))
    return cfg, make_decoder(cfg, files, "cpu", torch.float32), fixture_set.tensors


def _small(seed: int = 0, frames_per_pass: int | None = None) -> StreamingVAEDecoder:
    return StreamingVAEDecoder(build_vae(SMALL, seed), "cpu", torch.float32, frames_per_pass)


def _latents(f: int, h: int = 3, w: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, f, 16, h, w, generator=torch.Generator().manual_seed(seed))


# -- golden -------------------------------------------------------------------------------------
def test_whole_clip_matches_official(golden):
    cfg, dec, t = golden
    z = t["vae_decode.latents"]
    assert torch.equal(dec.mean, t["vae_decode.mean"]) and torch.equal(dec.std, t["vae_decode.std"])
    video = dec.decode_video(z)
    assert video.shape[1] == _frames(z.shape[1], cfg.vae.temporal_factor) == dec.output_frames(z.shape[1], True)
    assert video.shape[-2:] == (z.shape[-2] * cfg.vae.spatial_factor, z.shape[-1] * cfg.vae.spatial_factor)
    assert_close(video, t["vae_decode.video"], "vae_decode.video")


def test_chunk_reset_matches_official(golden, fixture_set):
    _, dec, t = golden
    chunk = fixture_set.meta["vae"]["chunk_reset_size"]
    assert_close(dec.decode_chunks(t["vae_decode.latents"], chunk), t["vae_decode.video_chunk_reset"],
                 "vae_decode.video_chunk_reset")


@pytest.mark.parametrize("frames_per_pass", [1, None])
def test_streamed_blocks_match_official(golden, frames_per_pass):
    cfg, ref, t = golden
    z = t["vae_decode.latents"]
    dec = StreamingVAEDecoder(ref.model, "cpu", torch.float32, frames_per_pass)
    f = cfg.latent_frames_per_block
    starts = range(0, z.shape[1], f)
    parts = [dec.decode(z[:, s:s + f]) for s in starts]
    tf = cfg.vae.temporal_factor
    sizes = [min(f, z.shape[1] - s) for s in starts]
    assert [p.shape[1] for p in parts] == [tf * n - (tf - 1) * (i == 0) for i, n in enumerate(sizes)]
    assert_close(torch.cat(parts, 1), t["vae_decode.video"], "streamed vae_decode.video")


# -- streaming ----------------------------------------------------------------------------------
@pytest.mark.parametrize("frames_per_pass", [1, 2, None])
def test_stream_of_blocks_equals_whole_clip(frames_per_pass):
    dec = _small(1, frames_per_pass)
    z = _latents(9)
    whole = dec.decode_video(z)
    assert whole.shape == (1, _frames(9), 3, 24, 40) and whole.dtype == torch.float32
    dec.reset()
    parts = [dec.decode(z[:, i:i + 3]) for i in range(0, 9, 3)]
    assert [p.shape[1] for p in parts] == [9, 12, 12]
    torch.testing.assert_close(torch.cat(parts, 1), whole, atol=1e-5, rtol=1e-5)
    assert whole.min() >= -1 and whole.max() <= 1


def test_uneven_blocks_and_single_frames_equal_whole_clip():
    dec = _small(2)
    z = _latents(7, seed=1)
    whole = dec.decode_video(z)
    dec.reset()
    parts, s = [], 0
    for n in (1, 1, 2, 3):
        parts.append(dec.decode(z[:, s:s + n]))
        s += n
    assert [p.shape[1] for p in parts] == [1, 4, 8, 12]
    torch.testing.assert_close(torch.cat(parts, 1), whole, atol=1e-5, rtol=1e-5)


def test_cache_carries_across_blocks_and_reset_clears_it():
    dec = _small(3)
    z = _latents(6, seed=2)
    first = dec.decode(z[:, :3])
    carried = dec.decode(z[:, 3:])
    dec.reset()
    restarted = dec.decode(z[:, 3:])
    assert restarted.shape[1] == _frames(3) and carried.shape[1] == 12
    assert not torch.allclose(carried[:, -restarted.shape[1]:], restarted, atol=1e-3)
    dec.reset()
    assert torch.equal(dec.decode(z[:, :3]), first)


def test_whole_clip_decode_leaves_the_stream_alone():
    dec = _small(4)
    z = _latents(6, seed=3)
    dec.decode(z[:, :3])
    expected = dec.decode(z[:, 3:])
    dec.reset()
    dec.decode(z[:, :3])
    dec.decode_video(_latents(4, seed=9))
    dec.decode_chunks(_latents(4, seed=9), 2)
    assert torch.equal(dec.decode(z[:, 3:]), expected)


def test_state_rewind_gives_identical_continuation():
    dec = _small(5)
    z = _latents(9, seed=4)
    dec.decode(z[:, :3])
    saved = dec.state()
    kept = saved.clone()
    a = dec.decode(z[:, 3:6])
    b = dec.decode(z[:, 6:9])
    dec.set_state(saved)
    assert torch.equal(dec.decode(z[:, 3:6]), a)
    assert torch.equal(dec.decode(z[:, 6:9]), b)
    # decoding after set_state did not touch the saved state
    assert saved.started == kept.started
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(saved.caches, kept.caches))
    dec.set_state(saved)
    assert torch.equal(dec.decode(z[:, 3:6]), a)


def test_state_of_another_decoder_is_refused():
    with pytest.raises(ValueError, match="caches"):
        _small().set_state(DecoderState([None], True))


# -- construction, errors -------------------------------------------------------------------------
def test_official_pickle_loads_decoder_side_only(tmp_path, fixture_set, golden):
    """A `Wan2.1_VAE.pth`-style torch pickle (encoder + decoder) loads; encoder keys are ignored."""
    cfg, ref, t = golden
    sd = load_file(str(fixture_set.file("vae.safetensors")))
    assert any(k.startswith("encoder.") for k in sd) and "conv1.weight" in sd
    torch.save(sd, tmp_path / "Wan2.1_VAE.pth")
    dec = make_decoder(cfg, WeightFiles(root=tmp_path, vae=tmp_path / "Wan2.1_VAE.pth"), "cpu", torch.float32)
    z = t["vae_decode.latents"][:, :2]
    assert torch.equal(dec.decode_video(z), ref.decode_video(z))


def _broken(tmp_path, fixture_set, change) -> str:
    sd = {k: v for k, v in load_file(str(fixture_set.file("vae.safetensors"))).items()}
    change(sd)
    path = tmp_path / "broken_vae.safetensors"
    save_file(sd, str(path))
    return str(path)


@pytest.mark.parametrize("change, words", [
    (lambda sd: sd.pop("decoder.head.2.weight"), ["missing", "decoder.head.2.weight"]),
    (lambda sd: sd.__setitem__("decoder.conv1.weight", sd["decoder.conv1.weight"][:, :3].contiguous()),
     ["mis-shaped", "decoder.conv1.weight"]),
    (lambda sd: sd.__setitem__("decoder.extra.weight", torch.zeros(2)), ["unexpected", "decoder.extra.weight"]),
], ids=["missing", "mis-shaped", "unexpected"])
def test_bad_checkpoint_is_one_clear_error(tmp_path, fixture_set, change, words):
    path = _broken(tmp_path, fixture_set, change)
    with pytest.raises(WeightsError) as err:
        load_vae(fixture_set.config().vae, path)
    msg = str(err.value)
    assert "broken_vae.safetensors" in msg and all(w in msg for w in words), msg


def test_checkpoint_for_another_size_is_refused(fixture_set):
    cfg = fixture_set.config()
    other = dataclasses.replace(cfg.vae, dim=cfg.vae.dim * 2)
    with pytest.raises(WeightsError, match="mis-shaped"):
        load_vae(other, fixture_set.file("vae.safetensors"))


def test_missing_vae_file_and_taehv_are_clear(tmp_path):
    cfg = load_config("tiny")
    with pytest.raises(WeightsError, match="no VAE weights"):
        make_decoder(cfg, WeightFiles(root=tmp_path), "cpu", torch.float32)
    fast = cfg.replace(vae={"kind": "taehv"})
    with pytest.raises(WeightsError, match="taew2_1.pth"):
        make_decoder(fast, WeightFiles(root=tmp_path), "cpu", torch.float32)
    dec = make_decoder(fast, None, "cpu", torch.float32)   # random weights (bench, embedded)
    out = dec.decode(torch.randn(1, 3, 16, 4, 4))
    assert out.shape == (1, 9, 3, 32, 32)


# -- the embedded default -------------------------------------------------------------------------
def test_embedded_default_random_weights_make_pictures():
    """Seeded, reproducible, and neither flat grey nor clamped."""
    cfg = load_config("tiny")
    z = _latents(3, 12, 20, seed=5) * 0.85
    a = make_decoder(cfg, None, "cpu", torch.float32).decode(z)
    b = make_decoder(cfg, None, "cpu", torch.float32).decode(z)
    assert torch.equal(a, b)
    assert a.shape == (1, _frames(3), 3, 12 * cfg.vae.spatial_factor, 20 * cfg.vae.spatial_factor)
    assert 0.12 < a.std() < 0.6
    assert (a.abs() > 0.99).float().mean() < 0.02
    assert a.std(2).mean() > 0.05                     # colour: the RGB channels differ per pixel


def test_bfloat16_compute_returns_float(golden):
    cfg, _, t = golden
    z = t["vae_decode.latents"][:, :2]
    dec = StreamingVAEDecoder(build_vae(cfg.vae, 0), "cpu", torch.bfloat16)
    full = StreamingVAEDecoder(build_vae(cfg.vae, 0), "cpu", torch.float32)
    out = dec.decode_video(z)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, full.decode_video(z), atol=0.08, rtol=0)


def test_flop_estimate_matches_the_reference_figure():
    full = VAEConfig()
    per_frame = decode_flops(full, 3, 60, 104) / 12
    assert 3.0e12 < per_frame < 3.8e12          # about 3.4 TFLOP per 480x832 frame
    assert decode_flops(full, 3, 60, 104, first=True) < decode_flops(full, 3, 60, 104)


def test_norm_through_the_fused_kernel_matches():
    """With the Triton path (the interpreter here; the GPU in production) the VAE's norm + SiLU
    goes through the fused Triton kernel on its channels-last activations, and matches the
    torch path. Run in a fresh process with the interpreter on from the start (so it does not
    depend on which test imported triton first), counting the calls that reach the kernel."""
    pytest.importorskip("triton")
    code = (
        "import torch\n"
        "from kernels import triton_fused\n"
        "calls = []\n"
        "real = triton_fused.rms_norm_channels\n"
        "triton_fused.rms_norm_channels = lambda *a, **k: calls.append(1) or real(*a, **k)\n"
        "from streaming.vae import RMSNorm\n"
        "torch.manual_seed(0)\n"
        "norm = RMSNorm(24)\n"
        "norm.gamma.data = torch.randn(24, 1, 1, 1)\n"
        "norm.pack()\n"
        "x = torch.randn(2, 3, 5, 7, 24)\n"
        "import os\n"
        "os.environ['LONGLIVE_KERNELS'] = 'torch'\n"
        "expected = norm(x, silu=True)\n"
        "assert not calls\n"
        "os.environ['LONGLIVE_KERNELS'] = 'triton'\n"
        "got = norm(x, silu=True)\n"
        "torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)\n"
        "print('calls', len(calls))\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("LONGLIVE_KERNELS", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["calls", "1"], out.stdout

