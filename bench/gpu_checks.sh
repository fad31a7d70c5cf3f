#!/usr/bin/env bash
# The inference engine's checks on an NVIDIA GPU host, in one run (results: bench/RESULTS.md,
# "2026-12-01 (session 6): on an NVIDIA H200"):
#
#     bash bench/gpu_checks.sh [OUT_DIR]
#
# The host's setup (wheels from .whl/, PY, the env log, `step`): bench/_device_env.sh.
#
# Steps, most important first, each bounded: the CUDA path's tests (the engine on the GPU,
# Infer end to end against daemons that pick the GPU), then bench.inference_grpc on demo-gpu
# (the model sized for a GPU), the in-process engine on it, and the RPC-bound demo models.
set -u
source "$(dirname "$0")/_device_env.sh"

step tests 60 "$PY" -m pytest -q -p no:cacheprovider tests/unit/inference \
    tests/integration/test_infer.py
step grpc_gpu 230 "$PY" -m bench.inference_grpc --model gpu --repeats 2 \
    --json "$OUT/grpc_gpu.json"
step offline_gpu 90 "$PY" -m bench.inference_offline --model gpu --device cuda:0 \
    --requests 200 --repeats 1 --json "$OUT/offline_gpu.json"
step grpc_large 90 "$PY" -m bench.inference_grpc --model large --repeats 1 \
    --json "$OUT/grpc_large.json"
step grpc_demo 90 "$PY" -m bench.inference_grpc --model demo --repeats 1 \
    --json "$OUT/grpc_demo.json"
