"""Finding, reading, mapping and merging checkpoints. Nothing here downloads anything.

Layouts understood under a weights folder DIR (official, or every file directly in DIR):

    DIR/wan_models/Wan2.1-T2V-1.3B/diffusion_pytorch_model.safetensors   base DiT
    DIR/wan_models/Wan2.1-T2V-1.3B/Wan2.1_VAE.pth                         VAE
    DIR/wan_models/Wan2.1-T2V-1.3B/models_t5_umt5-xxl-enc-bf16.pth        text encoder
    DIR/wan_models/Wan2.1-T2V-1.3B/google/umt5-xxl/tokenizer.json         tokenizer
    DIR/longlive_models/models/longlive_base.pt                           LongLive DiT
    DIR/longlive_models/models/lora.pt                                    LongLive LoRA

Checkpoints are opened lazily (safetensors) or memory-mapped (torch zip pickles) and moved
to the device one tensor at a time, so a model is never held twice in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch
import torch.nn as nn

from .config import Config, InitConfig
from .dit import CausalDiT
from .errors import UserError

log = logging.getLogger(__name__)


class WeightsError(UserError, RuntimeError):
    """A weights problem the user can fix; the message is one sentence naming the file."""


FILE_NAMES = {
    "dit_base": "diffusion_pytorch_model.safetensors",
    "longlive": "longlive_base.pt",
    "lora": "lora.pt",
    "vae": "Wan2.1_VAE.pth",
    "t5": "models_t5_umt5-xxl-enc-bf16.pth",
    "taehv": "taew2_1.pth",
}
# other names a file may have: the toy world's trained weights (`longlive train`, docs/TOY_WORLD.md)
# keep the official key layout in safetensors files
OTHER_NAMES = {"vae": ("vae.safetensors",), "t5": ("text_encoder.safetensors",)}
OFFICIAL_DIRS = ("", "wan_models/Wan2.1-T2V-1.3B", "Wan2.1-T2V-1.3B", "longlive_models/models", "longlive_models",
                 "models", "taehv")
TOKENIZER_DIRS = ("google/umt5-xxl", "wan_models/Wan2.1-T2V-1.3B/google/umt5-xxl", "Wan2.1-T2V-1.3B/google/umt5-xxl",
                  "umt5-xxl", "")


@dataclass(frozen=True)
class WeightFiles:
    root: Path
    dit_base: Path | None = None
    longlive: Path | None = None
    lora: Path | None = None
    vae: Path | None = None
    t5: Path | None = None
    tokenizer: Path | None = None
    taehv: Path | None = None

    @property
    def dit(self) -> Path | None:
        """The DiT to load: LongLive's own (it replaces every base weight), else the base."""
        return self.longlive or self.dit_base


def locate(root: str | Path) -> WeightFiles:
    """Find the weight files under `root` in the official layout or flat."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise WeightsError(f"weights folder {root} does not exist")
    found: dict[str, Path] = {}
    for key, name in FILE_NAMES.items():
        for sub in OFFICIAL_DIRS:
            hits = [root / sub / n for n in (name, *OTHER_NAMES.get(key, ())) if (root / sub / n).is_file()]
            if hits:
                found[key] = hits[0]
                break
    for sub in TOKENIZER_DIRS:
        p = root / sub / "tokenizer.json"
        if p.is_file():
            found["tokenizer"] = p.parent
            break
    files = WeightFiles(root=root, **found)
    if files.dit is None:
        raise WeightsError(f"no DiT weights in {root}: expected {FILE_NAMES['longlive']} or "
                           f"{FILE_NAMES['dit_base']} (official layout or directly in the folder)")
    return files


# -- reading -----------------------------------------------------------------
def read_checkpoint(path: str | Path) -> Mapping[str, torch.Tensor]:
    """A state dict from .safetensors (lazy) or a torch pickle (memory-mapped when possible)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))  # safetensors maps the file; tensors are views
        except Exception as exc:
            raise WeightsError(f"{path} is not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:
        try:  # old (non-zip) pickles cannot be memory-mapped
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(f"{path} is not a readable torch checkpoint ({exc})") from None
    except Exception as exc:
        raise WeightsError(f"{path} is not a readable torch checkpoint ({exc})") from None
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _entry(obj: Mapping, path: Path, entries: Iterable[str]) -> Mapping[str, torch.Tensor]:
    for key in entries:
        if key in obj and isinstance(obj[key], Mapping):
            return obj[key]
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise WeightsError(f"{path} has none of the entries {', '.join(entries)} and is not a plain state dict "
                       f"(top-level keys: {', '.join(list(map(str, obj))[:8])})")


def _strip(key: str, prefixes: Iterable[str]) -> str:
    key = key.replace("_fsdp_wrapped_module.", "").replace("_orig_mod.", "")
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def dit_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The DiT state dict of a LongLive checkpoint (`generator`, `generator_ema` or `model`
    entry, keys prefixed `model.`) or of a base Wan2.1 file (no prefix)."""
    path = Path(path)
    sd = _entry(read_checkpoint(path), path, ("generator", "generator_ema", "model", "state_dict"))
    return {_strip(k, ("model.", "module.")): v for k, v in sd.items()}


def lora_state(path: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """LoRA pairs per module name: {"blocks.0.self_attn.q": (A [r, in], B [out, r])}.
    Reads `{generator_lora, critic_lora, step}` checkpoints and raw PEFT dicts."""
    path = Path(path)
    sd = _entry(read_checkpoint(path), path, ("generator_lora", "lora", "state_dict"))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        k = _strip(key, ("base_model.model.", "model."))
        for tag in ("lora_A", "lora_B"):
            marker = f".{tag}."
            if marker in k:
                module = k.split(marker)[0]
                pairs.setdefault(module, {})[tag] = value
                break
        else:
            raise WeightsError(f"{path}: key {key!r} is not a LoRA weight (expected ...lora_A/lora_B...)")
    broken = sorted(m for m, p in pairs.items() if len(p) != 2)
    if broken:
        raise WeightsError(f"{path}: LoRA modules without both A and B: {', '.join(broken[:6])}")
    return {m: (p["lora_A"], p["lora_B"]) for m, p in pairs.items()}


# -- loading into modules ----------------------------------------------------
def _short(keys: Iterable[str], n: int = 6) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_state(model: nn.Module, sd: Mapping[str, torch.Tensor], path: Path | str,
                allow_missing: Iterable[str] = ()) -> None:
    """One clear error for missing, unexpected or mis-shaped keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = set(expected) - set(sd) - set(allow_missing)
    unexpected = set(sd) - set(expected)
    shapes = [f"{k} {tuple(sd[k].shape)} != {expected[k]}" for k in sorted(set(sd) & set(expected))
              if tuple(sd[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if shapes:
        problems.append(f"mis-shaped {_short(shapes, 3)}")
    if problems:
        raise WeightsError(f"{path} does not fit this config ({'; '.join(problems)}); "
                           "is it the right file for the chosen --config?")


def assign_state(model: nn.Module, sd: Mapping[str, torch.Tensor], device: torch.device | str,
                 dtype_of: callable, delta: Mapping[str, callable] | None = None) -> None:
    """Move tensors one at a time into a (meta-device) model's parameters.

    `delta[name]()` (a LoRA product) is added in float32 on the device as the tensor moves,
    so at most one extra matrix exists at any time."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    delta = delta or {}
    for name, value in sd.items():
        owner, _, leaf = name.rpartition(".")
        mod = model.get_submodule(owner) if owner else model
        if name in buffers:
            mod.register_buffer(leaf, value.to(device=device, dtype=dtype_of(name)))
            continue
        if name not in params:
            continue
        if name in delta:
            t = value.to(device=device, dtype=torch.float32, copy=True)  # never add into the checkpoint
            t += delta[name](t.device)
            t = t.to(dtype_of(name))
        else:
            t = value.to(device=device, dtype=dtype_of(name))
        setattr(mod, leaf, nn.Parameter(t, requires_grad=False))


def lora_deltas(sd: Mapping[str, torch.Tensor], lora: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                alpha: float, path: Path | str) -> dict[str, callable]:
    """Per weight name, a function giving (alpha / rank) * B @ A in float32 on a device.

    Merging into the weights at load is exact and costs nothing at run time; computing each
    product only when its weight is moved keeps memory flat."""
    deltas: dict[str, callable] = {}
    for module, (a, b) in lora.items():
        key = f"{module}.weight"
        if key not in sd:
            raise WeightsError(f"{path}: LoRA targets {module!r}, which the DiT does not have")
        w = sd[key]
        rank = a.shape[0]
        if b.shape[1] != rank or (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise WeightsError(f"{path}: LoRA for {module} has A {tuple(a.shape)} and B {tuple(b.shape)}, "
                               f"which do not fit the weight {tuple(w.shape)}")
        scale = alpha / rank
        deltas[key] = lambda dev, a=a, b=b, scale=scale: scale * (b.to(dev, torch.float32) @ a.to(dev, torch.float32))
    return deltas


def _dit_dtype_of(dtype: torch.dtype):
    def dtype_of(name: str) -> torch.dtype:
        return torch.float32 if any(k in name for k in CausalDiT.FLOAT32_KEYS) else dtype
    return dtype_of


def shape_random_init(model: CausalDiT, init: InitConfig) -> CausalDiT:
    """Apply the `init` section's gains to a freshly drawn random DiT (see `InitConfig`):
    the prompt path (text embedding, cross-attention output and q/k norms) and the head.
    Deterministic (no random numbers); at the defaults it changes nothing."""
    if init.is_default:
        return model
    with torch.no_grad():
        for layer in model.text_embedding:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(init.text_embedding_gain)
        for i, blk in enumerate(model.blocks):
            blk.cross_attn.o.weight.mul_(init.cross_attn_gain)
            if init.cross_attn_sharpness:
                blk.cross_attn.norm_q.weight.mul_(init.cross_attn_sharpness[i])
                blk.cross_attn.norm_k.weight.mul_(init.cross_attn_sharpness[i])
        head = model.head.head
        head.weight.mul_(init.head_gain)
        if init.head_patch_share:
            a = init.head_patch_share
            for p in (head.weight, head.bias):   # output rows are (patch pixel, channel), pixel-major
                per_pixel = p.view(-1, model.cfg.out_dim, *p.shape[1:])
                first = per_pixel[:1].clone()
                per_pixel.mul_(1 - a).add_(first, alpha=a)
    return model


def build_dit(cfg: Config, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
              weights_seed: int | None = None) -> CausalDiT:
    """A DiT with seeded random weights (the embedded default, benchmarks), shaped by the
    config's `init` section."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.weights_seed if weights_seed is None else weights_seed)
        with device:
            model = shape_random_init(CausalDiT(cfg.model), cfg.init)
    return model.cast_(dtype).eval().requires_grad_(False)


def load_dit(cfg: Config, dit_path: str | Path, lora_path: str | Path | None = None,
             device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> CausalDiT:
    """A DiT from a checkpoint (LongLive or base Wan layout), with an optional LoRA merged."""
    dit_path = Path(dit_path)
    with torch.device("meta"):
        model = CausalDiT(cfg.model)
    sd = dit_state(dit_path)
    check_state(model, sd, dit_path)
    deltas = lora_deltas(sd, lora_state(lora_path), cfg.lora.alpha, lora_path) if lora_path is not None else None
    assign_state(model, sd, device, _dit_dtype_of(dtype), deltas)
    log.info("loaded DiT from %s%s", dit_path, f" + LoRA {lora_path}" if lora_path else "")
    return model.eval().requires_grad_(False)


def parameter_count(cfg: Config) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in CausalDiT(cfg.model).parameters())
