#!/usr/bin/env bash
# Every GPU check of the open issues, in one run that fits a short device session (at most 11 min on an
# H100/H200). Run from the repository root on the GPU machine:
#
#     bash benchmarks/gpu_session.sh            # results in benchmarks/results/ (copied to $OUT), logs in $OUT
#
# 1. the CUDA tests (tests that skip on CPU: batched kernels, device selection, layers);
# 2. issue 15: benchmarks/core_gpu.py (selection on 14336 x 256 <= 5 ms; randomized CUR of
#    14336 x 4096 at rank 256, default and core="sketch", against torch.svd_lowrank);
# 3. issue 13: benchmarks/offload_gpu.py (8B-shaped layers under a GPU memory cap, against the
#    same model fully resident).
# Each step has its own time limit so one slow step cannot eat the others' time.
#
# The device image has torch, transformers, accelerate, scipy, pytest and hypothesis but not
# array-api-compat, and nothing can be fetched there: carry its wheel. Here, once:
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: -d .whl array-api-compat==1.16.0
# then `run` with carry [".whl"] and the command `bash benchmarks/gpu_session.sh`.
set -u
LOG=${OUT:-/tmp}
PY=${PY:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=.:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1
"$PY" -c "import torch; print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

timeout 240 "$PY" -m pytest -q -m "not slow" -rs tests/curlinalg/test_batched.py tests/curlinalg/test_backend.py \
    tests/curlinalg/test_cur.py tests/adapters/test_cuda.py -k "cuda" -p no:cacheprovider \
    >"$LOG/pytest_gpu.log" 2>&1; echo "pytest rc=$?"; tail -3 "$LOG/pytest_gpu.log"
timeout 180 "$PY" benchmarks/core_gpu.py >"$LOG/core_gpu.log" 2>&1; echo "core_gpu rc=$?"; tail -12 "$LOG/core_gpu.log"
if [ -f benchmarks/offload_gpu.py ]; then
    # the Llama-3-8B layer shape with 8 of its 32 layers and 32 x 512 calibration tokens: the
    # device peak is one layer's work, so it does not depend on the layer count; time does
    timeout 240 "$PY" benchmarks/offload_gpu.py --layers 8 --nsamples 32 --compare \
        >"$LOG/offload_gpu.log" 2>&1; echo "offload_gpu rc=$?"
    tail -12 "$LOG/offload_gpu.log"
fi
cp -f benchmarks/results/core_gpu*.json benchmarks/results/offload_gpu*.json "$LOG/" 2>/dev/null || true
