# Sourced by the scripts that run checks on a borrowed host (gpu_checks.sh, host_checks.sh):
# sets OUT, PY and PYTHONPATH, installs the wheels in .whl/ if there are any, records the
# host in $OUT/env.log, and defines `step`.
#
# Such a host's python3 may lack this project's pinned packages and have no network: wheels
# placed in .whl/ are installed into /tmp/site first (`make gpu-wheels` downloads them, for
# Python 3.12 by default). On a host where `make venv` worked, run with PY=.venv/bin/python
# and no .whl/.
OUT=${1:-${OUT:-/tmp/p2pagent-device}}
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
    command -v nvidia-smi >/dev/null &&
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    nproc
    grep -m1 "model name" /proc/cpuinfo
    uptime
    "$PY" -c 'import sys, torch, grpc, google.protobuf as pb
print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.is_available(), "grpc", grpc.__version__, "protobuf", pb.__version__)'
} >"$OUT/env.log" 2>&1
cat "$OUT/env.log"
