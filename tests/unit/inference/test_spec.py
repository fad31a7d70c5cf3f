"""Model metadata: JSON and wire forms, and request validation against it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from p2pagent.errors import ConfigError, InvalidArgument
from p2pagent.inference import dtypes
from p2pagent.inference.device import intra_op_threads, nvidia_driver_present, select_device
from p2pagent.inference.spec import ModelSpec, PortSpec
from p2pagent.inference.tensors import HostTensor

SPEC = ModelSpec(
    (PortSpec("image", "float32", (-1, 3, 4)), PortSpec("ids", "int64", (-1, -1))),
    (PortSpec("logits", "float32", (-1, 10)),),
    "mlp",
    {"in": 4, "out": 10},
)


def test_json_and_proto_round_trips() -> None:
    assert ModelSpec.from_json(SPEC.to_json()) == SPEC
    assert ModelSpec.from_proto(SPEC.to_proto()) == SPEC
    wire = SPEC.to_proto()
    assert list(wire.inputs[1].shape) == [-1, -1] and wire.architecture == "mlp"
    assert SPEC.batchable
    fixed = ModelSpec((PortSpec("x", "float32", (3,)),), (PortSpec("y", "float32", (3,)),))
    assert not fixed.batchable
    assert ModelSpec.from_dict(fixed.to_dict()) == fixed


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"inputs": [], "outputs": []}, "at least one input"),
        ({"inputs": [{"name": "x", "dtype": "f32", "shape": [1]}], "outputs": []}, "dtype"),
        ({"inputs": [{"name": "x", "dtype": "float32", "shape": [-2]}], "outputs": []}, "-1"),
        ({"inputs": "x", "outputs": []}, "lists"),
        ({"inputs": [], "outputs": [], "extra": 1}, "unknown keys"),
        (
            {
                "inputs": [{"name": "x", "dtype": "float32", "shape": [1]}] * 2,
                "outputs": [{"name": "y", "dtype": "float32", "shape": [1]}],
            },
            "unique",
        ),
    ],
)
def test_bad_metadata_is_refused(doc: object, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        ModelSpec.from_dict(doc)
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        ModelSpec.from_json("{")


def good(rows: int = 2) -> dict[str, torch.Tensor]:
    return {"image": torch.zeros(rows, 3, 4), "ids": torch.zeros(rows, 7, dtype=torch.int64)}


def test_bind_inputs_by_name_and_by_position() -> None:
    inputs = good()
    bound = SPEC.bind_inputs("m", {"ids": inputs["ids"], "image": inputs["image"]})
    assert bound[0] is inputs["image"] and bound[1] is inputs["ids"]
    assert SPEC.bind_inputs("m", [inputs["image"], inputs["ids"]])[1] is inputs["ids"]


def test_bound_inputs_are_taken_as_they_are_by_their_spec_only() -> None:
    bound = SPEC.bind_inputs("m", good())
    assert SPEC.bind_inputs("m", bound) is bound  # the door bound them; the engine takes them
    other = ModelSpec((PortSpec("image", "float32", (-1, 3, 4)),), SPEC.outputs)
    with pytest.raises(InvalidArgument, match="takes 1 input"):
        other.bind_inputs("m", bound)  # another spec checks them again


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ({**good(), "extra": torch.zeros(1)}, "no input named 'extra'"),
        ({"image": torch.zeros(2, 3, 4)}, "input 'ids' is missing"),
        ([torch.zeros(2, 3, 4)], "takes 2 input"),
        (
            {**good(), "image": torch.zeros(2, 3, 4, dtype=torch.float64)},
            "'image' expects dtype float32, received float64",
        ),
        ({**good(), "image": torch.zeros(2, 3)}, r"expects shape \[-1, 3, 4\].*received \[2, 3\]"),
        ({**good(), "image": torch.zeros(2, 3, 5)}, r"received \[2, 3, 5\]"),
        ({**good(), "ids": torch.zeros(3, 7, dtype=torch.int64)}, "same batch size"),
        (good(0), "must be >= 1"),
    ],
)
def test_bind_inputs_names_what_is_wrong(inputs: object, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match) as e:
        SPEC.bind_inputs("m", inputs)  # type: ignore[arg-type]
    assert "'m'" in str(e.value)


ONE = ModelSpec((PortSpec("x", "float32", (-1, 4)),), (PortSpec("y", "float32", (-1, 2)),))


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ({"z": torch.zeros(2, 4)}, "no input named 'z'"),
        ([torch.zeros(2, 4, dtype=torch.float64)], "'x' expects dtype float32, received float64"),
        ({"x": torch.zeros(2, 5)}, r"expects shape \[-1, 4\].*received \[2, 5\]"),
        ([torch.zeros(0, 4)], "must be >= 1"),
        ([np.zeros((2, 4), np.float32)], "'x' is not a tensor"),
        ((torch.zeros(2, 4), torch.zeros(2, 4)), "takes 1 input"),
    ],
)
def test_a_one_input_model_binds_its_one_tensor_and_names_what_is_wrong(
    inputs: object, match: str
) -> None:
    """A model with one input port takes a short way for one tensor; its refusals are the
    general path's."""
    x = torch.zeros(2, 4)
    assert ONE.bind_inputs("m", {"x": x})[0] is x
    assert ONE.bind_inputs("m", [x])[0] is x
    assert ONE.bind_inputs("m", (x,))[0] is x
    with pytest.raises(InvalidArgument, match=match):
        ONE.bind_inputs("m", inputs)  # type: ignore[arg-type]


def test_device_selection() -> None:
    cpu = select_device("cpu")
    assert cpu.description == "cpu" and not cpu.is_cuda
    auto = select_device("auto")
    assert auto.is_cuda == torch.cuda.is_available()
    for bad in ("gpu", "cuda:x", "cuda:-1", "tpu:0", ""):
        with pytest.raises(ConfigError, match="invalid device"):
            select_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            select_device("cuda:0")
    else:
        with pytest.raises(ConfigError, match="CUDA device"):
            select_device(f"cuda:{torch.cuda.device_count()}")
    assert intra_op_threads(3, cpu) == 3
    assert intra_op_threads(0, cpu) >= 1


def test_driver_presence_decides_without_torch(tmp_path: Path) -> None:
    assert not nvidia_driver_present((str(tmp_path / "nvidia*"),))
    (tmp_path / "nvidia0").touch()
    assert nvidia_driver_present((str(tmp_path / "nvidia[0-9]*"),))


def test_host_and_torch_inputs_are_validated_alike() -> None:
    host = {
        "image": HostTensor(dtypes.BY_NAME["float32"], np.zeros((2, 3, 4), "<f4")),
        "ids": HostTensor(dtypes.BY_NAME["int32"], np.zeros((2, 5), "<i4")),
    }
    with pytest.raises(InvalidArgument, match="'ids' expects dtype int64, received int32"):
        SPEC.bind_inputs("m", host)
    host["ids"] = HostTensor(dtypes.BY_NAME["int64"], np.zeros((2, 5), "<i8"))
    assert SPEC.bind_inputs("m", host)[1] is host["ids"]
    with pytest.raises(InvalidArgument, match=r"expects shape \[-1, 3, 4\]"):
        SPEC.bind_inputs("m", {**host, "image": torch.zeros(2, 4, 3)})
