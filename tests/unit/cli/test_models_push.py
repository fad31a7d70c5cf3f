"""``p2pagentctl models push`` refuses what the node would refuse before sending a byte (no
node is running here: a check that did not happen first would fail to connect instead), and
names the grpc.aio bug that can hide the reason of an upload the node ended early."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import grpc
import pytest

from p2pagent.cli.ctl import main
from p2pagent.errors import Internal
from p2pagent.models.upload import reason_lost_by_grpc, upload_header


@pytest.fixture
def random_file(tmp_path: Path) -> Path:
    path = tmp_path / "weights.pt"
    path.write_bytes(b"\x00\x01 not a zip archive " * 100)
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--name", "m"], "the model file is not a torchscript model"),
        (["--name", "m", "--format", "safetensors"], "is not a safetensors file"),
        (["--name", "../m"], "contains a path separator"),
        (["--name", "m", "--replicas", "many"], "replicas must be a positive count or 'all'"),
        (["--name", "m", "--chunk-size", "100"], "chunk size 100 is out of bounds"),
    ],
)
def test_a_push_the_node_would_refuse_is_refused_before_connecting(
    random_file: Path,
    tmp_path: Path,
    extra: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["models", "push", str(random_file), "--target", "127.0.0.1:9", "--certs", str(tmp_path)]
    assert main([*argv, *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_folder_push_is_checked_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["models", "push", str(tmp_path), "--name", "m", "--target", "127.0.0.1:9"]
    assert main(argv) == 2
    assert f"folder {tmp_path} holds no files" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"]}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    assert main(argv) == 2
    assert "pytorch_model.bin, a pickle-based weight file" in capsys.readouterr().err
    assert main([*argv, "--format", "torchscript"]) == 2
    assert "its format and metadata come from its own config files" in capsys.readouterr().err


def test_the_reason_grpc_loses_is_explained_and_other_errors_pass() -> None:
    lost = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        "Internal error from Core",
    )
    expected = pytest.raises(Internal, match="grpc lost its reason; nothing was published")
    with expected, reason_lost_by_grpc():
        raise lost
    other = grpc.aio.AioRpcError(
        grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata(), "bad"
    )
    with pytest.raises(grpc.aio.AioRpcError), reason_lost_by_grpc():
        raise other


def test_a_push_without_serving_metadata_is_refused_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "plain.pt"
    model.write_bytes(b"PK\x03\x04" + bytes(100))  # no plain.metadata.json beside it
    argv = ["models", "push", str(model), "--name", "m", "--target", "127.0.0.1:9"]
    assert main([*argv, "--certs", str(tmp_path)]) == 2
    assert "has no metadata" in capsys.readouterr().err


def test_the_header_carries_the_sha256_of_the_whole_file(tmp_path: Path) -> None:
    model = tmp_path / "noop.safetensors"
    data = b"\x13\x00\x00\x00\x00\x00\x00\x00" + b'{"__metadata__":{}}' + bytes(3 << 20)
    model.write_bytes(data)
    (tmp_path / "noop.metadata.json").write_text(json.dumps(planted_noop_spec()))
    header = upload_header(model, "noop")
    assert header.sha256 == hashlib.sha256(data).hexdigest()
    assert header.metadata.architecture == "noop"


def planted_noop_spec() -> dict[str, object]:
    return {
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 4]}],
        "outputs": [{"name": "output", "dtype": "float32", "shape": [-1, 4]}],
        "architecture": "noop",
        "arch_config": {"features": 4},
    }
