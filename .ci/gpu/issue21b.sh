#!/usr/bin/env bash
# Issue 21 (helper 21b): device-resident tensors on a real GPU. Run from the repository root with
# qlabref installed (numba, numba-cuda, torch with CUDA); results go to $OUT/issue21b.md.
# Budget: about 180 s (tests <= 100 s, model-step bench <= 75 s; both are cut off by timeout).
#   1. tests/gpu/test_resident.py on the GPU, simulator off (resident QLABGrad steps of mlp /
#      paper_cnn / a tiny ResNet vs numpy, the traffic count, the ops);
#   2. qlabref.bench_gpu_models.measure_model_steps(): mlp() f32 batch 64 and ResNet-18 f64 batch 32
#      QLABGrad steps vs PyTorch CUDA and vs the numba backend.
set -u
OUT=${OUT:-/tmp/issue21b-out}
mkdir -p "$OUT"
MD="$OUT/issue21b.md"
unset NUMBA_ENABLE_CUDASIM
export PYTHONUNBUFFERED=1
export NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0  # small grids are expected at test sizes
PY=${PYTHON:-python3}
{
  echo "# issue 21b on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
  echo
  $PY -c "import numpy, numba, torch; import importlib.metadata as m; print('numpy', numpy.__version__, '| numba', numba.__version__, '| numba-cuda', m.version('numba-cuda'), '| torch', torch.__version__)" 2>&1
  echo
  echo "## tests/gpu/test_resident.py (real GPU, simulator off)"
  echo '```'
} > "$MD"
t0=$(date +%s)
timeout -k 5 100 $PY -m pytest -q -p no:cacheprovider tests/gpu/test_resident.py --durations=5 -rs > "$OUT/tests.log" 2>&1
rc=$?
tail -n 40 "$OUT/tests.log" >> "$MD"
t1=$(date +%s)
echo '```' >> "$MD"
echo "pytest exit $rc in $((t1 - t0)) s (124 = cut off at 100 s)" >> "$MD"
echo >> "$MD"
echo "## model steps (qlabref.bench_gpu_models)" >> "$MD"
echo '```' >> "$MD"
timeout -k 5 75 $PY - >> "$MD" 2>"$OUT/bench.err" <<'PYEOF'
import json, os, sys
from qlabref import bench_gpu_models as b
res = b.measure_model_steps(log=lambda s: print(s, file=sys.stderr, flush=True), mlp_repeats=20, resnet_repeats=3,
                            numba_steps=1)
print("\n".join(b.format_lines(res)))
json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "issue21b-bench.json"), "w"), indent=1, default=str)
PYEOF
rc2=$?
echo '```' >> "$MD"
t2=$(date +%s)
echo "bench exit $rc2 in $((t2 - t1)) s (124 = cut off at 75 s; progress in bench.err)" >> "$MD"
cat "$OUT/bench.err" | sed 's/^/    /' >> "$MD"
echo "=== issue21b summary ==="
grep -E "passed|failed|error" "$OUT/tests.log" | tail -n 2
sed -n '/## model steps/,$p' "$MD" | grep -vE '^(```|## )'
echo "full report: $MD"
