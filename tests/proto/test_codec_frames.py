"""Tensor codec round-trips and the limits a receiver enforces before allocating."""

from __future__ import annotations

import contextlib
import math
import tracemalloc

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedllm_proto import frames
from fedllm_proto.codec import (
    ALLOWED_DTYPES,
    Encoding,
    pack_tensors,
    parse_manifest,
    unpack_tensors,
)
from fedllm_proto.errors import ErrorCode, ProtocolError, RemoteProtocolError
from fedllm_proto.frames import Flags, FrameType
from fedllm_proto.limits import Limits
from fedllm_proto.testing import example_tensors, open_pair, tensors_equal

CODEC = settings(max_examples=60, deadline=None)
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)


def arrays(dtype_name: str) -> st.SearchStrategy[np.ndarray]:
    dtype = ALLOWED_DTYPES[dtype_name]
    if dtype_name == "bfloat16":  # hypothesis has no bfloat16: draw its raw 16-bit patterns
        return hnp.arrays(np.uint16, shapes).map(lambda a: a.view(dtype))
    return hnp.arrays(dtype, shapes)


tensor_dicts = st.dictionaries(
    st.text(min_size=1, max_size=12),
    st.sampled_from(sorted(ALLOWED_DTYPES)).flatmap(arrays),
    max_size=6,
)


@CODEC
@given(tensors=tensor_dicts)
def test_raw_round_trip_is_bit_exact_for_every_dtype_and_shape(tensors: dict) -> None:
    assert tensors_equal(unpack_tensors(pack_tensors(tensors, Encoding.RAW)), tensors)


@CODEC
@given(tensors=tensor_dicts, encoding=st.sampled_from(list(Encoding)))
def test_every_encoding_keeps_names_dtypes_and_shapes(tensors: dict, encoding: Encoding) -> None:
    out = unpack_tensors(pack_tensors(tensors, encoding))
    assert {k: (v.dtype, v.shape) for k, v in out.items()} == {
        k: (v.dtype, v.shape) for k, v in tensors.items()
    }


@CODEC
@given(data=st.binary(max_size=300))
def test_random_blobs_raise_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        unpack_tensors(data)


def test_zero_d_and_empty_tensors_round_trip() -> None:
    t = {"scalar": np.array(3.5, np.float32), "empty": np.zeros((0, 3), np.int64)}
    assert tensors_equal(unpack_tensors(pack_tensors(t)), t)


def test_raw_decode_is_a_view_of_the_received_bytes() -> None:
    blob = bytearray(pack_tensors({"w": np.arange(1000, dtype=np.float32)}))
    out = unpack_tensors(memoryview(blob))
    assert np.shares_memory(out["w"], np.frombuffer(blob, np.uint8))


def test_integer_tensors_stay_exact_under_lossy_encodings() -> None:
    t = {"ids": np.arange(-50, 50, dtype=np.int64)}
    assert all(tensors_equal(unpack_tensors(pack_tensors(t, e)), t) for e in Encoding)


def test_fp16_error_is_within_half_precision() -> None:
    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    y = unpack_tensors(pack_tensors({"x": x}, Encoding.FP16))["x"]
    assert np.max(np.abs(y - x) / np.maximum(np.abs(x), 1e-3)) < 1e-3


def test_int8_error_is_within_half_a_step_of_each_block() -> None:
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    y = unpack_tensors(pack_tensors({"x": x}, Encoding.INT8))["x"]
    step = np.abs(x[:256]).max() / 127
    assert np.max(np.abs(y[:256] - x[:256])) <= step / 2 + 1e-6


def test_int8_keeps_non_finite_values_visible() -> None:
    x = np.ones(300, np.float32)
    x[5] = np.inf
    y = unpack_tensors(pack_tensors({"x": x}, Encoding.INT8))["x"]
    assert not np.isfinite(y[:256]).any() and np.isfinite(y[256:]).all()


def test_topk_keeps_exactly_the_largest_magnitudes() -> None:
    x = np.zeros(1000, np.float32)
    x[[3, 500, 999]] = [5.0, -7.0, 0.1]
    x[10:20] = 0.01
    y = unpack_tensors(pack_tensors({"x": x}, Encoding.TOPK))["x"]
    assert np.count_nonzero(y) == math.ceil(0.01 * 1000) and y[500] == -7.0


def test_topk_body_is_about_two_percent_of_raw() -> None:
    x = {"x": np.random.default_rng(2).standard_normal(100_000).astype(np.float32)}
    assert len(pack_tensors(x, Encoding.TOPK)) < 0.03 * len(pack_tensors(x))


def _manifest(*entries: list) -> list:
    return list(entries)


@pytest.mark.parametrize(
    ("entry", "code"),
    [
        (["w", "float64", [2], "raw", 16, 0], ErrorCode.LIMIT_EXCEEDED),  # dtype not allowed
        (["w", "float32", [2], "raw", 999, 0], ErrorCode.BAD_MESSAGE),  # bytes != shape
        (["w", "float32", [-1], "raw", 0, 0], ErrorCode.BAD_MESSAGE),
        (["w", "float32", [1] * 9, "raw", 4, 0], ErrorCode.LIMIT_EXCEEDED),  # rank
        (["w", "int32", [4], "fp16", 8, 0], ErrorCode.BAD_MESSAGE),  # lossy on ints
        (["w", "float32", [4], "topk", 40, 5], ErrorCode.BAD_MESSAGE),  # k > size
        (["", "float32", [1], "raw", 4, 0], ErrorCode.BAD_MESSAGE),
        (["w", "float32", [1], "zip", 4, 0], ErrorCode.BAD_MESSAGE),
    ],
)
def test_bad_manifest_entries_are_refused(entry: list, code: ErrorCode) -> None:
    with pytest.raises(RemoteProtocolError) as err:
        parse_manifest([entry], Limits())
    assert err.value.code is code


def test_too_many_tensors_are_refused() -> None:
    entries = [[f"t{i}", "uint8", [1], "raw", 1, 0] for i in range(5)]
    with pytest.raises(RemoteProtocolError) as err:
        parse_manifest(entries, Limits(max_tensors=4))
    assert err.value.code is ErrorCode.LIMIT_EXCEEDED


def test_huge_declared_tensor_is_refused_without_allocating() -> None:
    entry = ["w", "float32", [2**40], "topk", 8, 1]  # 8 body bytes that would decode to 4 TiB
    tracemalloc.start()
    with pytest.raises(RemoteProtocolError):
        parse_manifest([entry], Limits())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1 << 20


def test_oversize_frame_is_refused_from_its_header_alone() -> None:
    _client, server = open_pair()
    header = frames.pack_header(1, FrameType.UPDATE, Flags.NONE, 2**32 - 1)
    tracemalloc.start()
    with pytest.raises(RemoteProtocolError) as err:
        server.receive_data(header, 0.0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (err.value.code, peak < 1 << 20) == (ErrorCode.FRAME_TOO_LARGE, True)


def test_zstd_bomb_declaring_its_true_size_is_refused_before_decompressing() -> None:
    _client, server = open_pair()
    bomb = zstandard.ZstdCompressor().compress(bytes(200 << 20))  # 200 MiB of zeros, tiny
    header = frames.pack_header(1, FrameType.BYE, Flags.COMPRESSED, len(bomb), 200 << 20)
    with pytest.raises(RemoteProtocolError) as err:
        server.receive_data(header + bomb, 0.0)
    assert err.value.code is ErrorCode.DECOMPRESSION_FAILED


def test_zstd_bomb_lying_about_its_size_is_cut_at_the_declared_size() -> None:
    _client, server = open_pair()
    bomb = zstandard.ZstdCompressor().compress(bytes(200 << 20))
    header = frames.pack_header(1, FrameType.BYE, Flags.COMPRESSED, len(bomb), 100)
    tracemalloc.start()
    with pytest.raises(RemoteProtocolError) as err:
        server.receive_data(header + bomb, 0.0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (err.value.code, peak < 8 << 20) == (ErrorCode.DECOMPRESSION_FAILED, True)


def test_large_msgpack_payloads_are_compressed() -> None:
    client, _server = open_pair()
    from fedllm_proto.messages import Bye

    data = client.send(Bye("x" * 4000 + "y" * 96), 0.0)
    assert frames.parse_header(data[:16], Limits()).compressed


def test_raw_bodies_are_never_compressed() -> None:
    client, _server = open_pair()
    from fedllm_proto.messages import Update

    tensors = {"z": np.zeros(100_000, np.float32)}  # would compress extremely well
    msg = Update("u", 0, -1, 1, "performance", {}, tensors)  # type: ignore[arg-type]
    assert len(client.send(msg, 0.0)) > 400_000


def test_tls_record_into_plain_endpoint_gets_a_clear_reason() -> None:
    _client, server = open_pair()
    with pytest.raises(RemoteProtocolError) as err:
        server.receive_data(bytes([0x16, 0x03, 0x01, 0x02]) + bytes(12), 0.0)
    assert "speaking TLS" in err.value.detail


def test_msgpack_payload_that_is_not_a_map_is_a_bad_message() -> None:
    _client, server = open_pair()
    payload = msgpack.packb([1, 2, 3])
    with pytest.raises(RemoteProtocolError) as err:
        server.receive_data(
            frames.pack_header(1, FrameType.UPDATE, Flags.NONE, len(payload)) + payload, 0.0
        )
    assert err.value.code is ErrorCode.BAD_MESSAGE


def test_example_tensors_cover_every_allowed_dtype() -> None:
    assert {t.dtype.name for t in example_tensors().values()} == set(ALLOWED_DTYPES)
