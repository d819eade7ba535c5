"""msgpack container bombs are refused before they are built (issue 10, attack 2)."""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from fedllm_proto import frames
from fedllm_proto.codec import unpack_msgpack
from fedllm_proto.errors import ErrorCode, RemoteProtocolError
from fedllm_proto.frames import Flags, FrameType
from fedllm_proto.limits import Limits
from fedllm_proto.testing import open_pair


def peak_bytes(step: Callable[[], Any]) -> int:
    """Peak traced memory of ``step``; protocol errors are what these inputs should raise."""
    tracemalloc.start()
    try:
        with contextlib.suppress(RemoteProtocolError):
            step()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def refusal(payload: bytes) -> ErrorCode:
    with pytest.raises(RemoteProtocolError) as err:
        unpack_msgpack(payload, Limits())
    return err.value.code


def test_an_array_of_empty_maps_is_a_bad_message() -> None:
    assert refusal(msgpack.packb([{}] * 100_000)) is ErrorCode.BAD_MESSAGE


def test_an_array_of_empty_maps_is_refused_before_it_is_built() -> None:
    bomb = msgpack.packb([{}] * 1_000_000)  # 1 MB that would be ~64 MB of dicts
    assert peak_bytes(lambda: unpack_msgpack(bomb, Limits())) < len(bomb)


def test_nested_arrays_are_refused_by_the_item_budget() -> None:
    # every array is within max_array_len; together they hold 400k elements
    assert refusal(msgpack.packb([[0] * 4000] * 100)) is ErrorCode.BAD_MESSAGE


def test_a_map_with_more_entries_than_any_message_needs_is_refused() -> None:
    assert refusal(msgpack.packb({f"k{i}": 0 for i in range(5000)})) is ErrorCode.BAD_MESSAGE


def test_bin_values_are_refused() -> None:
    assert refusal(msgpack.packb({"a": b"\x00" * 10})) is ErrorCode.BAD_MESSAGE


def test_the_largest_legal_update_header_still_decodes() -> None:
    limits = Limits()
    manifest = [
        [f"t{i}", "float32", [1] * limits.max_ndim, "raw", 4, 0] for i in range(limits.max_tensors)
    ]
    fields = {
        "update_id": "u",
        "metrics": {f"m{i}": 0.5 for i in range(1024)},
        "manifest": manifest,
    }
    assert unpack_msgpack(msgpack.packb(fields), limits) == fields


def test_a_container_bomb_in_an_update_header_costs_less_than_its_payload() -> None:
    _client, server = open_pair()
    payload = msgpack.packb({"update_id": "u", "metrics": [{}] * 500_000})
    data = frames.pack_header(1, FrameType.UPDATE, Flags.NONE, len(payload)) + payload
    assert peak_bytes(lambda: server.receive_data(data, 0.0)) < 2 * len(payload)
