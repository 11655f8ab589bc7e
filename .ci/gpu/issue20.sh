#!/usr/bin/env bash
# Issue 20 on a CUDA GPU (about 60-120 s): qlabref.torch.QLABGrad's cost on CUDA.
#  1. `python3 -m qlabref.bench_torch_optim` on CUDA: torch SGD step, QLABGrad step, lean QLAB step and
#     their ratios for ResNet-18 (CIFAR stem) batch 128 and 512, MNIST MLP batch 64, paper CNN batch 64;
#     20 timed steps after 5 warm-up; table -> $OUT/issue20-bench.md (+ .json, + .log).
#  2. pytest: the counting tests (tests/test_torch_optim_cost.py: <= 2 reads, ops independent of the tensor
#     count, and on CUDA <= 2 synchronising calls per step via torch.cuda.set_sync_debug_mode) and the
#     CUDA-vs-CPU exactness test of the torch optimizer (test_torch_optim.py -k cuda). Log -> $OUT.
# Run from the repository root with qlabref installed; $OUT: a folder whose files come back.
set -u
OUT=${OUT:-/tmp/issue20-out}
mkdir -p "$OUT"
t0=$(date +%s)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"

echo "== issue20 bench (CUDA, 20 timed after 5 warm-up)"
timeout 110 python3 -m qlabref.bench_torch_optim --devices cuda --repeats 20 --warmup 5 \
    --json "$OUT/issue20-bench.json" --md "$OUT/issue20-bench.md" > "$OUT/issue20-bench.log" 2>&1
rc_bench=$?
grep -E "^\| |rounds in" "$OUT/issue20-bench.log" | cut -c1-220
echo "bench exit $rc_bench ($(( $(date +%s) - t0 )) s so far)"

echo "== issue20 tests (cost counters, CUDA sync count, CUDA exactness)"
left=$(( 145 - ($(date +%s) - t0) ))
if [ "$left" -lt 15 ]; then
    echo "tests skipped: only $left s left of the 150 s budget"; rc_tests=124
elif ! python3 -c "import pytest, hypothesis" 2>/dev/null; then
    echo "tests skipped: pytest/hypothesis not installed here"; rc_tests=125
else
    timeout "$left" python3 -m pytest -q -p no:cacheprovider -s -o addopts="" \
        tests/test_torch_optim_cost.py "tests/test_torch_optim.py::test_cuda_matches_cpu" > "$OUT/issue20-tests.log" 2>&1
    rc_tests=$?
    grep -E "synchronising calls|passed|failed|skipped|Error" "$OUT/issue20-tests.log" | tail -8
fi
echo "== issue20 summary: bench exit $rc_bench, tests exit $rc_tests, $(( $(date +%s) - t0 )) s"
