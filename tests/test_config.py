from __future__ import annotations

import pytest

from streaming.config import ConfigError, load_config


@pytest.mark.parametrize("name", ["tiny", "longlive"])
def test_presets_load(name):
    cfg = load_config(name)
    assert cfg.name == name
    assert cfg.frame_seq_length > 0


def test_longlive_preset_sizes():
    cfg = load_config("longlive")
    assert (cfg.latent_height, cfg.latent_width, cfg.frame_seq_length) == (60, 104, 1560)
    assert cfg.model.rope_split == (22, 21, 21)
    assert (cfg.window.local_attn_size, cfg.window.sink_size, cfg.latent_frames_per_block) == (12, 3, 3)


@pytest.mark.parametrize("text,message", [
    ("model: {dim: 65}", "not a multiple of model.num_heads"),
    ("model: {dims: 64}", "unknown key(s) dims"),
    ("modle: {}", "unknown section(s) modle"),
    ("window: {sink_size: 12}", "sink_size"),
    ("video: {height: 100}", "multiples of 16"),
    ("runtime: {dtype: float8}", "runtime.dtype must be one of"),
    ("schedule: {denoising_steps: [250, 1000]}", "must decrease"),
    ("window: {global_sink: yes please}", "true or false"),
    ("model: [1, 2", "not valid YAML"),
])
def test_mistakes_are_one_clear_sentence(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="presets: .*longlive.*tiny"):
        load_config("nosuch")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "x.yaml")


# -- runtime.threads and the init section -----------------------------------------------------------
def test_tiny_sets_threads_and_init_longlive_keeps_the_defaults():
    from streaming.config import InitConfig

    tiny, full = load_config("tiny"), load_config("longlive")
    assert tiny.runtime.threads == 1 and tiny.vae.threads == 2
    assert not tiny.init.is_default and len(tiny.init.cross_attn_sharpness) == tiny.model.num_layers
    assert full.runtime.threads == 0 and full.init == InitConfig() and full.init.is_default


@pytest.mark.parametrize("text,message", [
    ("runtime: {threads: -1}", "runtime.threads must be 0"),
    ("vae: {threads: -2}", "vae.threads must be 0"),
    ("runtime: {threads: 1.5}", "runtime.threads must be a whole number"),
    ("init: {head_gain: 0}", "init.head_gain must be a positive number"),
    ("init: {cross_attn_gain: -3}", "init.cross_attn_gain must be a positive number"),
    ("init: {cross_attn_sharpness: [1.0]}", "one value per DiT layer (30)"),
    ("init: {cross_attn_sharpness: [1.0, 0.0, 1.0]}", "init.cross_attn_sharpness[1] must be a positive number"),
    ("init: {head_patch_share: 1.5}", "init.head_patch_share must be between 0 and 1"),
    ("init: {text_mix: 2}", "unknown key(s) text_mix"),
])
def test_threads_and_init_mistakes_are_one_clear_sentence(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_init_and_threads_round_trip_through_a_mapping():
    from streaming.config import config_from_mapping

    tiny = load_config("tiny")
    again = config_from_mapping(tiny.to_mapping(), "again")
    assert again.init == tiny.init and again.runtime == tiny.runtime


def test_apply_runtime_sets_torch_threads_and_zero_leaves_them():
    import torch

    from streaming.config import RuntimeConfig, apply_runtime

    before = torch.get_num_threads()
    try:
        apply_runtime(RuntimeConfig(threads=1))
        assert torch.get_num_threads() == 1
        apply_runtime(RuntimeConfig(threads=0))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
