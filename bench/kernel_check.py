"""`longlive kernels`: compile every Triton launch of the generator for a GPU, on any machine.

The generator runs one block, a prompt switch (the re-cache) and a VAE decode with the
config's real widths, head size and dtype, but one DiT layer and a small picture, inside
`bench.compile_report.offline_compile`: every kernel launch it makes is compiled for the chosen GPU
architectures (sm_90 for H100/H200 by default) and nothing runs on a GPU. A kernel's
compiled code depends on its constexprs (head size, tile sizes, dtypes) and on the
alignment of its arguments, not on the number of tokens, so the small picture is chosen
to keep the full size's alignments (tokens per frame = 8 mod 16, as 1560 is).

Reported per architecture and distinct kernel: registers, register spills, shared memory
against the per-block limit, and the tensor-core instructions used; every tile config the
attention autotuner may try is compiled as well. Exit status 1 if a launch the generator
makes spills or does not fit. Needs torch and triton only (no GPU, no aiortc/av).

    longlive kernels --config longlive --arch 90 --arch 89 --json kernels.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from streaming.config import Config, load_config
from streaming.errors import UserError
from streaming.generator import StreamingGenerator
from streaming.pipeline import DTYPES, make_decoder
from streaming.weights import build_dit

from . import compile_report

DEFAULT_ARCHS = (90,)


def small_config(cfg: Config) -> Config:
    """The config's widths, heads, dtype and window on one layer and a 64x96 picture
    (latent 8x12: 24 tokens per frame, 8 mod 16 like the full size's 1560)."""
    sy, sx = cfg.model.patch_size[1], cfg.model.patch_size[2]
    return cfg.replace(model={"num_layers": 1}, video={"height": 8 * 4 * sy, "width": 8 * 6 * sx})


def model_launches(cfg: Config, arch: int) -> list[compile_report.CompiledLaunch]:
    """The distinct kernels one generator block, a prompt switch and a decode compile to."""
    small = small_config(cfg)
    dtype = DTYPES[cfg.runtime.dtype]
    cpu = torch.device("cpu")
    gen_torch = torch.Generator().manual_seed(0)
    text = lambda: torch.randn(1, small.model.text_len, small.model.text_dim, generator=gen_torch)  # noqa: E731
    with compile_report.offline_compile(arch) as launches, torch.no_grad():
        dit = build_dit(small, cpu, dtype)
        gen = StreamingGenerator(dit, small)
        with compile_report.label_launches("DiT block"):
            gen.reset(text().to(dtype))
            latents = gen.next_block()
            gen.next_block()
        with compile_report.label_launches("prompt switch"):
            gen.switch_prompt(text().to(dtype))
            gen.next_block()
        if small.vae.kind == "wan":
            with compile_report.label_launches("VAE decode"):
                decoder = make_decoder(small, None, cpu, dtype)
                decoder.decode(latents)
                decoder.decode(latents)
    return launches


def check(cfg: Config, archs: tuple[int, ...]) -> tuple[list[compile_report.CompiledLaunch], list[compile_report.CompiledLaunch]]:
    """(launches the generator makes, attention autotuner candidates), for every arch."""
    used, candidates = [], []
    head_dim = cfg.model.dim // cfg.model.num_heads
    for arch in archs:
        used += model_launches(cfg, arch)
        candidates += compile_report.attention_candidates(arch, head_dim, cfg.model.num_heads, DTYPES[cfg.runtime.dtype])
    return used, candidates


def run(args: argparse.Namespace) -> int:
    """`longlive kernels`: the report on stdout (and as JSON where `--json` says); 1 if a launch does not fit."""
    cfg = load_config(args.config)
    archs = tuple(args.arch or DEFAULT_ARCHS)
    unknown = [a for a in archs if a not in compile_report.SHARED_MEMORY_PER_BLOCK]
    if unknown:
        raise UserError(f"unknown compute capability {unknown[0]}; known: "
                         f"{', '.join(map(str, compile_report.SHARED_MEMORY_PER_BLOCK))}")
    used, candidates = check(cfg, archs)
    print(f"Kernels of {cfg.name} ({cfg.runtime.dtype}), compiled for {', '.join(f'sm_{a}' for a in archs)}:")
    print(compile_report.format_table(used))
    print("\nAttention tile configs the autotuner may try (those that do not fit are skipped on that GPU):")
    print(compile_report.format_table(candidates))
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

