# p2pagent: the two commands of the quickstart are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint typecheck unit integration cluster proto docs bench gpu-wheels clean

# Creates or reuses .venv and installs the project with the tested versions (torch pinned to
# the CPU build through constraints.txt; an unpinned torch would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bin/demo

test: $(STAMP) lint typecheck
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check p2pagent tests bench
	$(VENV)/bin/ruff format --check p2pagent tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

cluster: $(STAMP)
	$(PY) -m pytest -q tests/cluster

# The API reference (docs/API.md) comes from the same .proto comments: refresh it too.
proto: $(STAMP)
	$(PY) -m p2pagent._proto.generate
	$(PY) -m p2pagent.docgen

# Regenerates the configuration reference (docs/configuration.md), the authorization table
# (docs/security.md) and docs/API.md from the code.
docs: $(STAMP)
	$(PY) -m p2pagent.docgen

bench: $(STAMP)
	$(PY) -m bench.all --small

# Wheels for a borrowed GPU host (Python 3.12, torch with CUDA already there, no network):
# the project's pinned packages that such an image lacks, into .whl/, which
# bench/gpu_checks.sh installs there first. GPU_PYTHON names the host's Python version.
GPU_PYTHON ?= 3.12
GPU_WHEELS := grpcio grpcio-health-checking grpcio-reflection protobuf cryptography cffi \
	pycparser pytest pytest-asyncio msgpack prometheus_client uvloop
gpu-wheels: $(STAMP)
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: -c constraints.txt \
		--python-version $(GPU_PYTHON) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	@ls .whl

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo
