#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and PyTorch: the kernel tests on the GPU, then the
# full-size bench (bf16; FP8 linear layers; the TAEHV fast decoder), then a short table.
# Needs only torch and triton (+ pytest for the kernel tests); no aiortc, av or weights.
#   bash bench/gpu.sh [OUTDIR]        (results as JSON in OUTDIR, default bench-results/)
# BENCH_CONFIG (default longlive), BENCH_DEVICE (default auto) and BLOCKS (default 10) let the
# same script be tried end to end on a CPU with the tiny config.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench-results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not found"
"$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name(0))'
"$PY" -c 'import triton; print("triton", triton.__version__)' 2>/dev/null || echo "triton: not installed"

echo "== compiled kernels (registers, spills, shared memory) for this GPU"
arch=$("$PY" -c 'import torch; M, m = torch.cuda.get_device_capability(); print(10 * M + m)' 2>/dev/null || echo 90)
"$PY" -m longlive kernels --config "${BENCH_CONFIG:-longlive}" --arch "$arch" --json "$OUT/kernels-sm_$arch.json" \
  2>&1 | tee "$OUT/kernels.log" | grep -v "Warning\|warn_once" | head -40

echo "== kernel tests (GPU)"
if ! "$PY" -c 'import pytest, hypothesis' 2>/dev/null; then
  "$PY" -m pip install -q pytest hypothesis 2>/dev/null || echo "pytest/hypothesis missing and not installable here"
fi
kernels_rc=1
if "$PY" -c 'import pytest' 2>/dev/null; then
  golden=""   # the official outputs through the compiled kernels, where the fixtures travelled along
  if [ -n "${LONGLIVE_FIXTURES:-}" ] || [ -d ../shared/fixtures ] || [ -d shared/fixtures ]; then
    golden=tests/test_golden_triton.py
  fi
  "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_fp8.py $golden 2>&1 \
    | tee "$OUT/kernel-tests.log" | tail -5
  kernels_rc=${PIPESTATUS[0]}
fi

run_bench() {  # name, extra args
  local name="$1"; shift
  echo "== bench: $name"
  "$PY" -m longlive bench --config "${BENCH_CONFIG:-longlive}" --device "${BENCH_DEVICE:-auto}" \
    --blocks "${BLOCKS:-10}" --json "$OUT/bench-$name.json" "$@" \
    2>&1 | tee "$OUT/bench-$name.log" | grep -v "^INFO" || true
}
run_bench bf16
run_bench fp8 --fp8 --no-kernels
run_bench taehv --decoder taehv --no-kernels
run_bench fp8-taehv --fp8 --decoder taehv --no-kernels

echo "== summary"
"$PY" - "$OUT" "$kernels_rc" <<'PYEOF'
import json, sys
from pathlib import Path
out, rc = Path(sys.argv[1]), int(sys.argv[2])
print(f"kernel tests: {'passed' if rc == 0 else 'FAILED or not run'}")
print(f"{'run':<11}{'DiT ms':>8}{'dec ms':>8}{'e2e fps':>9}{'TTFF ms':>9}{'switch ms':>10}{'peak GB':>9}{'x floor':>8}")
for name in ("bf16", "fp8", "taehv", "fp8-taehv"):
    p = out / f"bench-{name}.json"
    if not p.exists():
        print(f"{name:<11}(no result)")
        continue
    r = json.loads(p.read_text())
    g = lambda k, d=1: "n/a" if r.get(k) is None else f"{r[k]:.{d}f}"
    print(f"{name:<11}{g('dit_ms_per_block'):>8}{g('decode_ms_per_block'):>8}{g('end_to_end_fps'):>9}"
          f"{g('time_to_first_frame_ms', 0):>9}{g('prompt_switch_ms', 0):>10}{g('peak_memory_gb', 2):>9}{g('ratio_to_floor', 2):>8}")
bf = out / "bench-bf16.json"
if bf.exists():
    for k in json.loads(bf.read_text()).get("kernels", []):
        if "kernel" in k:
            t = k.get("triton_ms")
            print(f"  {k['kernel']:<26} triton {('n/a' if t is None else f'{t:.3f}'):>8} ms   "
                  f"{k.get('torch_path', 'torch')} {k.get('torch_ms', float('nan')):.3f} ms")
PYEOF
