#!/bin/bash
# The one command for a lent GPU machine (CPython 3.12 with torch, lightning, numpy, scikit-learn, matplotlib,
# pillow, pyyaml, tqdm, transformers, safetensors, torch_geometric, pytest; no network): from the checkout's root,
# with the wheels it lacks in .whl/ (the device set-up script downloads them), run
#
#     OUT=/some/folder bash benchmarks/gpu_run.sh
#
# It installs .whl/*.whl into a temporary folder, then runs benchmarks/gpu_check.py --device cuda (full form), the
# `-m gpu` tests and benchmarks/bench_compile.py --device cuda (a compiled training step against eager), and ends
# within 400 s: gpu_check gets what is left after the install minus 160 s, the tests 60 s, bench_compile 75 s.
# Writes into $OUT (flat, 8 files): env.txt, pip.log, gpu_check.json (rewritten after every row, so a timeout
# keeps the rows done), gpu_check.md (the table), gpu_check.log (progress and tracebacks), pytest_gpu.log,
# bench_compile.md (its tables), bench_compile.log. Exit code: 0 when all three passed, else 1.
START=$SECONDS
TOTAL_S=400
TESTS_S=60
COMPILE_S=75
[ -f pyproject.toml ] || { echo "gpu_run.sh: run from the hscl checkout's root"; exit 2; }
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"

S=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --target "$S" .whl/*.whl > "$OUT/pip.log" 2>&1
echo "pip rc=$?" >> "$OUT/pip.log"
export PYTHONPATH=$S:$PWD/src PYTHONUNBUFFERED=1

{
    date -u '+%Y-%m-%d %H:%M:%S UTC'
    git rev-parse HEAD 2>/dev/null || echo "commit: unknown (no .git)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
    python3 -c "import sys, torch, lightning; print(sys.version.split()[0], torch.__version__, 'CUDA', torch.version.cuda, 'lightning', lightning.__version__)"
    lscpu | grep 'Model name'
    nproc
} > "$OUT/env.txt" 2>&1

# what is left for gpu_check: the total, minus the time spent, the tests and bench_compile (+5 s each to kill)
# and 15 s of slack (timeout's 10 s grace before SIGKILL, the writing of the logs)
CHECK_S=$((TOTAL_S - (SECONDS - START) - TESTS_S - 5 - COMPILE_S - 5 - 15 - 10))
timeout -k 10 "$CHECK_S" python3 benchmarks/gpu_check.py --device cuda --json $OUT/gpu_check.json \
    > "$OUT/gpu_check.md" 2> "$OUT/gpu_check.log"
CHECK_RC=$?
echo "gpu_check rc=$CHECK_RC (limit ${CHECK_S} s; 124: timed out)" >> "$OUT/gpu_check.log"
tail -n 40 "$OUT/gpu_check.md"

timeout -k 5 "$TESTS_S" python3 -m pytest -q -m gpu -p no:cacheprovider tests \
    --ignore=tests/engine/sweep/test_sweep_postgres.py > "$OUT/pytest_gpu.log" 2>&1
TEST_RC=$?
echo "pytest rc=$TEST_RC (limit ${TESTS_S} s; 124: timed out)" >> "$OUT/pytest_gpu.log"
tail -n 15 "$OUT/pytest_gpu.log"
timeout -k 5 "$COMPILE_S" python3 benchmarks/bench_compile.py --device cuda --steps 10 --repeats 2 \
    > "$OUT/bench_compile.md" 2> "$OUT/bench_compile.log"
COMPILE_RC=$?
echo "bench_compile rc=$COMPILE_RC (limit ${COMPILE_S} s; 124: timed out)" >> "$OUT/bench_compile.log"
tail -n 12 "$OUT/bench_compile.md"
echo "gpu_run.sh: gpu_check rc=$CHECK_RC, pytest rc=$TEST_RC, bench_compile rc=$COMPILE_RC, $((SECONDS - START)) s in all"
[ "$CHECK_RC" -eq 0 ] && [ "$TEST_RC" -eq 0 ] && [ "$COMPILE_RC" -eq 0 ]
