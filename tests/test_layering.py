"""streaming/ and kernels/ import only torch-level libraries (GPU machines have no aiortc)."""

from __future__ import annotations

import subprocess
import sys

from golden import REPO

FORBIDDEN = ["aiohttp", "aiortc", "av", "msgpack", "anthropic", "asyncio"]


def test_streaming_and_kernels_import_without_server_libraries():
    code = (
        "import sys, pkgutil, importlib\n"
        f"for name in {FORBIDDEN[:-1]!r}: sys.modules[name] = None\n"
        "import streaming, kernels\n"
        "for pkg in (streaming, kernels):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if m.name.startswith('kernels.') and 'triton' not in sys.modules and m.name not in ('kernels.reference', 'kernels.dispatch'):\n"
        "            try: import triton\n"
        "            except ImportError: continue\n"
        "        importlib.import_module(m.name)\n"
        "bad = [n for n in ('aiohttp', 'aiortc', 'av', 'msgpack', 'anthropic') if sys.modules.get(n) is not None]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_no_source_file_in_streaming_or_kernels_names_a_server_library():
    for folder in ("streaming", "kernels"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            for lib in FORBIDDEN:
                assert f"import {lib}" not in text and f"from {lib} " not in text and f"from {lib}." not in text, \
                    f"{path.relative_to(REPO)} imports {lib}"


def test_longlive_bench_runs_without_aiortc_or_pyav(tmp_path):
    """GPU machines have torch and triton but no aiortc/av: the bench command must run there."""
    out = tmp_path / "bench.json"
    code = (
        "import sys\n"
        "for name in ('av', 'aiortc', 'anthropic'): sys.modules[name] = None\n"
        "from server import cli\n"
        f"sys.exit(cli.main(['bench', '--config', 'tiny', '--device', 'cpu', '--blocks', '1', '--warmup', '1',"
        f" '--no-kernels', '--json', {str(out)!r}]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert out.is_file() and "end-to-end" in run.stdout
