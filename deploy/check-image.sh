#!/usr/bin/env bash
# Builds the p2pagentd image and checks that it runs a mesh: three containers join, pass
# their HEALTHCHECK, a model pushed to one is answered by another (Infer), and each stops
# cleanly (exit 0) within its grace period. Everything it made is removed at the end, except
# the dependency stage (p2pagent-check-deps:latest), kept so that the next run builds faster.
#
# Engine: docker where one answers, else podman (installed with apt-get when missing).
# Base: python:3.11-slim when a registry can be reached, else a Debian bookworm made with
# debootstrap from the host's apt mirror (python3 3.11, as the slim image). Wheels: downloaded
# on the host into deploy/docker/wheels/ (torch's CPU wheel from TORCH_WHEEL or /opt/wheels),
# and the image built from them alone (OFFLINE=1): no index needed inside the build.
#
#   deploy/check-image.sh            # prints each step and the seconds it took
#   KEEP=1 deploy/check-image.sh     # leave the image (p2pagent-check:latest) behind
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
PY="${PYTHON:-$root/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
TAG=p2pagent-check:latest
DEPS=p2pagent-check-deps:latest
NET=p2pagent-check
work="$(mktemp -d)"
started=$SECONDS
step() { printf '\n== [%3ds] %s\n' $((SECONDS - started)) "$*"; }
fail() { echo "check-image: FAILED: $*" >&2; exit 1; }
# This machine cannot build or run containers (no engine, no Debian mirror, no package index,
# a sandbox that refuses containers): not a fault of the image. Exit 3 so that CI can tell.
unable() { echo "check-image: NOT CHECKED on this machine: $*" >&2; exit 3; }

if docker info >/dev/null 2>&1; then
  engine=docker
else
  if ! command -v podman >/dev/null; then
    step "installing podman"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends podman netavark aardvark-dns fuse-overlayfs >/dev/null; } \
      || unable "no container engine, and apt-get could not install podman"
  fi
  engine=podman
fi

cleanup() {
  for n in 1 2 3; do $engine rm -f -t 0 "p2pcheck-node$n" >/dev/null 2>&1 || true; done
  $engine network rm -f "$NET" >/dev/null 2>&1 || true
  [ -n "${KEEP:-}" ] || $engine rmi -f "$TAG" >/dev/null 2>&1 || true
  rm -f deploy/docker/wheels/*.whl
  rm -rf "$work"
}
trap cleanup EXIT

step "engine: $engine; base image"
base=python:3.11-slim
if ! timeout 60 $engine pull -q "$base" >/dev/null 2>&1; then
  base=localhost/p2pagent-check-base:bookworm
  if ! $engine image exists "$base" 2>/dev/null; then
    command -v debootstrap >/dev/null || {
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends debootstrap >/dev/null
    } || unable "no registry reachable, and apt-get could not install debootstrap"
    mirror="$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)"
    mirror="${mirror:-http://deb.debian.org/debian}"
    echo "no registry reachable: debootstrap bookworm from $mirror"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
      || { tail -20 "$work/debootstrap.log"; unable "no registry reachable and debootstrap failed"; }
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    tar -C "$work/rootfs" -c . | $engine import - "$base" >/dev/null
    rm -rf "$work/rootfs"
  fi
fi
echo "base: $base"
if [ "$engine" = podman ] && ! $engine run --rm "$base" true >/dev/null 2>&1; then
  # Some hosts refuse podman's defaults: a VM without CAP_SYS_RESOURCE cannot apply its
  # default rlimits, and crun does not run with cgroups in hybrid mode. Then: no default
  # rlimits, and runc.
  printf '[containers]\ndefault_ulimits = []\n' >"$work/containers.conf"
  export CONTAINERS_CONF="$work/containers.conf"
  command -v runc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends runc >/dev/null || unable "podman needs runc here; apt-get failed"
  engine="podman --runtime runc"
  $engine run --rm "$base" true >/dev/null || unable "podman cannot run a container here"
  echo "podman with runc and no default rlimits"
fi

step "wheels (on the host, through its own package index settings)"
# Everything the image installs is downloaded here first and the build runs with OFFLINE=1:
# the build container then needs no index, no proxy and no CA of the host's. torch is the CPU
# wheel named by TORCH_WHEEL or found in /opt/wheels (else pip's choice for torch==TORCH).
wheel="${TORCH_WHEEL:-$(ls /opt/wheels/torch-*+cpu-*.whl 2>/dev/null | head -1 || true)}"
[ -z "$wheel" ] || cp "$wheel" deploy/docker/wheels/
"$PY" -m pip download -q -d deploy/docker/wheels --find-links deploy/docker/wheels \
  -c constraints.txt . grpcio-health-checking setuptools wheel >"$work/download.log" 2>&1 \
  || { tail -20 "$work/download.log"; unable "the package index could not be reached"; }
echo "$(ls deploy/docker/wheels/*.whl | wc -l) wheels, $(du -sm deploy/docker/wheels | cut -f1) MB" \
  "(torch: $(basename "$(ls deploy/docker/wheels/torch-*.whl)"))"

step "build"
# The dependency stage is built and tagged first and kept after the check (DEPS): the next
# run rebuilds only the stage with the code, unless pyproject.toml, constraints.txt or the
# wheels changed.
for target in deps ""; do
  $engine build -q -f deploy/docker/Dockerfile --build-arg BASE="$base" --build-arg OFFLINE=1 \
    ${target:+--target "$target"} -t "$([ -n "$target" ] && echo "$DEPS" || echo "$TAG")" . \
    >"$work/build.log" 2>&1 || { tail -30 "$work/build.log"; fail "build ${target:-image}"; }
done
$engine image inspect --format '{{.Config.User}}' "$TAG" | grep -qx '10001:10001' \
  || fail "the image does not run as 10001:10001"

step "certificates and a model (on the host)"
ctl() { "$PY" -m p2pagent.cli.ctl "$@"; }
ctl certs init --dir "$work/ca" --cluster check >/dev/null
for n in 1 2 3; do
  ctl certs issue --dir "$work/ca" --name "node$n" --role node --host "node$n" >/dev/null
  mkdir -p "$work/node$n"
  cp "$work/ca/ca.crt" "$work/ca/node$n.crt" "$work/ca/node$n.key" "$work/node$n/"
done
mkdir -p "$work/operator"
for r in client publisher; do
  ctl certs issue --dir "$work/ca" --name "$r" --role "$r" >/dev/null
  cp "$work/ca/$r.crt" "$work/ca/$r.key" "$work/operator/"
done
cp "$work/ca/ca.crt" "$work/operator/"
"$PY" -m p2pagent.inference.demo_model --out "$work/model" >/dev/null
"$PY" -c "import json; json.dump([[0.5] * 256], open('$work/model/input.json', 'w'))"
chown -R 10001:10001 "$work/node1" "$work/node2" "$work/node3" "$work/operator" "$work/model"
chmod 600 "$work"/node*/*.key "$work"/operator/*.key

step "three containers"
$engine network create "$NET" >/dev/null
for n in 1 2 3; do
  $engine run -d --name "p2pcheck-node$n" --hostname "node$n" --network "$NET" \
    --network-alias "node$n" \
    -e P2PAGENT_NAME="node$n" -e P2PAGENT_ADVERTISE="node$n:7400" \
    -e P2PAGENT_SEEDS=node1:7400,node2:7400,node3:7400 \
    -e P2PAGENT_CERTS=/etc/p2pagent/certs \
    -v "$work/node$n:/etc/p2pagent/certs:ro" \
    -v "$work/operator:/etc/p2pagent/operator:ro" -v "$work/model:/model:ro" \
    "$TAG" >/dev/null
done
# p2pagentctl inside node1's container, with the operator certificates.
in1() { $engine exec -e P2PAGENT_CERTS=/etc/p2pagent/operator p2pcheck-node1 p2pagentctl "$@"; }

step "health and membership"
for n in 1 2 3; do
  for _ in $(seq 60); do
    $engine exec "p2pcheck-node$n" python -m p2pagent.cli.health >/dev/null 2>&1 && break
    sleep 1
  done
  $engine exec "p2pcheck-node$n" python -m p2pagent.cli.health >/dev/null \
    || { $engine logs "p2pcheck-node$n" | tail -20; fail "node$n is not healthy"; }
done
alive=0
for _ in $(seq 60); do
  # A failed try (node3's name not yet in the network's DNS) counts as none alive and is
  # tried again: under set -e an unguarded failing assignment would end the check at once.
  alive=$(in1 members --target node3 --json 2>/dev/null | python3 -c \
    "import json,sys; print(sum(m['state'] == 'alive' for m in json.load(sys.stdin)))" \
    2>/dev/null) || alive=0
  [ "$alive" = 3 ] && break
  sleep 1
done
[ "$alive" = 3 ] || fail "node3 sees $alive members alive, not 3"
echo "3 members alive"

step "model push on node1, Infer on node3"
in1 models push /model/demo.torchscript.pt --name demo --replicas all --identity publisher \
  --target node1 --no-progress
answer=""
for _ in $(seq 60); do
  answer="$(in1 infer --model demo --input /model/input.json --target node3 --json 2>&1)" && break
  sleep 1
done
echo "$answer" | python3 -c "import json,sys; d=json.load(sys.stdin); print('executor', d['executor'])" \
  || fail "Infer on node3: $answer"

step "clean stop"
for n in 3 2 1; do
  t0=$(date +%s.%N)
  $engine stop -t 30 "p2pcheck-node$n" >/dev/null
  t1=$(date +%s.%N)
  code=$($engine inspect --format '{{.State.ExitCode}}' "p2pcheck-node$n")
  secs=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
  echo "node$n stopped in ${secs}s with exit status $code"
  [ "$code" = 0 ] || { $engine logs "p2pcheck-node$n" | tail -20; fail "node$n exit $code"; }
  python3 -c "import sys; sys.exit(0 if $t1 - $t0 < 20 else 1)" || fail "node$n stop took ${secs}s"
done

step "passed (image $($engine image inspect --format '{{.Size}}' "$TAG") bytes)"
