"""Model files: each format loads and agrees; invalid files are refused with clear errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from p2pagent.errors import InvalidArgument
from p2pagent.inference import architectures, demo_model, safetensors_io
from p2pagent.inference.formats import ModelFormat, detect_format, load_model
from p2pagent.inference.spec import ModelSpec

CPU = torch.device("cpu")


def spec_of(files: dict[str, Path], key: str = "metadata") -> ModelSpec:
    return ModelSpec.from_json(files[key].read_text())


@pytest.mark.parametrize(
    ("key", "fmt"),
    [
        ("torchscript", ModelFormat.TORCHSCRIPT),
        ("torch_export", ModelFormat.TORCH_EXPORT),
        ("safetensors", ModelFormat.SAFETENSORS),
    ],
)
def test_each_format_loads_and_matches_the_reference(
    demo_files: dict[str, Path], key: str, fmt: ModelFormat
) -> None:
    assert detect_format(demo_files[key]) is fmt
    model = load_model("demo", demo_files[key], spec_of(demo_files), CPU)
    assert model.format is fmt
    assert model.nbytes == (256 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10) * 4
    x = torch.from_numpy(np.load(demo_files["sample_npy"]))
    expected = torch.tensor(json.loads(demo_files["expected_json"].read_text())["output"])
    with torch.inference_mode():
        y = model.fn(x)
        assert torch.allclose(y, expected, atol=1e-5)
        assert model.fn(torch.zeros(7, 256)).shape == (7, 10)  # dynamic batch dimension


def test_demo_files_are_deterministic(demo_files: dict[str, Path], tmp_path: Path) -> None:
    again = demo_model.write_all(tmp_path)
    assert again["safetensors"].read_bytes() == demo_files["safetensors"].read_bytes()
    assert json.loads(demo_files["sample_json"].read_text())["input"][0][:3] == pytest.approx(
        np.load(demo_files["sample_npy"])[0][:3].tolist()
    )


def test_noop_model_loads_from_safetensors_and_torchscript(demo_files: dict[str, Path]) -> None:
    spec = spec_of(demo_files, "noop_metadata")
    x = torch.randn(3, 256)
    for key in ("noop_safetensors", "noop_torchscript"):
        model = load_model("noop", demo_files[key], spec, CPU)
        assert torch.equal(model.fn(x), x)


def test_garbage_file_is_refused(tmp_path: Path, demo_files: dict[str, Path]) -> None:
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"this is not a model at all")
    with pytest.raises(InvalidArgument, match="is not a model"):
        load_model("m", bad, spec_of(demo_files), CPU)


def test_truncated_torchscript_is_refused(tmp_path: Path, demo_files: dict[str, Path]) -> None:
    data = demo_files["torchscript"].read_bytes()
    bad = tmp_path / "cut.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidArgument, match=r"cut\.pt"):
        load_model("m", bad, spec_of(demo_files), CPU)


def test_declared_format_must_match_the_content(demo_files: dict[str, Path]) -> None:
    with pytest.raises(InvalidArgument, match="is not a valid torchscript file"):
        load_model(
            "m", demo_files["safetensors"], spec_of(demo_files), CPU, ModelFormat.TORCHSCRIPT
        )


def test_zip_that_is_not_a_model_is_refused(tmp_path: Path, demo_files: dict[str, Path]) -> None:
    import zipfile

    bad = tmp_path / "x.pt"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(InvalidArgument, match="neither a torchscript archive"):
        load_model("m", bad, spec_of(demo_files), CPU)


def test_safetensors_needs_an_architecture(demo_files: dict[str, Path]) -> None:
    spec = spec_of(demo_files)
    bare = ModelSpec(spec.inputs, spec.outputs)
    with pytest.raises(InvalidArgument, match="need an architecture"):
        load_model("m", demo_files["safetensors"], bare, CPU)


def test_safetensors_weights_must_fit_the_architecture(demo_files: dict[str, Path]) -> None:
    spec = architectures.get("mlp").spec({"in": 256, "hidden": [512], "out": 10})
    with pytest.raises(InvalidArgument, match="do not fit architecture 'mlp'"):
        load_model("m", demo_files["safetensors"], spec, CPU)


def test_model_format_parse() -> None:
    # One enum for the wire, manifests, the CLI and the loader; the loader's old name too.
    assert ModelFormat.parse("export") is ModelFormat.TORCH_EXPORT
    assert ModelFormat.parse("torch_export") is ModelFormat.TORCH_EXPORT
    assert ModelFormat.parse(ModelFormat.SAFETENSORS) is ModelFormat.SAFETENSORS
    assert ModelFormat.TORCH_EXPORT.suffix == ".pt2"
    with pytest.raises(InvalidArgument, match="unknown model format 'onnx'"):
        ModelFormat.parse("onnx")


# ---- safetensors parser ------------------------------------------------------------------


def st_file(tmp_path: Path, header: object, data: bytes = b"", raw: bytes | None = None) -> Path:
    body = raw if raw is not None else json.dumps(header).encode()
    p = tmp_path / "w.safetensors"
    p.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return p


def test_safetensors_round_trip_all_dtypes(tmp_path: Path) -> None:
    ts = {
        "f": torch.randn(2, 3),
        "h": torch.randn(4).half(),
        "b": torch.randn(4).bfloat16(),
        "i": torch.arange(5),
        "u": torch.arange(3, dtype=torch.uint8),
        "z": torch.zeros(0, 2),
        "t": torch.tensor([True, False]),
    }
    p = tmp_path / "a.safetensors"
    safetensors_io.save(ts, p, {"k": "v"})
    back, meta = safetensors_io.load(p)
    assert meta == {"k": "v"}
    for k, v in ts.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)


@pytest.mark.parametrize(
    ("header", "data", "match"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "outside"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8, "needs 8"),
        ({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, "dtype"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b"", "negative"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 8, "outside"),
        ({"a": {"dtype": "F32", "shape": [1]}}, b"", "exactly dtype"),
        ({"a": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}}, b"\0" * 4, "shape"),
        ([1, 2], b"", "not an object"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
            },
            b"\0" * 8,
            "overlap",
        ),
        ({"__metadata__": {"k": 1}}, b"", "__metadata__"),
    ],
)
def test_safetensors_malformed_headers(
    tmp_path: Path, header: object, data: bytes, match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        safetensors_io.load(st_file(tmp_path, header, data))


def test_safetensors_bad_lengths_and_json(tmp_path: Path) -> None:
    p = tmp_path / "short.safetensors"
    p.write_bytes(b"\x01\x02")
    with pytest.raises(InvalidArgument, match="shorter than 8 bytes"):
        safetensors_io.load(p)
    p.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    with pytest.raises(InvalidArgument, match="past the end"):
        safetensors_io.load(p)
    with pytest.raises(InvalidArgument, match="not JSON"):
        safetensors_io.load(st_file(tmp_path, None, raw=b"{nope"))


# ---- architectures -----------------------------------------------------------------------


def test_architecture_configs_are_validated() -> None:
    with pytest.raises(InvalidArgument, match="unknown architecture 'resnet'"):
        architectures.get("resnet")
    with pytest.raises(InvalidArgument, match="unknown config keys"):
        architectures.get("mlp").build({"in": 4, "out": 2, "hiden": [3]})
    with pytest.raises(InvalidArgument, match="'in' must be an integer"):
        architectures.get("mlp").build({"in": 0, "out": 2})
    with pytest.raises(InvalidArgument, match="widths"):
        architectures.get("mlp").build({"in": 4, "out": 2, "hidden": [3, -1]})
    spec = architectures.get("noop").spec({"features": 8})
    assert spec.inputs[0].shape == (-1, 8) and spec.batchable
