"""Torch (~200 MB of RSS, seconds to import) loads only when a node first runs a model.

Each check runs in a fresh interpreter (spawned, not forked), imports or does one thing, and
reports which heavy modules ended up in ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

TORCH_FREE = [
    "p2pagent.node",
    "p2pagent.cli.ctl",
    "p2pagent.cli.daemon",
    "p2pagent.api.agent",
    "p2pagent.state.driver",
    "p2pagent.membership.driver",
    "p2pagent.models.driver",
    "p2pagent.tasks.driver",
    "p2pagent.inference.engine",
    "p2pagent.inference.tensors",
    "p2pagent.inference.formats",
]


def loaded_after(code: str) -> dict[str, bool]:
    probe = (
        f"{code}\nimport json, sys\n"
        "print(json.dumps({m: m in sys.modules for m in ('torch', 'numpy')}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, bool] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("module", TORCH_FREE)
def test_importing_does_not_load_torch(module: str) -> None:
    assert not loaded_after(f"import {module}")["torch"], f"{module} pulls in torch"


def test_ctl_help_does_not_load_torch() -> None:
    code = (
        "import contextlib, io\n"
        "from p2pagent.cli import ctl\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    ctl.parser().parse_args(['--help'])\n"
    )
    assert not loaded_after(code)["torch"]


def test_wire_decode_and_validation_do_not_load_torch() -> None:
    code = (
        "import numpy as np\n"
        "from p2pagent._proto import common_pb2\n"
        "from p2pagent.inference import tensors\n"
        "from p2pagent.inference.spec import ModelSpec, PortSpec\n"
        "port = PortSpec('x', 'float32', (-1, 2))\n"
        "spec = ModelSpec((port,), (PortSpec('y', 'float32', (-1,)),))\n"
        "wire = common_pb2.Tensor(name='x', dtype=common_pb2.DTYPE_FLOAT32, shape=[1, 2],\n"
        "                         data=np.zeros(2, '<f4').tobytes())\n"
        "spec.bind_inputs('m', tensors.many_decode([wire], 100))\n"
    )
    assert not loaded_after(code)["torch"]


def test_auto_device_without_a_driver_does_not_load_torch() -> None:
    code = (
        "from p2pagent.inference import device\n"
        "device.DRIVER_PATHS = ('/nonexistent/nvidia',)\n"
        "assert device.select_device('auto').description == 'cpu'\n"
    )
    assert not loaded_after(code)["torch"]


def test_the_probe_sees_torch_when_it_is_loaded() -> None:
    # Guards the tests above against a probe that could never report torch.
    assert loaded_after("from p2pagent.inference import loading")["torch"]
