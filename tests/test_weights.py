"""Finding, reading and checking checkpoints: layouts and the errors a user can cause."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from streaming import WeightsError, load_dit, locate
from streaming.weights import dit_state, lora_state


def test_locate_official_layout(tmp_path, fixture_set):
    wan = tmp_path / "wan_models" / "Wan2.1-T2V-1.3B"
    ll = tmp_path / "longlive_models" / "models"
    (wan / "google" / "umt5-xxl").mkdir(parents=True)
    ll.mkdir(parents=True)
    shutil.copy(fixture_set.file("generator.safetensors"), wan / "diffusion_pytorch_model.safetensors")
    shutil.copy(fixture_set.file("generator_ckpt.pt"), ll / "longlive_base.pt")
    shutil.copy(fixture_set.file("lora_ckpt.pt"), ll / "lora.pt")
    (wan / "google" / "umt5-xxl" / "tokenizer.json").write_text("{}")
    files = locate(tmp_path)
    assert files.dit == ll / "longlive_base.pt"          # LongLive's DiT wins over the base
    assert files.lora == ll / "lora.pt"
    assert files.tokenizer == wan / "google" / "umt5-xxl"
    assert files.vae is None


def test_locate_flat_layout(tmp_path, fixture_set):
    shutil.copy(fixture_set.file("generator.safetensors"), tmp_path / "diffusion_pytorch_model.safetensors")
    files = locate(tmp_path)
    assert files.dit == tmp_path / "diffusion_pytorch_model.safetensors" and files.lora is None


def test_missing_folder_and_missing_dit_are_one_line(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        locate(tmp_path / "nope")
    with pytest.raises(WeightsError, match="no DiT weights"):
        locate(tmp_path)


def test_ema_and_fsdp_layouts(tmp_path, fixture_set):
    sd = dit_state(fixture_set.file("generator.safetensors"))
    ema = {f"model._fsdp_wrapped_module.{k}": v for k, v in sd.items()}
    torch.save({"generator_ema": ema, "step": 3}, tmp_path / "ema.pt")
    torch.save({"model": {f"model.{k}": v for k, v in sd.items()}}, tmp_path / "model.pt")
    for path in (tmp_path / "ema.pt", tmp_path / "model.pt"):
        got = dit_state(path)
        assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


def test_training_lora_layout_with_critic(tmp_path, fixture_set):
    raw = torch.load(fixture_set.file("lora_ckpt.pt"))["generator_lora"]
    torch.save({"generator_lora": raw, "critic_lora": {"x": torch.zeros(1)}, "step": 10}, tmp_path / "lora.pt")
    pairs = lora_state(tmp_path / "lora.pt")
    assert len(pairs) == len(raw) // 2
    a, b = pairs["blocks.0.self_attn.q"]
    assert a.shape[0] == b.shape[1]


def test_bad_keys_name_the_file_and_keys(tmp_path, fixture_set):
    cfg = fixture_set.config()
    sd = dit_state(fixture_set.file("generator.safetensors"))
    broken = dict(sd)
    del broken["head.head.weight"]
    broken["blocks.0.extra.weight"] = torch.zeros(1)
    broken["patch_embedding.bias"] = torch.zeros(3)
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(WeightsError) as err:
        load_dit(cfg, tmp_path / "broken.safetensors")
    msg = str(err.value)
    for part in ("broken.safetensors", "missing keys head.head.weight", "unexpected keys blocks.0.extra.weight",
                 "patch_embedding.bias"):
        assert part in msg
    assert "\n" not in msg


def test_unreadable_checkpoint(tmp_path, fixture_set):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pt is not a readable"):
        load_dit(fixture_set.config(), tmp_path / "junk.pt")


def test_lora_that_does_not_fit(tmp_path, fixture_set):
    raw = torch.load(fixture_set.file("lora_ckpt.pt"))["generator_lora"]
    key = next(k for k in raw if k.endswith("lora_B.weight"))
    raw[key] = torch.zeros(raw[key].shape[0] + 1, raw[key].shape[1])
    torch.save({"generator_lora": raw}, tmp_path / "lora.pt")
    with pytest.raises(WeightsError, match="do not fit"):
        load_dit(fixture_set.config(), fixture_set.file("generator_ckpt.pt"), tmp_path / "lora.pt")


def test_loading_keeps_one_copy(fixture_set):
    """Parameters are the checkpoint's tensors moved once, with the float32 path kept float32."""
    cfg = fixture_set.config()
    model = load_dit(cfg, fixture_set.file("generator_ckpt.pt"), dtype=torch.bfloat16)
    assert model.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert model.blocks[0].modulation.dtype == torch.float32
    assert model.time_projection[1].weight.dtype == torch.float32
    assert not any(p.is_meta for p in model.parameters())
