#!/usr/bin/env bash
# Every GPU check of the open issues, in one run that fits a short device session (at most 11 min on an
# H100/H200). Run from the repository root on the GPU machine:
#
#     bash benchmarks/gpu_session.sh            # results in benchmarks/results/, logs in $OUT or /tmp
#
# 1. the CUDA tests (tests that skip on CPU: batched kernels, device selection, layers);
# 2. issue 15: benchmarks/core_gpu.py (selection on 14336 x 256 <= 5 ms; randomized CUR of
#    14336 x 4096 at rank 256, default and core="sketch", against torch.svd_lowrank);
# 3. issue 13: benchmarks/offload_gpu.py (an 8B-shaped model under a GPU memory cap).
# Each step has its own time limit so one slow step cannot eat the others' time.
set -u
LOG=${OUT:-/tmp}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
if ! "$PY" -c "import torch, transformers, curlinalg" 2>/dev/null; then
    pip install -q torch==2.13.0 2>/dev/null || true
    pip install -q -e ".[adapters,test,bench]" >"$LOG/setup.log" 2>&1
fi
"$PY" -c "import torch; print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

timeout 240 "$PY" -m pytest -q -m "not slow" -rs tests/curlinalg/test_batched.py tests/curlinalg/test_backend.py \
    tests/curlinalg/test_cur.py tests/adapters/test_cuda.py -k "cuda" -p no:cacheprovider \
    >"$LOG/pytest_gpu.log" 2>&1; echo "pytest rc=$?"; tail -3 "$LOG/pytest_gpu.log"
timeout 180 "$PY" benchmarks/core_gpu.py >"$LOG/core_gpu.log" 2>&1; echo "core_gpu rc=$?"; tail -12 "$LOG/core_gpu.log"
if [ -f benchmarks/offload_gpu.py ]; then
    timeout 240 "$PY" benchmarks/offload_gpu.py >"$LOG/offload_gpu.log" 2>&1; echo "offload_gpu rc=$?"
    tail -12 "$LOG/offload_gpu.log"
fi
cp -f benchmarks/results/core_gpu*.json benchmarks/results/offload_gpu*.json "$LOG/" 2>/dev/null || true
