"""The real-weights path end to end: a weights folder in the official layout (built from a
golden set's files), loaded by the same code as `--weights DIR`, reproduces the official
latents and pixels."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from streaming import RecordedNoise, load_config, locate
from streaming.pipeline import VideoPipeline
from test_text import id_words, write_tokenizer


@pytest.fixture()
def weights_dir(tmp_path, fixture_set):
    cfg = fixture_set.config()
    wan = tmp_path / "weights" / "wan_models" / "Wan2.1-T2V-1.3B"
    ll = tmp_path / "weights" / "longlive_models" / "models"
    wan.mkdir(parents=True)
    ll.mkdir(parents=True)
    shutil.copy(fixture_set.file("generator_ckpt.pt"), ll / "longlive_base.pt")
    shutil.copy(fixture_set.file("lora_ckpt.pt"), ll / "lora.pt")
    torch.save(load_file(str(fixture_set.file("vae.safetensors"))), wan / "Wan2.1_VAE.pth")
    torch.save(load_file(str(fixture_set.file("t5.safetensors"))), wan / "models_t5_umt5-xxl-enc-bf16.pth")
    write_tokenizer(wan / "google" / "umt5-xxl", id_words(cfg.text.vocab_size))
    config = tmp_path / "fixture.yaml"
    config.write_text(yaml.safe_dump(cfg.to_mapping()))
    return tmp_path / "weights", config


@pytest.mark.parametrize("lora", [False, True])
def test_official_layout_reproduces_the_official_stream_and_pixels(weights_dir, fixture_set, lora):
    folder, config = weights_dir
    if not lora:
        (folder / "longlive_models" / "models" / "lora.pt").unlink()
    files = locate(folder)
    assert None not in (files.longlive, files.vae, files.t5, files.tokenizer)
    assert (files.lora is not None) == lora
    cfg = load_config(config)
    t = fixture_set.tensors
    pipe = VideoPipeline.from_config(cfg, weights=folder, device="cpu")
    assert not pipe.embedded_default
    fpb = cfg.latent_frames_per_block
    switch = fixture_set.cases["stream"].get("switch_frame_index") or t["stream.noise"].shape[1]
    blocks_before_switch = max(1, switch // fpb)
    n = min(blocks_before_switch, -(-t["vae_decode.latents"].shape[1] // fpb))
    pipe.generator.reset(t["context_a"], noise=RecordedNoise(t["stream.noise"], t["stream.randn_draws"], fpb))
    pipe.decoder.reset()
    outputs = []
    pipe.generator.trace = lambda kind, block, step, x, x0: outputs.append(x0) if kind == "context" else None
    blocks = [pipe.next_frames() for _ in range(n)]
    latents = torch.cat(outputs, dim=1)
    expected = t["stream_lora.output_latents" if lora else "stream.output_latents"][:, : n * fpb]
    torch.testing.assert_close(latents, expected, atol=1e-4, rtol=1e-4)
    frames = np.concatenate([b.frames for b in blocks])
    assert frames.dtype == np.uint8 and frames.shape[0] == 1 + 4 * (n * fpb - 1)
    if not lora:  # the official decode of these very latents, as uint8 (within one level of rounding)
        video = t["vae_decode.video"][0]
        m = min(len(frames), video.shape[0])
        want = ((video[:m].permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255)
        assert (torch.from_numpy(frames[:m]).float() - want).abs().max() <= 1


def test_generate_with_a_weights_folder(weights_dir, tmp_path):
    from longlive import cli
    folder, config = weights_dir
    out = tmp_path / "clip.mp4"
    assert cli.main(["generate", "--prompt", "t5 t6 t7", "--seconds", "1", "--weights", str(folder),
                     "--config", str(config), "-o", str(out)]) == 0
    import av
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 16
