"""pytest plugin (`-p kernel_call_counter`): counts the calls that reach each Triton kernel
wrapper and writes them to $LONGLIVE_KERNEL_CALLS when the session ends. Used by
test_golden_triton.py to prove the golden tests it reruns went through the Triton path.

With $LONGLIVE_ROWS_BY_REFERENCE set to a test name's start (`test_stream`), those tests run
the per-row kernels (RMSNorm + RoPE, modulated LayerNorm, gated residual) through the torch
references and only attention through Triton; their calls are counted under `<name>:<kernel>`.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest

CALLS: Counter = Counter()
WRAPPERS = {"triton_attention": ("attention",),
            "triton_fused": ("rms_norm_rope", "modulated_layer_norm", "gated_residual", "rms_norm_channels")}
ROW_KERNELS = ("rms_norm_rope", "modulated_layer_norm", "gated_residual")
_running: list[str] = [""]           # the name start of the test running now, when it is one of those


def pytest_configure(config):
    import importlib

    from kernels import reference

    for module, names in WRAPPERS.items():
        mod = importlib.import_module(f"kernels.{module}")
        CALLS[f"interpreted:{module}"] = int(bool(mod.INTERPRETED))
        for name in names:
            real = getattr(mod, name)

            def counted(*args, _real=real, _name=name, **kwargs):
                if _running[0]:
                    CALLS[f"{_running[0]}:{_name}"] += 1
                    if _name in ROW_KERNELS:
                        return getattr(reference, _name)(*args, **kwargs)
                CALLS[_name] += 1
                return _real(*args, **kwargs)

            setattr(mod, name, counted)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    start = os.environ.get("LONGLIVE_ROWS_BY_REFERENCE", "")
    _running[0] = start if start and item.name.startswith(start) else ""
    try:
        yield
    finally:
        _running[0] = ""


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("LONGLIVE_KERNEL_CALLS")
    if path:
        with open(path, "w") as f:
            json.dump(dict(CALLS), f)
