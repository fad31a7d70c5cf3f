"""Model metadata: named, typed input and output ports with a dynamic batch dimension.

A ``ModelSpec`` rides in model manifests as JSON (``to_dict``/``from_dict``) and on the wire
as ``ModelMetadata`` (``to_proto``/``from_proto``). ``-1`` in a shape marks a dynamic
dimension; a model is *batchable* when dimension 0 of every port is dynamic, which is what
lets the engine concatenate requests along it.

``bind_inputs`` is the one place a request's tensors are checked against the model, so
every mistake (unknown name, missing input, wrong dtype, rank or size) is reported the same
way, naming the input, the expected and the received value.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from p2pagent._proto import agent_pb2
from p2pagent.errors import InvalidArgument
from p2pagent.inference import dtypes

if TYPE_CHECKING:
    from typing import TypeAlias

    import torch

    from p2pagent.inference.tensors import HostTensor

    #: What a request may pass as an input: a decoded wire tensor or a torch tensor.
    InputTensor: TypeAlias = HostTensor | torch.Tensor

#: Marks a dynamic dimension in a port shape.
DYNAMIC = -1


@dataclass(frozen=True)
class PortSpec:
    """One input or output: its name, dtype name (``float32``...) and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidArgument("a model port needs a non-empty name")
        dtypes.by_name(self.dtype, f"port {self.name!r}")
        for d in self.shape:
            if not isinstance(d, int) or isinstance(d, bool) or d < DYNAMIC:
                raise InvalidArgument(
                    f"port {self.name!r}: shape {list(self.shape)} may hold only sizes >= 0 "
                    "and -1 (dynamic)"
                )

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtypes.BY_NAME[self.dtype].torch_dtype

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @staticmethod
    def from_dict(doc: Any) -> PortSpec:
        if not isinstance(doc, Mapping):
            raise InvalidArgument(f"a model port must be an object, got {doc!r}")
        unknown = set(doc) - {"name", "dtype", "shape"}
        if unknown:
            raise InvalidArgument(f"model port has unknown keys {sorted(unknown)}")
        shape = doc.get("shape")
        if not isinstance(shape, list):
            raise InvalidArgument(f"port {doc.get('name')!r}: shape must be a list of ints")
        return PortSpec(str(doc.get("name", "")), str(doc.get("dtype", "")), tuple(shape))


@dataclass(frozen=True)
class ModelSpec:
    """Inputs and outputs of a model, plus its architecture for safetensors weights."""

    inputs: tuple[PortSpec, ...]
    outputs: tuple[PortSpec, ...]
    #: Registry name (``p2pagent.inference.architectures``) for safetensors weights; the
    #: transformers class name for a Hugging Face folder (``inference.hf``).
    architecture: str = ""
    #: JSON-able config of that architecture.
    arch_config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.inputs or not self.outputs:
            raise InvalidArgument("a model needs at least one input and one output port")
        for kind, ports in (("input", self.inputs), ("output", self.outputs)):
            names = [p.name for p in ports]
            if len(set(names)) != len(names):
                raise InvalidArgument(f"model {kind} names must be unique, got {names}")

    @cached_property
    def batchable(self) -> bool:
        """Dimension 0 of every port is dynamic, so requests can be concatenated on it."""
        return all(p.shape and p.shape[0] == DYNAMIC for p in (*self.inputs, *self.outputs))

    @cached_property
    def input_names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.inputs)

    @cached_property
    def output_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.outputs)

    # ---- JSON ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "inputs": [p.to_dict() for p in self.inputs],
            "outputs": [p.to_dict() for p in self.outputs],
        }
        if self.architecture:
            doc["architecture"] = self.architecture
            doc["arch_config"] = dict(self.arch_config)
        return doc

    @staticmethod
    def from_dict(doc: Any) -> ModelSpec:
        if not isinstance(doc, Mapping):
            raise InvalidArgument("model metadata must be a JSON object")
        unknown = set(doc) - {"inputs", "outputs", "architecture", "arch_config"}
        if unknown:
            raise InvalidArgument(f"model metadata has unknown keys {sorted(unknown)}")
        ins, outs = doc.get("inputs"), doc.get("outputs")
        if not isinstance(ins, list) or not isinstance(outs, list):
            raise InvalidArgument("model metadata needs 'inputs' and 'outputs' lists")
        cfg = doc.get("arch_config", {})
        if not isinstance(cfg, Mapping):
            raise InvalidArgument("model metadata 'arch_config' must be an object")
        return ModelSpec(
            tuple(PortSpec.from_dict(p) for p in ins),
            tuple(PortSpec.from_dict(p) for p in outs),
            str(doc.get("architecture", "")),
            dict(cfg),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> ModelSpec:
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise InvalidArgument(f"model metadata is not valid JSON: {e}") from None
        return ModelSpec.from_dict(doc)

    # ---- wire ----------------------------------------------------------------------------

    def to_proto(self) -> agent_pb2.ModelMetadata:
        def port(p: PortSpec) -> agent_pb2.ModelMetadata.Port:
            wire = dtypes.BY_NAME[p.dtype].wire
            return agent_pb2.ModelMetadata.Port(name=p.name, dtype=wire, shape=list(p.shape))  # type: ignore[arg-type]

        return agent_pb2.ModelMetadata(
            inputs=[port(p) for p in self.inputs],
            outputs=[port(p) for p in self.outputs],
            architecture=self.architecture,
            arch_config=json.dumps(dict(self.arch_config), sort_keys=True)
            if self.architecture
            else "",
        )

    @staticmethod
    def from_proto(m: agent_pb2.ModelMetadata) -> ModelSpec:
        def port(p: agent_pb2.ModelMetadata.Port) -> PortSpec:
            info = dtypes.BY_WIRE.get(p.dtype)
            if info is None:
                raise InvalidArgument(f"port {p.name!r}: unknown dtype {p.dtype}")
            return PortSpec(p.name, info.name, tuple(int(d) for d in p.shape))

        cfg: Any = {}
        if m.arch_config:
            try:
                cfg = json.loads(m.arch_config)
            except ValueError as e:
                raise InvalidArgument(f"model arch_config is not valid JSON: {e}") from None
            if not isinstance(cfg, dict):
                raise InvalidArgument("model arch_config must be a JSON object")
        return ModelSpec(
            tuple(port(p) for p in m.inputs),
            tuple(port(p) for p in m.outputs),
            m.architecture,
            cfg,
        )

    # ---- request validation --------------------------------------------------------------

    def bind_inputs(
        self, model: str, inputs: Mapping[str, InputTensor] | Sequence[InputTensor]
    ) -> list[InputTensor]:
        """Checks a request against the input ports; returns the tensors in port order.

        Inputs are either a mapping by port name or a sequence in port order. For a
        batchable model every input must have the same (non-zero) size in dimension 0.
        What this returns is marked as bound to this spec: binding it again (the door binds
        a request, then the engine does) returns it as it is.
        """
        if type(inputs) is BoundInputs and inputs.spec is self:
            return inputs
        if len(self.inputs) == 1 and len(inputs) == 1:
            # The common case, once per request: one input port and one tensor for it (by
            # name or by position). Anything else takes the general path and its errors.
            port = self.inputs[0]
            t: InputTensor | None = None
            if isinstance(inputs, dict):  # builtin types: no abc check, unlike Mapping
                t = inputs.get(port.name)
            elif isinstance(inputs, list):
                t = inputs[0]
            if t is not None:
                _check_port(model, port, t)
                if not self.batchable or t.shape[0] != 0:
                    return BoundInputs(self, [t])
        if isinstance(inputs, Mapping):
            unknown = [n for n in inputs if n not in self.input_names]
            if unknown:
                raise InvalidArgument(
                    f"model {model!r} has no input named {unknown[0]!r}; "
                    f"its inputs are {[p.name for p in self.inputs]}"
                )
            missing = [p.name for p in self.inputs if p.name not in inputs]
            if missing:
                raise InvalidArgument(f"model {model!r}: input {missing[0]!r} is missing")
            ordered = [inputs[p.name] for p in self.inputs]
        else:
            ordered = list(inputs)
            if len(ordered) != len(self.inputs):
                raise InvalidArgument(
                    f"model {model!r} takes {len(self.inputs)} input(s) "
                    f"{[p.name for p in self.inputs]}, received {len(ordered)}"
                )
        for port, t in zip(self.inputs, ordered):
            _check_port(model, port, t)
        if self.batchable:
            rows = {int(t.shape[0]) for t in ordered}
            if len(rows) != 1:
                raise InvalidArgument(
                    f"model {model!r}: all inputs must have the same batch size (dimension 0), "
                    f"received {sorted(rows)}"
                )
            if 0 in rows:
                raise InvalidArgument(f"model {model!r}: batch size (dimension 0) must be >= 1")
        return BoundInputs(self, ordered)


class BoundInputs(list["InputTensor"]):
    """A request's inputs in port order, already checked against ``spec``."""

    __slots__ = ("spec",)

    def __init__(self, spec: ModelSpec, ordered: list[InputTensor]) -> None:
        super().__init__(ordered)
        self.spec = spec


def _check_port(model: str, port: PortSpec, t: object) -> None:
    # Imported here: a state-only node never checks a tensor and need not load numpy (about
    # 0.3 s of its start-up and 15 MB); a node that got a tensor to check has it already.
    from p2pagent.inference.tensors import HostTensor

    if isinstance(t, HostTensor):
        got, shape = t.dtype.name, t.shape
    else:
        # A torch tensor can exist only if torch was imported: no need to import it here.
        torch_module = sys.modules.get("torch")
        if torch_module is None or not isinstance(t, torch_module.Tensor):
            raise InvalidArgument(f"model {model!r}: input {port.name!r} is not a tensor")
        info = dtypes.of_torch(t.dtype)
        got, shape = (info.name if info else str(t.dtype)), tuple(t.shape)
    if got != port.dtype:
        raise InvalidArgument(
            f"model {model!r}: input {port.name!r} expects dtype {port.dtype}, received {got}"
        )
    if len(shape) != len(port.shape) or any(
        want != DYNAMIC and want != have for want, have in zip(port.shape, shape)
    ):
        raise InvalidArgument(
            f"model {model!r}: input {port.name!r} expects shape {list(port.shape)} "
            f"(-1 = any size), received {list(shape)}"
        )
