"""Configuration: one dataclass per section of a `configs/*.yaml` preset.

A preset is read strictly: an unknown key, a wrong type or an impossible size is a
`ConfigError` whose message names the file and the key, never a traceback.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


class ConfigError(UserError, ValueError):
    """A preset that cannot be used; the message is one sentence for the user."""


@dataclass(frozen=True)
class ModelConfig:
    """The causal DiT (Wan2.1-T2V shapes)."""

    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    rope_theta: float = 10000.0
    # not in Wan: a learned embedding per (patch row, patch column), added to every frame's
    # patch embeddings; [rows, cols] of the stream's patch grid, or None (Wan, LongLive). With
    # RoPE alone a model knows only where tokens are relative to each other; the toy world's
    # first block (drawn from pure noise, the object at the frame's centre) needs to know where
    # the centre is, which a toy-sized model did not learn from the frame's edges (docs/TOY_WORLD.md).
    # At another frame size the table is resized (bilinear) to that grid
    position_grid: tuple[int, int] | None = None

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Complex channels per head rotated by (frame, row, column)."""
        c = self.head_dim // 2
        return (c - 2 * (c // 3), c // 3, c // 3)


@dataclass(frozen=True)
class WindowConfig:
    """The KV window, counted in latent frames."""

    local_attn_size: int = 12
    sink_size: int = 3
    global_sink: bool = True


@dataclass(frozen=True)
class ScheduleConfig:
    denoising_steps: tuple[float, ...] = (1000, 750, 500, 250)
    shift: float = 5.0
    warp: bool = True
    context_noise: float = 0.0
    num_train_timesteps: int = 1000


@dataclass(frozen=True)
class VideoConfig:
    height: int = 480
    width: int = 832
    fps: int = 16
    latent_frames_per_block: int = 3   # latent frames per generated block (x4 video frames)


@dataclass(frozen=True)
class LoraConfig:
    alpha: float = 256.0


@dataclass(frozen=True)
class VAEConfig:
    kind: str = "wan"
    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    # residual blocks per encoder stage; None: num_res_blocks, as the official VAE (whose
    # decoder has one more per stage). A toy decoder with none needs some here to change widths.
    encoder_res_blocks: int | None = None
    # the RMS norm before each head's last conv (the decoder's RGB head, the encoder's latent
    # head), as in Wan. At a toy width it leaves a pixel's features only a direction (the norm
    # divides out their size): the toy world's VAE learnt 2.5x faster without it (docs/TOY_WORLD.md)
    head_norm: bool = True
    # torch's intra-op CPU threads while a block is decoded (at most the machine's cores), then
    # back to what they were (`runtime.threads`); 0: no change. CPU only. The decoder's
    # full-resolution convolutions are large enough to split well over cores, unlike a toy
    # DiT's small matrices, whose second thread mostly waits.
    threads: int = 0

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(bool(t) for t in self.temporal_downsample)


@dataclass(frozen=True)
class TextConfig:
    kind: str = "umt5"
    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    shared_pos: bool = False
    placement: str = "resident"
    cache_size: int = 64


@dataclass(frozen=True)
class RuntimeConfig:
    dtype: str = "bfloat16"
    device: str = "auto"
    kernels: str = "auto"
    fp8: bool = False
    # torch's intra-op CPU threads for this process (`torch.set_num_threads`), set when the
    # pipeline is built; 0 leaves torch's default (one per core). At toy sizes one thread
    # does the same work in less CPU time: a second one mostly waits at each op's barrier.
    threads: int = 0


@dataclass(frozen=True)
class InitConfig:
    """How the seeded random weights are drawn when no checkpoint is loaded (the embedded
    default, `bench`); loaded weights never read this. Every default is PyTorch's own
    initialisation, unchanged (so presets without an `init` section, the golden fixtures and
    `longlive` are bit-identical); the tiny preset sets them so that the prompt, not the noise,
    decides what the picture looks like.

    Plain random weights leave the prompt almost no grip: the DiT's residual stream is
    mostly the noisy latents, its cross-attention averages the prompt tokens into nearly the
    same vector for every prompt, and the flow it predicts is too weak to outweigh the
    sampler's fresh noise. The gains below multiply weights after the seeded draw (no extra
    random numbers), so a config that leaves them at 1 gets exactly the old weights.
    """

    # tiny UMT5 text encoder: gain on every block's attention-output (`o`) and FFN-output
    # (`fc2`) projections. Large: each token's embedding carries the whole prompt, so changing
    # one word changes every row, not only its own.
    text_mixing: float = 1.0
    # DiT `text_embedding` (both linear layers): scales the prompt's values in cross-attention.
    text_embedding_gain: float = 1.0
    # DiT cross-attention output projection `o` (weight only): the prompt's pull on the
    # residual stream relative to the latents, self-attention and FFN.
    cross_attn_gain: float = 1.0
    # DiT cross-attention q/k RMSNorm weights, one value per layer (empty: 1 for all). Above
    # 1 a video token attends to fewer prompt tokens. Layer 0's queries come from the noisy
    # latents (keep it soft: a sharp layer 0 makes the picture flicker with the noise); later
    # layers' queries already carry the prompt, so sharpening them makes similar prompts
    # ("a red fox", "a blue fox") pick different prompt tokens.
    cross_attn_sharpness: tuple[float, ...] = ()
    # DiT head projection (weight only): how strongly the predicted flow, hence the picture,
    # outweighs the sampler's noise.
    head_gain: float = 1.0
    # Fraction of each head output pixel's weights taken from the first pixel of its patch
    # (0: independent, 1: every patch is flat): smooth patches instead of a fixed tile pattern.
    head_patch_share: float = 0.0

    @property
    def is_default(self) -> bool:
        return self == InitConfig()


@dataclass(frozen=True)
class Config:
    name: str = "longlive"
    weights_seed: int = 0   # seeds the random weights (no weights given); not the stream's noise seed
    # the preset's own trained weights: a folder inside the configs package, used when no
    # --weights is given (the toy world's, `longlive train`); "" for seeded random weights
    weights: str = ""
    # what the preset is, in a sentence, for people: the start-up line and the page say it
    about: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    init: InitConfig = field(default_factory=InitConfig)
    source: str = "<defaults>"

    # -- derived sizes -------------------------------------------------------
    @property
    def latent_height(self) -> int:
        return self.video.height // self.vae.spatial_factor

    @property
    def latent_width(self) -> int:
        return self.video.width // self.vae.spatial_factor

    @property
    def frame_seq_length(self) -> int:
        """Tokens per latent frame."""
        _, ph, pw = self.model.patch_size
        return (self.latent_height // ph) * (self.latent_width // pw)

    @property
    def latent_frames_per_block(self) -> int:
        """Latent frames the generator makes per block (3 for LongLive: 12 video frames)."""
        return self.video.latent_frames_per_block

    def to_mapping(self) -> dict[str, Any]:
        """The preset as plain data (what `load_config` reads back)."""
        def plain(v: Any) -> Any:
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v
        data = plain(dataclasses.asdict(self))
        data.pop("source", None)
        return data

    def replace(self, **sections: Any) -> "Config":
        """A copy with some fields replaced; a dict value updates that section."""
        updates: dict[str, Any] = {}
        for key, value in sections.items():
            current = getattr(self, key)
            if dataclasses.is_dataclass(current) and isinstance(value, dict):
                value = dataclasses.replace(current, **value)
            updates[key] = value
        out = dataclasses.replace(self, **updates)
        _validate(out)
        return out


_SECTIONS = {
    "model": ModelConfig,
    "window": WindowConfig,
    "schedule": ScheduleConfig,
    "video": VideoConfig,
    "lora": LoraConfig,
    "vae": VAEConfig,
    "text": TextConfig,
    "runtime": RuntimeConfig,
    "init": InitConfig,
}

_CHOICES = {
    ("vae", "kind"): ("wan", "taehv"),
    ("text", "kind"): ("umt5", "byte", "word"),
    ("text", "placement"): ("resident", "offload"),
    ("runtime", "dtype"): ("float32", "bfloat16", "float16"),
    ("runtime", "kernels"): ("auto", "triton", "torch"),
}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a dataclass field's type hint, converting lists to tuples."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, not {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where} must have {len(args)} entries, not {len(value)}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if origin in (typing.Union, types.UnionType):
        for a in typing.get_args(hint):
            try:
                return _coerce(value, a, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where} has the wrong type: {value!r}")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be a whole number, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be text, not {value!r}")
        return value
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    where = cfg.source
    m, w, v = cfg.model, cfg.window, cfg.video
    for (section, key), allowed in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ConfigError(f"{where}: {section}.{key} must be one of {', '.join(allowed)}, not {value!r}")
    if m.dim % m.num_heads:
        raise ConfigError(f"{where}: model.dim {m.dim} is not a multiple of model.num_heads {m.num_heads}")
    if m.head_dim % 2 or m.head_dim < 6:
        raise ConfigError(f"{where}: the head size model.dim/num_heads = {m.head_dim} must be even and at least 6 (RoPE)")
    positive = {
        "model.dim": m.dim, "model.ffn_dim": m.ffn_dim, "model.num_layers": m.num_layers,
        "model.text_len": m.text_len, "model.freq_dim": m.freq_dim, "video.fps": v.fps,
        "video.latent_frames_per_block": v.latent_frames_per_block, "window.local_attn_size": w.local_attn_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{where}: {key} must be positive, not {value}")
    if m.freq_dim % 2:
        raise ConfigError(f"{where}: model.freq_dim must be even, not {m.freq_dim}")
    if not 0 <= w.sink_size < w.local_attn_size:
        raise ConfigError(f"{where}: window.sink_size must be at least 0 and below local_attn_size ({w.local_attn_size})")
    if w.local_attn_size - w.sink_size < v.latent_frames_per_block:
        raise ConfigError(f"{where}: the rolling part of the window (local_attn_size - sink_size = "
                          f"{w.local_attn_size - w.sink_size}) must hold a block of {v.latent_frames_per_block} latent frames")
    s = cfg.schedule
    if not s.denoising_steps or any(not 0 < t <= s.num_train_timesteps for t in s.denoising_steps):
        raise ConfigError(f"{where}: schedule.denoising_steps must be timesteps in (0, {s.num_train_timesteps}]")
    if list(s.denoising_steps) != sorted(s.denoising_steps, reverse=True):
        raise ConfigError(f"{where}: schedule.denoising_steps must decrease, like [1000, 750, 500, 250]")
    factor = cfg.vae.spatial_factor * max(m.patch_size[1], m.patch_size[2])
    if v.height % factor or v.width % factor or v.height <= 0 or v.width <= 0:
        raise ConfigError(f"{where}: video.height and video.width must be positive multiples of {factor}")
    if m.position_grid is not None and min(m.position_grid) < 1:
        raise ConfigError(f"{where}: model.position_grid must be [rows, columns] of the patch grid, not {list(m.position_grid)}")
    if cfg.vae.z_dim != m.in_dim:
        raise ConfigError(f"{where}: vae.z_dim ({cfg.vae.z_dim}) must equal model.in_dim ({m.in_dim})")
    if len(cfg.vae.temporal_downsample) != len(cfg.vae.dim_mult) - 1:
        raise ConfigError(f"{where}: vae.temporal_downsample needs one entry per stage transition ({len(cfg.vae.dim_mult) - 1})")
    t = cfg.text
    if t.dim != m.text_dim:
        raise ConfigError(f"{where}: text.dim ({t.dim}) must equal model.text_dim ({m.text_dim})")
    if t.dim_attn % t.num_heads:
        raise ConfigError(f"{where}: text.dim_attn ({t.dim_attn}) is not a multiple of text.num_heads ({t.num_heads})")
    if cfg.vae.encoder_res_blocks is not None and cfg.vae.encoder_res_blocks < 0:
        raise ConfigError(f"{where}: vae.encoder_res_blocks must be at least 0, not {cfg.vae.encoder_res_blocks}")
    for key, value in (("runtime.threads", cfg.runtime.threads), ("vae.threads", cfg.vae.threads)):
        if value < 0:
            raise ConfigError(f"{where}: {key} must be 0 (no change) or a positive number of threads, not {value}")
    init = cfg.init
    gains = {"init.text_mixing": init.text_mixing, "init.text_embedding_gain": init.text_embedding_gain,
             "init.cross_attn_gain": init.cross_attn_gain, "init.head_gain": init.head_gain}
    gains.update({f"init.cross_attn_sharpness[{i}]": g for i, g in enumerate(init.cross_attn_sharpness)})
    for key, value in gains.items():
        if not 0 < value < float("inf"):
            raise ConfigError(f"{where}: {key} must be a positive number, not {value}")
    if init.cross_attn_sharpness and len(init.cross_attn_sharpness) != m.num_layers:
        raise ConfigError(f"{where}: init.cross_attn_sharpness needs one value per DiT layer ({m.num_layers}), "
                          f"not {len(init.cross_attn_sharpness)}")
    if not 0 <= init.head_patch_share <= 1:
        raise ConfigError(f"{where}: init.head_patch_share must be between 0 and 1, not {init.head_patch_share}")
    if t.kind == "byte" and t.vocab_size < 258:
        raise ConfigError(f"{where}: text.vocab_size must be at least 258 for the byte tokenizer "
                          f"(256 bytes + pad + EOS), not {t.vocab_size}")


def apply_runtime(runtime: RuntimeConfig) -> None:
    """The process-wide settings of a `runtime` section: torch's intra-op thread count
    (`runtime.threads`; 0 leaves it alone). Called when a pipeline is built."""
    if runtime.threads:
        import torch

        if torch.get_num_threads() != runtime.threads:
            torch.set_num_threads(runtime.threads)


def config_from_mapping(data: dict[str, Any], source: str = "<mapping>") -> Config:
    """Build a validated `Config` from a parsed preset."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping of sections (model, window, ...)")
    top = {f.name for f in dataclasses.fields(Config)} - {"source"}
    unknown = sorted(set(data) - top)
    if unknown:
        raise ConfigError(f"{source} has unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(top))}")
    kwargs: dict[str, Any] = {"source": source}
    for key, value in data.items():
        if key in _SECTIONS:
            kwargs[key] = _build(_SECTIONS[key], value, f"{source}: {key}")
        elif key == "name":
            kwargs[key] = _coerce(value, str, f"{source}: name")
        elif key == "weights_seed":
            kwargs[key] = _coerce(value, int, f"{source}: weights_seed")
        elif key in ("weights", "about"):
            kwargs[key] = _coerce(value, str, f"{source}: {key}")
    cfg = Config(**kwargs)
    _validate(cfg)
    return cfg


# the preset that runs when neither --config nor --weights is given: the toy world, trained here
EMBEDDED_DEFAULT = "toy"


def choose_preset(config: str | Path | None, weights: str | Path | None) -> str | Path:
    """The preset to load: the one asked for, else `longlive` when weights are given (the real
    model), else the embedded default."""
    return config or ("longlive" if weights else EMBEDDED_DEFAULT)


def preset_weights(cfg: Config) -> Path | None:
    """The folder of the preset's own trained weights (`weights:` in its YAML), or None."""
    if not cfg.weights:
        return None
    return Path(str(resources.files("configs").joinpath(cfg.weights)))


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("configs").iterdir() if p.name.endswith(".yaml"))


def load_config(name_or_path: str | Path = "tiny") -> Config:
    """Load a preset by name (`tiny`, `longlive`) or by path to a YAML file."""
    text_path = str(name_or_path)
    path = Path(text_path)
    if not path.suffix and not path.is_file():
        candidate = resources.files("configs").joinpath(f"{text_path}.yaml")
        if not candidate.is_file():
            raise ConfigError(f"no config named {text_path!r}; presets: {', '.join(preset_names())}, or give a path to a .yaml file")
        raw = candidate.read_text()
        source = f"configs/{text_path}.yaml"
    else:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        raw = path.read_text()
        source = str(path)
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source} is not valid YAML{at}") from None
    return config_from_mapping(data or {}, source)
