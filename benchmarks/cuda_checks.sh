#!/usr/bin/env bash
# The checks that need a GPU, in one go, on a machine that has one (CI has none):
#   1. tests/track/test_cuda.py: the training thread never synchronises with the device;
#   2. the capture overhead of a GPU training loop (bench_overhead.py --device cuda), an MLP whose steps
#      keep the host busy and a small convolutional net whose steps keep the GPU busy;
#   3. the crash test (a SIGKILLed training process), then the tracking tests as a whole, where CUDA is present.
# Usage: bash benchmarks/cuda_checks.sh [LOG_DIR] [ROUNDS]
set -uo pipefail
logs=${1:-.}
rounds=${2:-10}
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import sys, torch, numpy, pandas, pyarrow; print('python', sys.version.split()[0], 'torch', torch.__version__,
'numpy', numpy.__version__, 'pandas', pandas.__version__, 'pyarrow', pyarrow.__version__)"
status=0
timeout 180 python3 -m pytest -q -p no:cacheprovider --tb=short tests/track/test_cuda.py 2>&1 | tee "$logs/test_cuda.log" \
    | grep -E "passed|failed|AssertionError|synchronised" || status=1
timeout 300 python3 benchmarks/bench_overhead.py --device cuda --model mlp conv --rounds "$rounds" 2>&1 \
    | tee "$logs/bench_cuda.log" || status=1
timeout 60 python3 -m pytest -q -p no:cacheprovider --tb=short tests/track/test_crash.py 2>&1 | tail -n 40 || status=1
if [ "${FULL:-0}" = 1 ]; then
    timeout 180 python3 -m pytest -q -p no:cacheprovider tests/track > "$logs/tests_track.log" 2>&1 || status=1
    tail -n 15 "$logs/tests_track.log"
fi
exit $status
