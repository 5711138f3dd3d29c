#!/usr/bin/env bash
# One prepared GPU check, under ~8 minutes on a machine with one CUDA GPU (an H200 here):
#   1. the CUDA-marked tests (bf16 training, CUDA vs CPU prediction, streamed prediction on the GPU,
#      a 1-GPU torchrun on NCCL): `pytest -m cuda`;
#   2. benchmarks/gpu_bench.py: bf16 training against MONAI BasicUNet, 2D and 3D sliding window in memory
#      and streamed; its section goes into BENCHMARKS.md (copied to $OUT when set).
# Without CUDA it says so and exits 0. Python packages the machine lacks travel as wheels in .whl/
# (benchmarks/gpu_wheels.sh fetches them, here, with internet); they are installed to /tmp/site.
#   bash benchmarks/gpu_check.sh [--quick]
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python3}
QUICK=${1:-}
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device on this machine; nothing to check"
    exit 0
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
LOGS=${OUT:-/tmp/gpu_check}
mkdir -p "$LOGS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOGS/gpu.txt"
status=0
timeout 240 "$PY" -m pytest -m cuda -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$LOGS/pytest.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
timeout 270 "$PY" benchmarks/gpu_bench.py $QUICK --markdown BENCHMARKS.md --json "$LOGS/gpu_bench.json" 2>&1 \
    | tee "$LOGS/gpu_bench.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
cp BENCHMARKS.md "$LOGS/" 2>/dev/null || true
echo "gpu_check: exit $status"
exit $status
