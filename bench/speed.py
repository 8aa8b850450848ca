"""`longlive bench`: the speed of the generator on this machine, with random weights.

Speed does not depend on weight values, so the full-size model runs with seeded random
weights and anybody with a GPU can measure without downloading anything. Imports only
streaming, kernels and torch-level libraries (GPU machines have no aiortc or av).

Reported (printed, and written as JSON where `--json` says): per-block DiT ms and decode ms (VAE + uint8
conversion + host copy), end-to-end FPS, time to first frame, prompt switch cost
(re-cache + first block), the switch to a never-seen prompt (asked -> its first block, and
the longest gap between two blocks meanwhile: the freeze a viewer sees) with the text
encoder resident and offloaded, encoding beside generation as the server does and inline
on the generation thread, peak GPU memory, device and versions, the FLOPs of a block and
the ratio of the measured time to the FLOP floor (FLOPs / the device's dense bf16 rate),
and, where Triton runs, each kernel beside the best torch path.

    longlive bench --config longlive --blocks 10 --json bench.json
    python -m longlive bench ...        (the same, where the `longlive` script is not installed)

Without `--config` it measures what the machine can run: the full `longlive` preset on a
CUDA GPU, the embedded default (`toy`) on a CPU, and says which in one line. While it runs
it reports each warm-up and measured block and each later phase on stderr, one line each.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import threading
import time
from typing import Any, Callable

import torch

from streaming.config import Config, load_config
from streaming.dit import CausalDiT
from streaming.pipeline import DTYPES, VideoPipeline, resolve_device

log = logging.getLogger(__name__)

# dense bf16 matrix throughput a well-fed kernel reaches (TFLOP/s), by device name
PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0, "A100": 250.0, "L40S": 300.0, "RTX 4090": 160.0}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


# -- FLOPs ---------------------------------------------------------------------------
def dit_flops(cfg: Config) -> dict[str, float]:
    """FLOPs of one DiT forward at steady state (a block against a full window), counted
    on the meta device (no memory, no compute), and of a whole block."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        dit = CausalDiT(cfg.model)
    w = cfg.window
    window = dit.new_window(w.local_attn_size, w.sink_size, cfg.frame_seq_length)
    prompt = dit.encode_prompt(torch.zeros(1, cfg.model.text_len, cfg.model.text_dim, device="meta"))
    f = cfg.latent_frames_per_block
    window.end = window.filled = w.local_attn_size - f   # the block fills the window exactly
    x = torch.zeros(1, f, cfg.model.in_dim, cfg.latent_height, cfg.latent_width, device="meta")
    with FlopCounterMode(display=False) as counter:
        dit(x, torch.zeros(1, f, device="meta"), prompt, window, window.end)
    per_forward = float(counter.get_total_flops())
    forwards = len(cfg.schedule.denoising_steps) + 1  # denoising steps + the context pass
    return {"dit_tflop_per_forward": per_forward / 1e12, "dit_tflop_per_block": per_forward * forwards / 1e12}


def decoder_flops(decoder: Any, cfg: Config, device: torch.device, dtype: torch.dtype) -> float | None:
    """FLOPs of decoding one steady-state block (counted on a real run: a decoder's cache
    logic may need real tensors). None when it cannot be counted."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        shape = (1, cfg.latent_frames_per_block, cfg.model.in_dim, cfg.latent_height, cfg.latent_width)
        z = torch.randn(shape, device=device)
        decoder.reset()
        decoder.decode(z)
        with FlopCounterMode(display=False) as counter:
            decoder.decode(z)
        decoder.reset()
        return float(counter.get_total_flops()) / 1e12
    except Exception as exc:  # counting is informative only
        log.warning("could not count decoder FLOPs: %s", exc)
        return None


# -- timing --------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def switch_to_new_prompt(pipe: VideoPipeline, prompt: str, background: bool,
                         device: torch.device) -> tuple[float, float]:
    """Ask for `prompt` (never seen: the encoder runs) right after a block; returns the ms
    until its first block is done and the longest gap between two consecutive blocks
    meanwhile (ms). `background`: encoded on a thread of its own while blocks keep coming
    under the old prompt, switched at the first boundary after it is ready (the server's
    engine); else encoded inline on the generation thread, then switched."""
    _sync(device)
    t0 = last = time.perf_counter()
    if not background:
        pipe.switch_prompt(prompt, pipe.encode(prompt))
        pipe.next_frames()
        ms = _ms(t0)
        return ms, ms
    box: dict[str, Any] = {}

    def encode() -> None:
        try:
            if device.type == "cuda" and device.index is not None:
                torch.cuda.set_device(device.index)   # per thread, as the engine's encoder does
            box["embedding"] = pipe.encode(prompt)
        except Exception as e:  # re-raised on the generation thread
            box["error"] = e

    encoder = threading.Thread(target=encode, name="bench-encoder")
    encoder.start()
    gap, switched = 0.0, False
    try:
        while True:
            if not switched and not encoder.is_alive():
                if "error" in box:
                    raise box["error"]
                pipe.switch_prompt(prompt, box["embedding"])
                switched = True
            b = pipe.next_frames()
            now = time.perf_counter()
            gap, last = max(gap, now - last), now
            if switched and b.prompt == prompt:
                return (now - t0) * 1e3, gap * 1e3
    finally:
        encoder.join()


def _offload_text_encoder(pipe: VideoPipeline) -> bool:
    """Move the text encoder's weights to (pinned) host memory, visiting the GPU per encoding
    (the `text.placement: offload` setting). False where there is nothing to offload."""
    text = pipe.text
    if getattr(text, "device", torch.device("cpu")).type != "cuda" or not hasattr(text, "placement"):
        return False
    text.model.to("cpu")
    for p in text.model.parameters():
        try:
            p.data = p.data.pin_memory()
        except RuntimeError:  # locked-memory limit: unpinned copies still work, slower
            pass
    text.placement = "offload"
    torch.cuda.empty_cache()
    return True


def new_prompt_latency(pipe: VideoPipeline, device: torch.device, repeats: int = 2) -> dict[str, Any]:
    """Switch latency and freeze for never-seen prompts: encoder resident, then offloaded
    (null where it cannot be: on the CPU), each encoded beside generation and inline."""
    out: dict[str, Any] = {}
    take = 0
    for placement in ("resident", "offload"):
        suffix = "" if placement == "resident" else "_offload"
        if placement == "offload" and not _offload_text_encoder(pipe):
            for mode in ("background", "inline"):
                out[f"new_prompt_switch_{mode}{suffix}_ms"] = out[f"new_prompt_stall_{mode}{suffix}_ms"] = None
            continue
        for mode in ("background", "inline"):
            runs = []
            for _ in range(repeats):
                take += 1   # a prompt the encoder's cache has never seen
                runs.append(switch_to_new_prompt(pipe, f"a paper boat on a flooded street, take {take}",
                                                 mode == "background", device))
            out[f"new_prompt_switch_{mode}{suffix}_ms"] = statistics.median(r[0] for r in runs)
            out[f"new_prompt_stall_{mode}{suffix}_ms"] = statistics.median(r[1] for r in runs)
    return out


def run_bench(cfg: Config, device: torch.device, blocks: int = 8, warmup: int = 3, kernels: bool = True,
              seed: int = 0, peak: float | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`progress`, when given, is called with a line for each block of the warm-up and of the
    measured stretch, and for each phase between them."""
    say = progress or (lambda line: None)

    def timed_block(what: str, i: int, n: int) -> Any:
        _sync(device)
        t = time.perf_counter()
        b = pipe.next_frames()
        _sync(device)
        say(f"{what} {i}/{n}: {time.perf_counter() - t:.2f} s")
        return b

    dtype = DTYPES[cfg.runtime.dtype]
    say(f"building {cfg.name} ({cfg.video.width}x{cfg.video.height}) with random weights on {device}")
    t0 = time.perf_counter()
    pipe = VideoPipeline.random(cfg, device)
    _sync(device)
    build_s = _ms(t0) / 1e3
    say(f"built in {build_s:.1f} s")
    if device.type == "cuda":  # peak while running (weights, window, activations), not while building
        torch.cuda.reset_peak_memory_stats(device)
    prompts = ["a red fox running through fresh snow, cinematic",
               "a neon city street at night in the rain, reflections",
               "an astronaut floating above the earth, slow motion"]

    # warm up: the first stream, enough blocks to fill the window and turn it
    pipe.start(prompts[0], seed)
    n_warm = max(warmup, cfg.window.local_attn_size // cfg.latent_frames_per_block + 1)
    for i in range(n_warm):
        timed_block("warm-up block", i + 1, n_warm)

    # time to first frame: a fresh stream under a prompt not seen before
    _sync(device)
    t0 = time.perf_counter()
    pipe.start(prompts[1], seed + 1)
    first = pipe.next_frames()
    ttff = _ms(t0)
    say(f"time to first frame of a fresh stream: {ttff / 1e3:.2f} s")
    n_fill = cfg.window.local_attn_size // cfg.latent_frames_per_block + 1
    for i in range(n_fill):
        timed_block("filling the window, block", i + 1, n_fill)   # steady state: the window is full

    # steady state blocks
    dit_ms, dec_ms, frames = [], [], 0
    _sync(device)
    t0 = time.perf_counter()
    for i in range(blocks):
        b = pipe.next_frames()
        dit_ms.append(b.dit_ms)
        dec_ms.append(b.decode_ms)
        frames += len(b.frames)
        say(f"measured block {i + 1}/{blocks}: {(b.dit_ms + b.decode_ms) / 1e3:.2f} s")
    wall = _ms(t0)

    # prompt switch: re-cache + the first block under the new prompt (its encoding cached
    # as in a performance where prompts are prepared; the first encoding is timed apart)
    say("prompt switches (3, each a re-cache and a block)")
    t0 = time.perf_counter()
    pipe.text.encode(prompts[2])
    _sync(device)
    encode_ms = _ms(t0)
    switch_ms = []
    for i in range(3):
        pipe.switch_prompt(prompts[2 - (i % 2)])
        t0 = time.perf_counter()
        pipe.next_frames()
        switch_ms.append(_ms(t0))
        pipe.next_frames()
    block_ms = statistics.median(d + v for d, v in zip(dit_ms, dec_ms))
    peak_gb = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    say("never-seen prompts: encoded beside generation and inline")
    new_prompt = new_prompt_latency(pipe, device)   # last: it may offload the text encoder

    result: dict[str, Any] = {
        "config": cfg.name, "fp8": cfg.runtime.fp8, "decoder": cfg.vae.kind, "resolution": f"{cfg.video.width}x{cfg.video.height}", "dtype": str(dtype).replace("torch.", ""),
        "video_frames_per_block": int(len(b.frames)), "latent_frames_per_block": cfg.latent_frames_per_block,
        "window_frames": cfg.window.local_attn_size, "denoising_steps": len(cfg.schedule.denoising_steps),
        "blocks_timed": blocks,
        "dit_ms_per_block": statistics.median(dit_ms),
        "decode_ms_per_block": statistics.median(dec_ms),
        "block_ms": block_ms,
        "end_to_end_fps": frames / (wall / 1e3),
        "time_to_first_frame_ms": ttff,
        "first_block_video_frames": int(len(first.frames)),
        "prompt_switch_ms": statistics.median(switch_ms),
        "recache_ms": max(0.0, statistics.median(switch_ms) - block_ms),
        "text_encode_ms": encode_ms,
        **new_prompt,
        "build_s": build_s,
        "realtime_factor": (frames / (wall / 1e3)) / cfg.video.fps,
    }
    say("counting FLOPs")
    result.update(dit_flops(cfg))
    vae_tflop = decoder_flops(pipe.decoder, cfg, device, dtype)
    result["decode_tflop_per_block"] = vae_tflop
    peak = peak or peak_tflops(device)
    total_tflop = result["dit_tflop_per_block"] + (vae_tflop or 0.0)
    floor_ms = total_tflop / peak * 1e3 if peak else None
    result.update({
        "peak_tflops_assumed": peak,
        "achieved_tflops": total_tflop / (block_ms / 1e3),
        "floor_ms_per_block": floor_ms,
        "floor_fps": len(b.frames) / (floor_ms / 1e3) if floor_ms else None,
        "ratio_to_floor": block_ms / floor_ms if floor_ms else None,
        "peak_memory_gb": peak_gb,
    })
    result.update(environment(device))
    if kernels:
        say("each kernel beside the torch path (--no-kernels skips this)")
        result["kernels"] = kernel_table(cfg, device, dtype)
    return result


def kernel_table(cfg: Config, device: torch.device, dtype: torch.dtype) -> list[dict[str, Any]]:
    from .kernel_speed import benchmark_kernels

    try:
        return benchmark_kernels(cfg, device, dtype)
    except Exception as exc:  # a broken kernel must not hide the model numbers
        log.exception("kernel benchmark failed")
        return [{"error": f"{type(exc).__name__}: {exc}"}]


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine()),
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    import kernels
    env["kernel_mode"] = kernels.mode()
    return env


# -- presentation --------------------------------------------------------------------
def _flops(tflop: float | None) -> str:
    if tflop is None:
        return "n/a"
    return f"{tflop:.1f} TFLOP" if tflop >= 1 else f"{tflop * 1e3:.2f} GFLOP"


def format_table(r: dict[str, Any]) -> str:
    def f(key: str, unit: str = "", digits: int = 1) -> str:
        v = r.get(key)
        return "n/a" if v is None else f"{v:.{digits}f}{unit}"

    lines = [
        f"LongLive bench: {r['config']} {r['resolution']} {r['dtype']}{' +fp8' if r.get('fp8') else ''} "
        f"decoder={r.get('decoder')} on {r['device']} "
        f"(torch {r['torch']}, triton {r['triton']}, kernels={r['kernel_mode']})",
        f"  DiT per block          {f('dit_ms_per_block', ' ms')}",
        f"  decode per block       {f('decode_ms_per_block', ' ms')}  (VAE + uint8 + host copy)",
        f"  end-to-end             {f('end_to_end_fps', ' fps')}  ({f('realtime_factor', 'x', 2)} real time)",
        f"  time to first frame    {f('time_to_first_frame_ms', ' ms')}",
        f"  prompt switch          {f('prompt_switch_ms', ' ms')}  (re-cache ~{f('recache_ms', ' ms')}, + first block)",
        *(f"  new prompt, {where:<10} {f(f'new_prompt_switch_background{x}_ms', ' ms')} to its first block, "
          f"longest gap {f(f'new_prompt_stall_background{x}_ms', ' ms')} (encoded beside generation); "
          f"inline {f(f'new_prompt_switch_inline{x}_ms', ' ms')}"
          for where, x in (("resident", ""), ("offloaded", "_offload"))),
        f"  FLOPs per block        DiT {_flops(r.get('dit_tflop_per_block'))}, decode {_flops(r.get('decode_tflop_per_block'))}",
    ]
    if r.get("floor_ms_per_block"):
        lines.append(f"  FLOP floor             {f('floor_ms_per_block', ' ms')} per block ({f('floor_fps', ' fps')}); "
                     f"measured/floor {f('ratio_to_floor', 'x', 2)}, {f('achieved_tflops', ' TFLOP/s', 0)}")
    if r.get("peak_memory_gb") is not None:
        lines.append(f"  peak GPU memory        {f('peak_memory_gb', ' GB', 2)}")
    rows = [k for k in r.get("kernels", []) if "kernel" in k]
    if rows:
        lines.append("  kernel                 shape                        triton ms   torch ms  (torch path)")
        for k in rows:
            tm = "n/a" if k.get("triton_ms") is None else f"{k['triton_ms']:.3f}"
            lines.append(f"  {k['kernel']:<22} {str(k.get('shape', '')):<28} {tm:>9} {k.get('torch_ms', float('nan')):>10.3f}"
                         f"  ({k.get('torch_path', '')})")
    for k in r.get("kernels", []):
        if "error" in k:
            lines.append(f"  kernels: {k['error']}")
    return "\n".join(lines)


def default_config(device: torch.device) -> tuple[str, str]:
    """The preset to measure when `--config` is not given, and the line that says why: the full
    model on a GPU; on a CPU, where it would take minutes a block, the embedded default."""
    from streaming.config import EMBEDDED_DEFAULT as default

    if device.type == "cuda":
        return "longlive", (f"the full longlive preset on {device} ({torch.cuda.get_device_name(device)}); "
                            f"--config {default} for the embedded default")
    why = "no GPU here" if not torch.cuda.is_available() else f"--device {device}"
    return default, f"{why}, so the embedded default ({default}) on the CPU; --config longlive for the full model"


def run(args: argparse.Namespace) -> int:
    """`longlive bench`: prints the table, and writes the JSON only where `--json` says."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = resolve_device(args.device)
    config = args.config
    if config is None:
        config, line = default_config(device)
        print(f"longlive bench: {line}", file=sys.stderr, flush=True)
    cfg = load_config(config)
    if args.fp8:
        cfg = cfg.replace(runtime={"fp8": True})
    if args.decoder:
        cfg = cfg.replace(vae={"kind": args.decoder})
    result = run_bench(cfg, device, args.blocks, args.warmup, kernels=not args.no_kernels, peak=args.peak_tflops,
                       progress=lambda line: print(f"bench: {line}", file=sys.stderr, flush=True))
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0
