#!/usr/bin/env bash
# Issue 21 (helper 21b): device-resident tensors on a real GPU. Run from the repository root with
# qlabref installed (numba, numba-cuda, torch with CUDA); results go to $OUT/issue21b.md.
# Budget: at most 175 s (one Python process, cut off by timeout; what finished is in the report):
#   1. qlabref.bench_gpu_models.measure_model_steps(): mlp() f32 batch 64 and ResNet-18 CIFAR f64
#      batch 32 QLABGrad steps vs PyTorch CUDA (same process) and vs the numba backend on the CPUs;
#   2. tests/gpu/test_resident.py on the GPU, simulator off (resident QLABGrad steps of mlp /
#      paper_cnn / a tiny ResNet vs numpy, the host<->device traffic count, the ops, eval mode).
# Both in one process so the Numba kernels compiled for the bench are reused by the tests.
set -u
OUT=${OUT:-/tmp/issue21b-out}
mkdir -p "$OUT"
export OUT
MD="$OUT/issue21b.md"
unset NUMBA_ENABLE_CUDASIM
export PYTHONUNBUFFERED=1
export NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0  # small grids are expected at test sizes
PY=${PYTHON:-python3}
t0=$(date +%s)
timeout -k 5 175 $PY - > "$OUT/run.log" 2>&1 <<'PYEOF'
import json, os, sys, time
out = os.environ["OUT"]
md = open(os.path.join(out, "issue21b.md"), "w", buffering=1)
t0 = time.time()
try:
    import numpy, numba, torch, importlib.metadata as m
    from numba import cuda
    md.write(f"# issue 21b on {cuda.get_current_device().name}\n\nnumpy {numpy.__version__} | numba {numba.__version__} | "
             f"numba-cuda {m.version('numba-cuda')} | torch {torch.__version__}\n\n")
except Exception as e:  # noqa: BLE001
    md.write(f"# issue 21b\n\nversions: {e}\n\n")
md.write("## model steps (qlabref.bench_gpu_models.measure_model_steps)\n```\n")
try:
    from qlabref import bench_gpu_models as b
    res = b.measure_model_steps(log=lambda s: (print(f"[{time.time() - t0:6.1f}s] {s}", flush=True),
                                               md.write(f"  {s}\n")), mlp_repeats=20, resnet_repeats=3, numba_steps=1)
    md.write("\n".join(b.format_lines(res)) + "\n")
    json.dump(res, open(os.path.join(out, "issue21b-bench.json"), "w"), indent=1, default=str)
except Exception as e:  # noqa: BLE001
    import traceback
    md.write(traceback.format_exc())
md.write(f"```\nbench done at {time.time() - t0:.0f} s\n\n## tests/gpu/test_resident.py (real GPU, simulator off)\n\n")
md.flush()
import pytest
rc = pytest.main(["-v", "-p", "no:cacheprovider", "-rfE", "--tb=short", "--durations=5", "tests/gpu/test_resident.py", "tests/gpu/test_launch_count.py"])
md.write(f"pytest exit {int(rc)} at {time.time() - t0:.0f} s; per-test lines (from run.log):\n")
PYEOF
rc=$?
t1=$(date +%s)
{
  echo '```'
  grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error" "$OUT/run.log" | tail -n 40
  echo '```'
  echo "driver exit $rc after $((t1 - t0)) s (124 = cut off at 175 s)"
} >> "$MD"
echo "=== issue21b summary ==="
grep -E "GPU model steps|mlp\(\)|resnet18 float64|failed:|not timed" "$MD" | grep -v "gpu models:" | head -n 6
grep -E "[0-9]+ (passed|failed)" "$OUT/run.log" | tail -n 1
echo "driver exit $rc after $((t1 - t0)) s; full report: $MD (log: $OUT/run.log)"
