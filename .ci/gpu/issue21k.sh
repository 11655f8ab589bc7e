#!/usr/bin/env bash
# Issue 21 (kernel side) on a real GPU: the device tests with the simulator OFF (they run on the GPU:
# the kernels against NumPy, the probe's bits, no allocation/transfer in the probe's device entry
# points; plus the PTX compile checks), then the kernel bench (launch overhead, matmul vs cuBLAS with
# TF32 off, probe vs a device copy). Writes $OUT/issue21k.md (and issue21k.json, the pytest log).
# Budget: about 150 s (pytest ≤ 110 s, most of it kernel compiles; PTX checked for cc 9.0 only here, CI
# does 8.0 and 9.0; bench ~30-40 s). cwd = repo root.
set -uo pipefail
OUT=${OUT:-./out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
unset NUMBA_ENABLE_CUDASIM
start=$(date +%s)
"$PY" -c "import numpy, numba, numba_cuda; print('numpy', numpy.__version__, 'numba', numba.__version__, 'numba-cuda', numba_cuda.__version__)" 2>&1 | tee "$OUT/versions.txt"
if ! "$PY" -c "import numpy, sys; sys.exit(0 if hasattr(numpy, 'row_stack') else 1)"; then
  echo "issue21k: WARNING: this NumPy has no np.row_stack (NumPy >= 2.5): numba-cuda 0.30.4 cannot compile kernels;" \
       "put a numpy<2.5 wheel first on PYTHONPATH (qlabref[cuda] pins numpy<2.5)" | tee -a "$OUT/versions.txt"
fi
timeout 110 "$PY" -m pytest -q -p no:cacheprovider tests/gpu/test_device_kernels.py tests/gpu/test_device_lifetime.py tests/gpu/test_sim_backend.py > "$OUT/pytest.log" 2>&1
pt=$?
tail -n 4 "$OUT/pytest.log"
timeout $(( 150 - ($(date +%s) - start) > 20 ? 150 - ($(date +%s) - start) : 20 )) "$PY" - "$OUT" <<'PYEOF'
import json, sys, platform
from qlabref import bench_gpu
out = sys.argv[1]
res = bench_gpu.measure_kernels(log=print, quick=True)
json.dump(res, open(f"{out}/issue21k.json", "w"), indent=1, default=str)
lines = ["# issue 21k: CUDA kernels on a GPU", "", open(f"{out}/versions.txt").read().strip(), ""]
lines += bench_gpu.format_kernels(res)
open(f"{out}/issue21k.md", "w").write("\n".join(lines) + "\n")
for l in bench_gpu.format_kernels(res):
    if l.startswith("- ") or (l.startswith("| ") and ("4096" in l or "mlp" in l or l[2].isdigit())):
        print(l)
PYEOF
bs=$?
{ echo; echo "## pytest tests/gpu on the GPU (exit $pt)"; echo '```'; tail -n 25 "$OUT/pytest.log"; echo '```'; } >> "$OUT/issue21k.md"
echo "issue21k: pytest exit $pt, bench exit $bs, $(( $(date +%s) - start )) s"
exit $(( pt != 0 ? pt : bs ))
