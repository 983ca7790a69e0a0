#!/usr/bin/env bash
# Every GPU check of the open issues, in one script for a short device session (about 15 minutes
# of device time in all: pick steps so that their limits fit). Run from the repository root on
# the GPU machine:
#
#     bash benchmarks/gpu_session.sh                    # every step (about 26 min of limits: too long for one session)
#     bash benchmarks/gpu_session.sh issue14            # issue 14's steps only (about 11 min of limits)
#     bash benchmarks/gpu_session.sh tests issue22      # the CUDA tests and issue 22's quality on CUDA (about 8 min)
#     bash benchmarks/gpu_session.sh issue22 issue23    # structured quality, loss-aware hybrid, healing (about 13.5 min)
#     bash benchmarks/gpu_session.sh tests core offload # the steps of issues 13 and 15 (about 11 min)
#
# Results in benchmarks/results/ (copied to $OUT), logs in $OUT.
# Steps:
#   tests    the CUDA tests (tests that skip on CPU: batched kernels, device selection, layers);
#   core     issue 15: benchmarks/core_gpu.py (selection on 14336 x 256 <= 5 ms; randomized CUR of
#            14336 x 4096 at rank 256, default and core="sketch", against torch.svd_lowrank);
#   offload  issue 13: benchmarks/offload_gpu.py (8B-shaped layers under a GPU memory cap, against
#            the same model fully resident);
#   issue22  issue 22: benchmarks/adapters_quality.py on CUDA (SmolLM2-135M, the mixed calibration
#            set): the structured default (StructuredConfig, one MLP width) at -20% and -30% beside
#            today's interpolative default and dense, then the planner choosing structured or
#            factored per unit (per_group), compression time and perplexity in and out of domain
#            (about 4 min of limits);
#   issue23  issue 23: the hybrid with loss-aware allocation at -8.8/-20/-30% on CUDA (about 4 min of
#            limits) and healing from the structured default at -20% (<= 25 after <= 5 minutes;
#            about 5.5 min of limits);
#   issue14  issue 14, items 3, 5, 6: benchmarks/compress_gpu.py at the Llama-3.1-8B shape
#            (CURing's configuration <= 10 s; the default at -20% <= 60 s, peak <= 1.25x the bf16
#            model), benchmarks/curing_score_svd.py at the 8B shapes (the randomized score SVD
#            against the full one), benchmarks/heal_cpu.py on CUDA (healing from the default at
#            -20%: <= 25 after <= 5 minutes), benchmarks/inference_gpu.py (each factored layer
#            >= 0.7x its ideal FLOP-ratio speed-up at 2048 tokens).
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

STEPS=${*:-tests core offload issue14}
has() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }

if has tests; then
timeout 240 "$PY" -m pytest -q -m "not slow" -rs tests/curlinalg/test_batched.py tests/curlinalg/test_backend.py \
    tests/curlinalg/test_cur.py tests/adapters/test_cuda.py -k "cuda" -p no:cacheprovider \
    >"$LOG/pytest_gpu.log" 2>&1; echo "pytest rc=$?"; tail -3 "$LOG/pytest_gpu.log"
fi
if has core; then
timeout 180 "$PY" benchmarks/core_gpu.py >"$LOG/core_gpu.log" 2>&1; echo "core_gpu rc=$?"; tail -12 "$LOG/core_gpu.log"
fi
if has offload; then
    # the Llama-3-8B layer shape with 8 of its 32 layers and 32 x 512 calibration tokens: the
    # device peak is one layer's work, so it does not depend on the layer count; time does
    timeout 240 "$PY" benchmarks/offload_gpu.py --layers 8 --nsamples 32 --compare \
        >"$LOG/offload_gpu.log" 2>&1; echo "offload_gpu rc=$?"
    tail -12 "$LOG/offload_gpu.log"
fi
CUDA_OK=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if has issue14 && [ "$CUDA_OK" != 1 ]; then
    echo "issue14: no CUDA device, steps skipped"
elif has issue14; then
    timeout 240 "$PY" benchmarks/compress_gpu.py --runs curing default --reduction 0.2 \
        --output compress_gpu_issue14.json >"$LOG/compress_gpu.log" 2>&1; echo "compress_gpu rc=$?"
    tail -8 "$LOG/compress_gpu.log"
    timeout 90 "$PY" benchmarks/curing_score_svd.py --device cuda --scale 1 >"$LOG/curing_score_svd.log" 2>&1
    echo "curing_score_svd rc=$?"; tail -6 "$LOG/curing_score_svd.log"
    timeout 60 "$PY" benchmarks/inference_gpu.py >"$LOG/inference_gpu.log" 2>&1; echo "inference_gpu rc=$?"
    tail -6 "$LOG/inference_gpu.log"
    # healing from the default at -20%: 5 minutes of training budget, evaluations on the protocol
    timeout 270 "$PY" benchmarks/heal_cpu.py --reductions 0.2 --runs dense compressed heal-wikitext \
        --output benchmarks/results/heal_gpu_issue14.json --quiet >"$LOG/heal_gpu.log" 2>&1; echo "heal_gpu rc=$?"
    tail -6 "$LOG/heal_gpu.log"
fi
if has issue22 && [ "$CUDA_OK" != 1 ]; then
    echo "issue22: no CUDA device, step skipped"
elif has issue22; then
    timeout 240 "$PY" benchmarks/adapters_quality.py --device cuda --calibration-set mix \
        --runs dense structured@0.2 structured@0.3 refit@0.2 "hybrid@0.2:uniform=false,per_group=true,loss_aware=allocation" \
        --output benchmarks/results/adapters_quality_issue22_gpu.json >"$LOG/quality_gpu.log" 2>&1
    echo "quality_gpu rc=$?"; tail -8 "$LOG/quality_gpu.log"
fi
if has issue23 && [ "$CUDA_OK" != 1 ]; then
    echo "issue23: no CUDA device, steps skipped"
elif has issue23; then
    # the hybrid with loss-aware allocation at the three points, and healing from the structured default
    timeout 240 "$PY" benchmarks/adapters_quality.py --device cuda --calibration-set mix --curing-params 122734368 \
        --runs dense "hybrid@curing:loss_aware=allocation" "hybrid@0.2:loss_aware=allocation" \
        "hybrid@0.3:loss_aware=allocation" --output benchmarks/results/adapters_quality_issue23_gpu.json \
        >"$LOG/quality23_gpu.log" 2>&1; echo "quality23_gpu rc=$?"; tail -8 "$LOG/quality23_gpu.log"
    timeout 330 "$PY" benchmarks/heal_cpu.py --method structured --reductions 0.2 --runs dense compressed heal-wikitext \
        --output benchmarks/results/heal_gpu_structured.json --quiet >"$LOG/heal23_gpu.log" 2>&1
    echo "heal23_gpu rc=$?"; tail -6 "$LOG/heal23_gpu.log"
fi
cp -f benchmarks/results/adapters_quality_issue23_gpu.json benchmarks/results/heal_gpu_structured.json "$LOG/" 2>/dev/null || true
cp -f benchmarks/results/adapters_quality_issue22_gpu.json "$LOG/" 2>/dev/null || true
cp -f benchmarks/results/compress_gpu_issue14.json benchmarks/results/curing_score_svd_cuda.json \
    benchmarks/results/heal_gpu_issue14.json benchmarks/results/inference_gpu.json "$LOG/" 2>/dev/null || true
cp -f benchmarks/results/core_gpu*.json benchmarks/results/offload_gpu*.json "$LOG/" 2>/dev/null || true
