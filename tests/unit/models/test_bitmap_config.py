"""Holdings bitmaps and the models config."""

from __future__ import annotations

import pytest

from p2pagent.errors import ConfigError, RemoteProtocolError
from p2pagent.models.bitmap import decode_bitmap, encode_bitmap
from p2pagent.models.config import ModelsConfig


@pytest.mark.parametrize("count", [1, 7, 8, 9, 100])
def test_bitmap_round_trip(count: int) -> None:
    for held in (set(), {0}, {count - 1}, set(range(0, count, 3)), set(range(count))):
        data = encode_bitmap(held, count)
        assert len(data) == (count + 7) // 8
        assert decode_bitmap(data, count) == held


def test_bitmap_layout_and_strictness() -> None:
    assert encode_bitmap({0, 9}, 10) == bytes([0b1, 0b10])
    with pytest.raises(ValueError):
        encode_bitmap({10}, 10)
    with pytest.raises(RemoteProtocolError, match="need 2"):
        decode_bitmap(b"\x01", 10)
    with pytest.raises(RemoteProtocolError, match="past the last chunk"):
        decode_bitmap(bytes([0, 0b100]), 10)


def test_config_validation() -> None:
    assert ModelsConfig().validate() == ModelsConfig()
    for bad, field in [
        (ModelsConfig(chunk_size=1000), "chunk_size"),
        (ModelsConfig(pipeline_depth=0), "pipeline_depth"),
        (ModelsConfig(upload_rate_bytes_per_s=-1), "upload_rate"),
        (ModelsConfig(holder_backoff_s=5, holder_backoff_max_s=1), "holder_backoff_max_s"),
    ]:
        with pytest.raises(ConfigError, match=field):
            bad.validate()
