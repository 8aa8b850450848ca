"""The compile report: the kernels' real launches compiled for a GPU this machine does not have.

Inside `offline_compile(arch)` the Triton wrappers run exactly as they would on that GPU,
but on placeholder CPU tensors and against a stand-in Triton driver that only names the
target (say sm_90). Triton then takes every launch through its whole pipeline down to a
cubin, with the ptxas its wheel ships, and launches nothing. Each distinct compiled kernel
is reported with what decides whether it can run well there: registers per thread, local
memory (register spills), shared memory against the architecture's per-block limit, and
the matrix instructions it uses (wgmma on Hopper, mma.sync before it).

It needs a process whose Triton was imported without `TRITON_INTERPRET`, and nothing else:
no GPU, no driver, no CUDA toolkit. `longlive kernels` runs it over a whole generator
block and VAE decode of a model config (`bench.kernel_check`).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from kernels import _runtime
from kernels._runtime import SHARED_MEMORY_PER_BLOCK

# PTX instructions worth counting: which tensor-core path and which copy engine a kernel uses
INSTRUCTIONS = {
    "wgmma": "wgmma.mma_async",
    "mma": "mma.sync",
    "tma": "cp.async.bulk",
    "cp_async": "cp.async.",
    "ldmatrix": "ldmatrix",
}
_RESOURCES = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


class OfflineCompileError(RuntimeError):
    pass


@dataclass
class CompiledLaunch:
    """One distinct compiled kernel (what Triton would cache and launch) for one target."""

    kernel: str
    arch: int
    constants: dict
    num_warps: int
    num_stages: int
    shared: int                     # bytes of shared memory per block (dynamic, as Triton checks it)
    shared_limit: int
    registers: int | None           # per thread; None where cuobjdump could not be run
    spill_bytes: int | None         # local memory per thread (0: no register spills)
    instructions: dict = field(default_factory=dict)
    label: str = ""

    @property
    def fits(self) -> bool:
        return self.shared <= self.shared_limit

    @property
    def ok(self) -> bool:
        return self.fits and not self.spill_bytes

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(fits=self.fits, ok=self.ok)
        return d


def _nvidia_bin(name: str) -> Path | None:
    try:
        import triton.backends.nvidia as nv
    except ImportError:
        return None
    path = Path(nv.__file__).parent / "bin" / name
    return path if path.exists() else None


def _resources(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers, local bytes) of the cubin's kernel, read by the cuobjdump Triton ships."""
    tool = _nvidia_bin("cuobjdump")
    if tool is None:
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        out = subprocess.run([str(tool), "--dump-resource-usage", str(path)],
                             capture_output=True, text=True, check=False).stdout
    m = _RESOURCES.search(out)
    if m is None:
        return None, None
    return int(m.group(1)), int(m.group(4))


def _constants(kernel) -> dict:
    """The kernel's constexpr arguments by name (for the report)."""
    src = getattr(kernel, "src", None)
    fn = getattr(src, "fn", None)
    names = getattr(fn, "arg_names", [])
    out = {}
    for key, value in getattr(src, "constants", {}).items():
        idx = key[0] if isinstance(key, tuple) and len(key) == 1 else None
        if idx is not None and idx < len(names) and not isinstance(value, (torch.dtype,)):
            value = getattr(value, "value", value)
            if isinstance(value, (bool, int, float, str)):
                out[names[idx]] = value
    return out


def describe(kernel, arch: int, shared_limit: int, label: str = "") -> CompiledLaunch:
    md = kernel.metadata
    ptx = kernel.asm.get("ptx", "")
    regs, spill = _resources(kernel.asm["cubin"])
    return CompiledLaunch(
        kernel=getattr(md, "name", "?"), arch=arch, constants=_constants(kernel),
        num_warps=int(md.num_warps), num_stages=int(md.num_stages), shared=int(md.shared),
        shared_limit=shared_limit, registers=regs, spill_bytes=spill,
        instructions={k: ptx.count(v) for k, v in INSTRUCTIONS.items()}, label=label)


def _target_driver(arch: int):
    """A Triton driver that knows only its target: enough to compile, never to launch."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase

    class TargetOnlyDriver(DriverBase):
        # a device id no real GPU has, so Triton's per-device caches never mix the two
        DEVICE = -9000 - arch

        @classmethod
        def is_active(cls):
            return False

        def map_python_to_cpp_type(self, ty):
            raise OfflineCompileError("nothing launches while compiling offline")

        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_benchmarker(self):
            raise OfflineCompileError("nothing is timed while compiling offline")

        def get_current_device(self):
            return self.DEVICE

        def get_current_stream(self, device=None):
            return 0

    return TargetOnlyDriver()


@contextlib.contextmanager
def offline_compile(arch: int, shared_limit: int | None = None) -> Iterator[list]:
    """Within: every Triton launch compiles for sm_`arch` instead of running; yields the list
    that collects one `CompiledLaunch` per distinct compiled kernel (set `.label` as you go
    with `label_launches`). Kernel dispatch is forced onto the Triton path meanwhile."""
    from triton.runtime.driver import driver as holder
    from triton.runtime.jit import JITFunction

    from kernels import triton_attention

    if _runtime.is_interpreted(triton_attention._attention_fwd):
        raise OfflineCompileError("Triton was imported with TRITON_INTERPRET=1 in this process; compiling for a GPU "
                                  "needs a process started without it")
    if shared_limit is None:
        if arch not in SHARED_MEMORY_PER_BLOCK:
            raise OfflineCompileError(f"unknown shared memory size for sm_{arch}; known: "
                                      f"{', '.join(f'sm_{a}' for a in SHARED_MEMORY_PER_BLOCK)}")
        shared_limit = SHARED_MEMORY_PER_BLOCK[arch]

    launches: list[CompiledLaunch] = []
    seen: set[str] = set()
    original_run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = original_run(self, *args, grid=grid, warmup=True, **kwargs)
        if warmup:   # a compile the code asked for itself (to size a config), not a launch
            return kernel
        key = getattr(kernel, "hash", None) or str(id(kernel))
        if key not in seen:
            seen.add(key)
            launches.append(describe(kernel, arch, shared_limit, label=_LABEL["text"]))
        return kernel

    previous_driver = getattr(holder, "_active", None)
    previous_kernels = os.environ.get("LONGLIVE_KERNELS")
    holder.set_active(_target_driver(arch))
    JITFunction.run = compile_only
    os.environ["LONGLIVE_KERNELS"] = "triton"
    _runtime.set_offline_target((arch, shared_limit))
    try:
        yield launches
    finally:
        _runtime.set_offline_target(None)
        JITFunction.run = original_run
        holder._active = previous_driver
        if previous_kernels is None:
            os.environ.pop("LONGLIVE_KERNELS", None)
        else:
            os.environ["LONGLIVE_KERNELS"] = previous_kernels


_LABEL = {"text": ""}


@contextlib.contextmanager
def label_launches(text: str) -> Iterator[None]:
    """Name the launches compiled within (for the report)."""
    previous = _LABEL["text"]
    _LABEL["text"] = text
    try:
        yield
    finally:
        _LABEL["text"] = previous


def attention_candidates(arch: int, head_dim: int, num_heads: int, dtype: torch.dtype,
                         shared_limit: int | None = None) -> list[CompiledLaunch]:
    """Every tile config the autotuner may try for this head size, compiled for sm_`arch`,
    plus the default (untuned) choice for that architecture."""
    from kernels import triton_attention as ta

    q = torch.empty(1, 128, num_heads, head_dim, dtype=dtype)
    cache = torch.empty(1, 512, num_heads, head_dim, dtype=dtype)
    with offline_compile(arch, shared_limit) as launches:
        for config in ta.candidate_configs(head_dim):
            with label_launches("attention candidate {}x{} w{} s{}".format(*config)):
                ta.attention(q, cache[:, :320], cache[:, :320], config=config)
        with label_launches("attention default"):
            ta.attention(q, cache[:, :320], cache[:, :320])
    return launches


def format_table(launches: list[CompiledLaunch]) -> str:
    rows = [f"{'arch':<7}{'kernel':<28}{'label':<36}{'warps':>5}{'stages':>7}{'regs':>6}{'spill':>6}"
            f"{'smem KB':>9}{'limit':>7}  {'wgmma':>5}{'mma':>5}  ok"]
    for x in launches:
        rows.append(
            f"sm_{x.arch:<4}{x.kernel[:27]:<28}{x.label[:35]:<36}{x.num_warps:>5}{x.num_stages:>7}"
            f"{'?' if x.registers is None else x.registers:>6}{'?' if x.spill_bytes is None else x.spill_bytes:>6}"
            f"{x.shared / 1024:>9.1f}{x.shared_limit // 1024:>7}  {x.instructions.get('wgmma', 0):>5}"
            f"{x.instructions.get('mma', 0):>5}  {'yes' if x.ok else 'NO'}")
    return "\n".join(rows)
