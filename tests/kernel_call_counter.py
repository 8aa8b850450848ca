"""pytest plugin (`-p kernel_call_counter`): counts the calls that reach each Triton kernel
wrapper and writes them to $LONGLIVE_KERNEL_CALLS when the session ends. Used by
test_golden_triton.py to prove the golden tests it reruns went through the Triton path."""

from __future__ import annotations

import json
import os
from collections import Counter

CALLS: Counter = Counter()
WRAPPERS = {"triton_attention": ("attention",),
            "triton_fused": ("rms_norm_rope", "modulated_layer_norm", "gated_residual", "rms_norm_channels")}


def pytest_configure(config):
    import importlib

    for module, names in WRAPPERS.items():
        mod = importlib.import_module(f"kernels.{module}")
        CALLS[f"interpreted:{module}"] = int(bool(mod.INTERPRETED))
        for name in names:
            real = getattr(mod, name)

            def counted(*args, _real=real, _name=name, **kwargs):
                CALLS[_name] += 1
                return _real(*args, **kwargs)

            setattr(mod, name, counted)


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("LONGLIVE_KERNEL_CALLS")
    if path:
        with open(path, "w") as f:
            json.dump(dict(CALLS), f)
