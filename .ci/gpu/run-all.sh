#!/usr/bin/env bash
# The device check: run on a machine with an NVIDIA GPU (python3 with torch, numba, numba-cuda), from
# the repository root, with $OUT a folder for results (defaults to ./gpu-out). Installs qlabref without
# its dependencies (the machine has no network), makes sure numba-cuda can compile a kernel with the
# NumPy that is there (numba-cuda 0.30.x cannot with NumPy 2.5: np.row_stack is gone; a NumPy 2.4 wheel
# in .whl/ is used then, if one was carried), then runs each .ci/gpu/issue*.sh under its own time limit.
set -u
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"; export OUT
export PYTHONUNBUFFERED=1
start=$(date +%s)
{ nvidia-smi -L; python3 -c "import sys,numpy,numba,torch;import importlib.metadata as m;print(sys.version.split()[0],'numpy',numpy.__version__,'numba',numba.__version__,'numba-cuda',m.version('numba-cuda'),'torch',torch.__version__)"; } 2>&1 | tee "$OUT/env.txt"
probe='from numba import cuda
import numpy as np
@cuda.jit
def k(a):
    a[0] = 1.0
d = cuda.device_array(1); k[1, 1](d); assert d.copy_to_host()[0] == 1.0'
if ! python3 -c "$probe" >/dev/null 2>&1; then
  if ls ${WHL_DIR:-.whl}/numpy-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ${WHL_DIR:-.whl}/numpy-*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    echo "numba-cuda could not compile with the installed NumPy; using $(python3 -c 'import numpy;print(numpy.__version__)')" | tee -a "$OUT/env.txt"
  fi
  python3 -c "$probe" || echo "numba-cuda still cannot compile a kernel" | tee -a "$OUT/env.txt"
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > /tmp/pip.txt 2>&1 || { echo "pip install of qlabref failed:"; tail -n 20 /tmp/pip.txt; } | tee -a "$OUT/env.txt"
for s in .ci/gpu/issue*.sh; do
  [ -f "$s" ] || continue
  name=$(basename "$s" .sh)
  echo "=== $name ($(( $(date +%s) - start )) s in)"
  timeout "${GPU_STEP_LIMIT:-170}" bash "$s" > "$OUT/$name.log" 2>&1
  echo "=== $name exit $? ($(( $(date +%s) - start )) s in)"
  tail -n 40 "$OUT/$name.log"
  [ -n "${GPU_TAR:-}" ] && tar czf "$GPU_TAR" -C "$OUT" .  # what finished so far comes back even if cut off
done
echo "=== all done in $(( $(date +%s) - start )) s"
