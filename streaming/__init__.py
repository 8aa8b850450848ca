"""The generation world: LongLive's causal DiT, KV window, sampler and block loop.

Imports only torch, numpy and small pure-Python libraries (no asyncio, no network), so it
runs offline and on machines that have nothing but torch and triton. The names below are
loaded on first use, so importing a light module (`streaming.errors`) costs no torch import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Config": "config", "ConfigError": "config", "load_config": "config",
    "CausalDiT": "dit", "CrossKV": "dit",
    "GeneratorSnapshot": "generator", "StreamingGenerator": "generator",
    "KVWindow": "kv_window",
    "RecordedNoise": "noise", "SeededNoise": "noise",
    "Schedule": "schedule",
    "WeightsError": "weights", "build_dit": "weights", "load_dit": "weights", "locate": "weights",
    "UserError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'streaming' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
