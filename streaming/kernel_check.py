"""`longlive kernels`: compile every Triton launch of the generator for a GPU, on any machine.

The generator runs one block, a prompt switch (the re-cache) and a VAE decode with the
config's real widths, head size and dtype, but one DiT layer and a small picture, inside
`kernels.aot.offline_compile`: every kernel launch it makes is compiled for the chosen GPU
architectures (sm_90 for H100/H200 by default) and nothing runs on a GPU. A kernel's
compiled code depends on its constexprs (head size, tile sizes, dtypes) and on the
alignment of its arguments, not on the number of tokens, so the small picture is chosen
to keep the full size's alignments (tokens per frame = 8 mod 16, as 1560 is).

Reported per architecture and distinct kernel: registers, register spills, shared memory
against the per-block limit, and the tensor-core instructions used; every tile config the
attention autotuner may try is compiled as well. Exit status 1 if a launch the generator
makes spills or does not fit. Needs torch and triton only (no GPU, no aiortc/av).

    python -m streaming.kernel_check --config longlive --arch 90 --arch 89 --json kernels.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from kernels import aot

from .config import Config, load_config
from .generator import StreamingGenerator
from .pipeline import DTYPES, make_decoder
from .weights import build_dit

DEFAULT_ARCHS = (90,)


def small_config(cfg: Config) -> Config:
    """The config's widths, heads, dtype and window on one layer and a 64x96 picture
    (latent 8x12: 24 tokens per frame, 8 mod 16 like the full size's 1560)."""
    sy, sx = cfg.model.patch_size[1], cfg.model.patch_size[2]
    return cfg.replace(model={"num_layers": 1}, video={"height": 8 * 4 * sy, "width": 8 * 6 * sx})


def model_launches(cfg: Config, arch: int) -> list[aot.CompiledLaunch]:
    """The distinct kernels one generator block, a prompt switch and a decode compile to."""
    small = small_config(cfg)
    dtype = DTYPES[cfg.runtime.dtype]
    cpu = torch.device("cpu")
    gen_torch = torch.Generator().manual_seed(0)
    text = lambda: torch.randn(1, small.model.text_len, small.model.text_dim, generator=gen_torch)  # noqa: E731
    with aot.offline_compile(arch) as launches, torch.no_grad():
        dit = build_dit(small, cpu, dtype)
        gen = StreamingGenerator(dit, small)
        with aot.label_launches("DiT block"):
            gen.reset(text().to(dtype))
            latents = gen.next_block()
            gen.next_block()
        with aot.label_launches("prompt switch"):
            gen.switch_prompt(text().to(dtype))
            gen.next_block()
        if small.vae.kind == "wan":
            with aot.label_launches("VAE decode"):
                decoder = make_decoder(small, None, cpu, dtype)
                decoder.decode(latents)
                decoder.decode(latents)
    return launches


def check(cfg: Config, archs: tuple[int, ...]) -> tuple[list[aot.CompiledLaunch], list[aot.CompiledLaunch]]:
    """(launches the generator makes, attention autotuner candidates), for every arch."""
    used, candidates = [], []
    head_dim = cfg.model.dim // cfg.model.num_heads
    for arch in archs:
        used += model_launches(cfg, arch)
        candidates += aot.attention_candidates(arch, head_dim, cfg.model.num_heads, DTYPES[cfg.runtime.dtype])
    return used, candidates


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="longlive", help="preset or YAML path (default longlive: full size)")
    p.add_argument("--arch", type=int, action="append", default=None, metavar="SM",
                   help=f"compute capability to compile for, repeatable: 80 A100, 86/89 RTX 30xx/40xx, 90 "
                        f"H100/H200, 120 RTX 50xx (default {', '.join(map(str, DEFAULT_ARCHS))})")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    archs = tuple(args.arch or DEFAULT_ARCHS)
    unknown = [a for a in archs if a not in aot.SHARED_MEMORY_PER_BLOCK]
    if unknown:
        raise ValueError(f"unknown compute capability {unknown[0]}; known: "
                         f"{', '.join(map(str, aot.SHARED_MEMORY_PER_BLOCK))}")
    used, candidates = check(cfg, archs)
    print(f"Kernels of {cfg.name} ({cfg.runtime.dtype}), compiled for {', '.join(f'sm_{a}' for a in archs)}:")
    print(aot.format_table(used))
    print("\nAttention tile configs the autotuner may try (those that do not fit are skipped on that GPU):")
    print(aot.format_table(candidates))
    bad = [x for x in used if not x.ok]
    if args.json:
        args.json.write_text(json.dumps({"config": cfg.name, "dtype": cfg.runtime.dtype, "archs": list(archs),
                                         "launches": [x.to_dict() for x in used],
                                         "attention_candidates": [x.to_dict() for x in candidates]}, indent=1))
        print(f"wrote {args.json}")
    if bad:
        print(f"{len(bad)} launch(es) spill registers or exceed shared memory", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    from ._cli import module_main
    return module_main("kernel_check", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
