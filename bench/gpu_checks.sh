#!/usr/bin/env bash
# The inference engine's checks on an NVIDIA GPU host, in one run (results: bench/RESULTS.md,
# "2026-12-01 (session 6): on an NVIDIA H200"):
#
#     bash bench/gpu_checks.sh [OUT_DIR]
#
# Meant for a host whose python3 already has torch with CUDA but not this project's pinned
# packages (a borrowed GPU machine without network): wheels placed in .whl/ are installed
# into /tmp/site first (`make gpu-wheels` downloads them, for Python 3.12 by default). On a host
# where `make venv` worked, run it with PY=.venv/bin/python and no .whl/.
#
# Steps, most important first, each bounded: the CUDA path's tests (the engine on the GPU,
# Infer end to end against daemons that pick the GPU), then bench.inference_grpc on demo-gpu
# (the model sized for a GPU), the in-process engine on it, and the RPC-bound demo models.
set -u
OUT=${1:-${OUT:-/tmp/p2pagent-gpu}}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi

step() {  # step NAME SECONDS COMMAND...: output to $OUT/NAME.log and to stdout
    local name=$1 limit=$2
    shift 2
    echo "=== $name (at most ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 30 "$OUT/$name.log"
    echo "=== $name: exit $rc after $((SECONDS - start))s"
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    nproc
    grep -m1 "model name" /proc/cpuinfo
    "$PY" -c 'import sys, torch, grpc, google.protobuf as pb
print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.is_available(), "grpc", grpc.__version__, "protobuf", pb.__version__)'
} >"$OUT/env.log" 2>&1
cat "$OUT/env.log"

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
