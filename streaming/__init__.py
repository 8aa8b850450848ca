"""The generation world: LongLive's causal DiT, KV window, sampler and block loop.

Imports only torch, numpy and small pure-Python libraries (no asyncio, no network), so it
runs offline and on machines that have nothing but torch and triton.
"""

from .config import Config, ConfigError, load_config
from .dit import CausalDiT, CrossKV
from .generator import GeneratorSnapshot, StreamingGenerator
from .kv_window import KVWindow
from .noise import RecordedNoise, SeededNoise
from .schedule import Schedule
from .weights import WeightsError, build_dit, load_dit, locate

__all__ = [
    "Config", "ConfigError", "load_config", "CausalDiT", "CrossKV", "GeneratorSnapshot", "StreamingGenerator",
    "KVWindow", "RecordedNoise", "SeededNoise", "Schedule", "WeightsError", "build_dit", "load_dit", "locate",
]
