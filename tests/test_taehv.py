"""The TAEHV-compatible fast decoder: equal to madebyollin/taehv's own code on every TAEHV
golden set (whole clip and block-streamed), streaming equals whole-clip decoding, frame
counts match the Wan decoder's, rewind state, and published checkpoints of any size load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from golden import TaehvSet, assert_close
from streaming.config import load_config
from streaming.taehv import (MemBlock, TAEHVDecoder, TGrow, build_decoder, layout_of, load_taehv, make_taehv,
                             random_taehv)
from streaming.vae import make_decoder
from streaming.weights import WeightFiles, WeightsError


def _small(seed: int = 0) -> TAEHVDecoder:
    torch.manual_seed(seed)
    return TAEHVDecoder(build_decoder(widths=(8, 8, 4, 4)))


def _save(model: torch.nn.Module, path: Path, extra: dict[str, torch.Tensor] | None = None) -> Path:
    sd = {f"decoder.{k}": v.contiguous() for k, v in model.state_dict().items()}
    sd.update(extra or {})
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path


# -- against madebyollin/taehv's own outputs ------------------------------------------------------
def test_sizes_read_from_the_checkpoint_match_the_set(taehv_set: TaehvSet) -> None:
    meta = taehv_set.meta
    dec = load_taehv(taehv_set.decoder_file, "cpu", torch.float32)
    assert list(dec.widths) == list(meta["widths"])
    assert dec.latent_channels == meta["latent_channels"] == taehv_set.tensors["latents"].shape[2]
    assert dec.time_factor == meta["t_upscale"]
    assert dec.trim == meta["frames_to_trim"]


def test_whole_clip_equals_published_decode_video(taehv_set: TaehvSet) -> None:
    t = taehv_set.tensors
    latents, frames = t["latents"], t["frames"]
    assert list(latents.shape) == taehv_set.meta["latents_shape"]
    assert list(frames.shape) == taehv_set.meta["frames_shape"]
    dec = load_taehv(taehv_set.decoder_file, "cpu", torch.float32)
    for n in range(latents.shape[0]):           # one stream per clip of the batch
        dec.reset()
        ours = dec.decode(latents[n:n + 1])
        assert_close(ours, 2 * frames[n:n + 1] - 1, f"{taehv_set.name} clip {n}: whole-clip frames")


def test_block_streamed_equals_published_streaming(taehv_set: TaehvSet) -> None:
    t, meta = taehv_set.tensors, taehv_set.meta
    latents, expected = t["latents"], t["stream_frames"]
    step = meta["block_latents"]
    dec = load_taehv(taehv_set.decoder_file, "cpu", torch.float32)
    for n in range(latents.shape[0]):
        dec.reset()
        parts = [dec.decode(latents[n:n + 1, i:i + step]) for i in range(0, latents.shape[1], step)]
        assert [p.shape[1] for p in parts] == list(meta["frames_per_block"])
        assert_close(torch.cat(parts, 1), 2 * expected[n:n + 1] - 1, f"{taehv_set.name} clip {n}: streamed frames")


# -- streaming behaviour ---------------------------------------------------------------------------
def test_stream_blocks_equal_whole_clip_and_frame_counts() -> None:
    dec = _small()
    z = torch.randn(1, 9, 16, 4, 6)
    whole = dec.decode(z)
    assert whole.shape == (1, 1 + 4 * 8, 3, 32, 48)
    dec.reset()
    parts = [dec.decode(z[:, i:i + 3]) for i in range(0, 9, 3)]
    assert [p.shape[1] for p in parts] == [9, 12, 12]
    torch.testing.assert_close(torch.cat(parts, 1), whole, atol=1e-6, rtol=1e-5)
    assert whole.min() >= -1 and whole.max() <= 1


def test_memory_blocks_carry_across_blocks() -> None:
    """The second block depends on the first (a stateless decoder would not)."""
    dec = _small(1)
    z = torch.randn(1, 6, 16, 4, 4)
    dec.decode(z[:, :3])
    carried = dec.decode(z[:, 3:])
    dec.reset()
    dec.decode(z[:, 3:] * 0)
    other = dec.decode(z[:, 3:])
    assert not torch.allclose(carried, other)


def test_state_rewinds() -> None:
    dec = _small(2)
    z = torch.randn(1, 9, 16, 4, 4)
    dec.decode(z[:, :3])
    saved = dec.state()
    a = dec.decode(z[:, 3:6])
    dec.set_state(saved)
    assert torch.equal(a, dec.decode(z[:, 3:6]))


# -- checkpoints -----------------------------------------------------------------------------------
def test_layout_of_the_published_decoder() -> None:
    d = build_decoder()
    sd = d.state_dict()
    assert isinstance(d[3], MemBlock) and isinstance(d[7], TGrow) and isinstance(d[13], TGrow)
    assert sd["1.weight"].shape == (256, 16, 3, 3)
    assert sd["3.conv.0.weight"].shape == (256, 512, 3, 3)
    assert sd["7.conv.weight"].shape == (256, 256, 1, 1)      # first TGrow: no time upscale
    assert sd["13.conv.weight"].shape == (256, 128, 1, 1)     # 128 channels x 2 frames
    assert sd["22.weight"].shape == (3, 64, 3, 3)
    layout = layout_of(sd, "published")
    assert (layout.latent_channels, layout.widths, layout.time_strides, layout.patch_size) == \
        (16, (256, 128, 64, 64), (1, 2, 2), 1)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_other_sizes_load_from_their_shapes(tmp_path: Path, suffix: str) -> None:
    """Widths, latent channels, per-stage time strides and the patch size all come from the
    tensors; the loaded decoder computes what the saved one does."""
    torch.manual_seed(4)
    src = TAEHVDecoder(build_decoder(latent_channels=12, widths=(12, 8, 6, 4), time_strides=(2, 1, 2),
                                     patch_size=2))
    dec = load_taehv(_save(src.decoder, tmp_path / f"taehv{suffix}"), "cpu", torch.float32)
    assert (dec.latent_channels, dec.widths, dec.time_factor, dec.trim, dec.patch_size) == (12, (12, 8, 6, 4), 4, 3, 2)
    z = torch.randn(1, 3, 12, 2, 3)
    out = dec.decode(z)
    assert out.shape == (1, 3 * 4 - 3, 3, 32, 48)
    assert torch.equal(out, src.decode(z))


def test_load_checkpoint_with_encoder_keys(tmp_path: Path) -> None:
    src = random_taehv("cpu", torch.float32, weights_seed=3)
    path = _save(src.decoder, tmp_path / "taew2_1.pth", {"encoder.0.weight": torch.zeros(1)})
    dec = load_taehv(path, "cpu", torch.float32)
    z = torch.randn(1, 3, 16, 2, 2)
    assert torch.equal(dec.decode(z), src.decode(z))
    sd = torch.load(path)
    del sd["decoder.22.weight"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="bad.pth.*missing keys 22.weight"):
        load_taehv(tmp_path / "bad.pth", "cpu", torch.float32)


def test_mismatched_checkpoints_are_one_clear_error(tmp_path: Path) -> None:
    sd = {f"decoder.{k}": v for k, v in build_decoder(widths=(8, 8, 4, 4)).state_dict().items()}
    grow = dict(sd, **{"decoder.13.conv.weight": torch.zeros(12, 8, 1, 1)})    # 12 is no multiple of 8
    save_file(grow, str(tmp_path / "grow.safetensors"))
    with pytest.raises(WeightsError, match=r"grow\.safetensors does not fit the TAEHV decoder layout \(decoder\.13"):
        load_taehv(tmp_path / "grow.safetensors", "cpu", torch.float32)
    block = dict(sd, **{"decoder.4.conv.2.weight": torch.zeros(8, 6, 3, 3)})
    save_file(block, str(tmp_path / "block.safetensors"))
    with pytest.raises(WeightsError, match=r"block\.safetensors does not fit.*mis-shaped 4\.conv\.2\.weight"):
        load_taehv(tmp_path / "block.safetensors", "cpu", torch.float32)
    save_file({"encoder.0.weight": torch.zeros(1)}, str(tmp_path / "enc.safetensors"))
    with pytest.raises(WeightsError, match=r"enc\.safetensors has no decoder\.\* keys"):
        load_taehv(tmp_path / "enc.safetensors", "cpu", torch.float32)


# -- the factory -----------------------------------------------------------------------------------
def test_make_decoder_dispatches_to_make_taehv(tmp_path: Path) -> None:
    cfg = load_config("tiny").replace(vae={"kind": "taehv"})
    path = _save(build_decoder(latent_channels=cfg.model.in_dim, widths=(8, 8, 4, 4)), tmp_path / "taew2_1.pth")
    files = WeightFiles(root=tmp_path, taehv=path)
    via_vae, direct = make_decoder(cfg, files, "cpu", torch.float32), make_taehv(cfg, files, "cpu", torch.float32)
    assert isinstance(via_vae, TAEHVDecoder) and via_vae.widths == (8, 8, 4, 4)
    z = torch.randn(1, 3, cfg.model.in_dim, 2, 2)
    assert torch.equal(via_vae.decode(z), direct.decode(z))
    random = make_decoder(cfg, None, "cpu", torch.bfloat16)          # the compute dtype asked for, on any device
    assert isinstance(random, TAEHVDecoder) and random.dtype == torch.bfloat16
    other = _save(build_decoder(latent_channels=cfg.model.in_dim + 4, widths=(8, 8, 4, 4)), tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=rf"other\.pth decodes {cfg.model.in_dim + 4}-channel latents"):
        make_taehv(cfg, WeightFiles(root=tmp_path, taehv=other), "cpu", torch.float32)
    faster = _save(build_decoder(latent_channels=cfg.model.in_dim, widths=(8, 8, 4, 4), time_strides=(2, 2, 2)),
                   tmp_path / "eight.pth")
    with pytest.raises(WeightsError, match=rf"eight\.pth turns each latent into 8 frames of 8x its size but .* "
                                           rf"expects {cfg.vae.temporal_factor} frames"):
        make_taehv(cfg, WeightFiles(root=tmp_path, taehv=faster), "cpu", torch.float32)
