#!/usr/bin/env bash
# The GPU check of the triton backend, for a bare CUDA machine (an H200 was the target), in
# under 5 minutes: installs what it needs (wheels from .whl/ when that folder exists, else the
# package registry), prints versions, runs the CUDA tests, the benchmark on CUDA and a
# CUDA-graph capture of a training step. Results go to $OUT (default ./gpu-results).
# Usage: bash benchmarks/gpu_check.sh   (from anywhere; each step has its own time limit)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, keep going
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
    echo "   ok"; tail -n 3 "$OUT/$name.log"
  else
    local rc=$?; status=1
    echo "   FAILED (exit $rc)"; tail -n 40 "$OUT/$name.log"
  fi
}

if [ ! -d .venv-gpu ]; then "$PY" -m venv .venv-gpu; fi
. .venv-gpu/bin/activate
need="torch==2.13.0 einops pytest hypothesis triton==3.9.0"
if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
  step install 240 pip install -q --no-index --find-links .whl $need
else
  step install 240 pip install -q $need
fi
step install-revin 60 pip install -q --no-deps -e .

python - <<'PY' | tee "$OUT/versions.txt" || true
import platform, torch, triton
print("python", platform.python_version(), "| torch", torch.__version__, "| triton", triton.__version__)
print("cuda", torch.version.cuda, "| available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0))
import revin_fn.backends as b
print("backends", b.names())
PY

unset TRITON_INTERPRET
step triton-tests 120 python -m pytest -q -x tests/test_triton.py
step cuda-graph 60 python benchmarks/cuda_graph_check.py
step other-tests 120 python -m pytest -q -x tests/test_functional.py tests/test_gradients.py tests/test_module.py
step bench 180 python benchmarks/bench_revin.py --device cuda --json "$OUT/gpu.json"
cp "$OUT/cuda-graph.log" "$OUT/cuda_graph.json" 2>/dev/null || true
echo "results in $OUT (exit $status)"
exit $status
