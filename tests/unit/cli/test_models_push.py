"""``p2pagentctl models push`` refuses what the node would refuse before sending a byte (no
node is running here: a check that did not happen first would fail to connect instead), and
names the grpc.aio bug that can hide the reason of an upload the node ended early."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from p2pagent.cli.ctl import main
from p2pagent.errors import Internal
from p2pagent.models.upload import reason_lost_by_grpc


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


def test_a_directory_is_named_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "push", str(tmp_path), "--name", "m", "--target", "127.0.0.1:9"]) == 2
    assert f"{tmp_path} is a directory" in capsys.readouterr().err


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
