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
