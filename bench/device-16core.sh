#!/bin/bash
# Multi-core measurements on a lent 16-core machine (issue #14): build pyrnn there,
# time the scaling suite against torch and JAX, and print PYRNN_PROFILE of one
# training call at 1 and 16 threads. Usage: bash bench/device-16core.sh OUTDIR [THREADS]
OUTDIR=${1:-/tmp/out}; THREADS=${2:-1,16}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=
REPO=$(pwd)
nproc; lscpu | grep -E "Model name|L1d|L2|L3|Thread|Core|Socket|NUMA|MHz"
python3 -c "import torch, numpy, jax; print('torch', torch.__version__, 'numpy', numpy.__version__, 'jax', jax.__version__)"
start=$(date +%s)
CMAKE_BUILD_PARALLEL_LEVEL=16 python3 -m pip install --no-build-isolation --no-deps -q . > "$OUTDIR/build.log" 2>&1 \
  || { tail -40 "$OUTDIR/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
cd /tmp
python3 -c "import pyrnn; pyrnn.show_config()"
# pyrnn first, then the frameworks (their libraries must not bind to pyrnn's symbols)
python3 -c "import pyrnn, torch, jax; print('import pyrnn, torch, jax: ok')"
nm -D --defined-only "$(python3 -c 'import pyrnn._core as c; print(c.__file__)')" | head -5
for run in "lstm 1 0" "gru 1 0" "lstm 16 0-15" "gru 16 0-15"; do
  set -- $run
  PYRNN_PROFILE=1 OMP_NUM_THREADS=$2 taskset -c $3 python3 - "$1" <<'PY' 2>&1 | grep -v "^$" | tail -2
import os, sys, numpy as np, pyrnn
pyrnn.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
cls = {"lstm": pyrnn.LSTM, "gru": pyrnn.GRU}[sys.argv[1]]
B, T, H = 128, 50, 1024
m = cls(H, H)
x = np.random.default_rng(0).standard_normal((T, B, H), dtype=np.float32)
for _ in range(2):
    y, _ = m.forward(x)
    m.backward(np.ones_like(y))
PY
done
python3 -m pyrnn.bench --suite scaling --threads "$THREADS" --peers torch,jax --reps 3 \
  --json "$OUTDIR/scaling.json" --markdown "$OUTDIR/scaling.md" --plot "$OUTDIR/scaling.png"
echo "total: $(( $(date +%s) - start )) s"
