"""Limits sized to the model: an Update that cannot be for it is refused before its body."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from fedllm_proto import frames
from fedllm_proto.codec import Encoding, limits_for_model
from fedllm_proto.errors import ErrorCode, RemoteProtocolError
from fedllm_proto.frames import Flags, FrameType
from fedllm_proto.limits import Limits
from fedllm_proto.messages import Update
from fedllm_proto.testing import drain, example_tensors, open_pair, tensors_equal, update

MODEL = {"lora_A": np.zeros((8, 16), np.float32), "lora_B": np.zeros((16, 8), np.float32)}


def oversized_update_header(body_bytes: int) -> bytes:
    """Only the header frame of an Update whose manifest declares ``body_bytes`` of body."""
    fields = {
        "update_id": "u1",
        "base_version": 3,
        "round": -1,
        "sample_count": 10,
        "trigger": "performance",
        "metrics": {},
        "manifest": [["lora_A", "float32", [body_bytes // 4], "raw", body_bytes, 0]],
    }
    payload = msgpack.packb(fields)
    return frames.pack_header(1, FrameType.UPDATE, Flags.NONE, len(payload)) + payload


def test_an_update_far_larger_than_the_model_is_refused_at_its_header() -> None:
    _client, server = open_pair(limits_for_model(MODEL))
    with pytest.raises(RemoteProtocolError) as err:
        server.receive_data(oversized_update_header(512 << 20), 0.0)
    assert err.value.code is ErrorCode.LIMIT_EXCEEDED


def test_a_frame_far_larger_than_the_model_is_refused_at_its_header() -> None:
    _client, server = open_pair(limits_for_model(MODEL))
    header = frames.pack_header(1, FrameType.UPDATE, Flags.NONE, 8 << 20)
    with pytest.raises(RemoteProtocolError) as err:
        server.receive_data(header, 0.0)
    assert err.value.code is ErrorCode.FRAME_TOO_LARGE


@pytest.mark.parametrize("encoding", list(Encoding))
def test_an_honest_update_of_the_model_fits_its_limits(encoding: Encoding) -> None:
    model = example_tensors()
    client, server = open_pair(limits_for_model(model))
    server.receive_data(client.send(update(encoding, model), 0.0), 0.0)
    (got,) = drain(server)
    assert isinstance(got, Update) and got.tensors.keys() == model.keys()


def test_an_honest_raw_update_arrives_bit_exact_under_model_limits() -> None:
    model = {"w": np.arange(300_000, dtype=np.float32).reshape(600, 500)}
    client, server = open_pair(limits_for_model(model, Limits(chunk_bytes=64 << 10)))
    server.receive_data(client.send(update(Encoding.RAW, model), 0.0), 0.0)
    (got,) = drain(server)
    assert isinstance(got, Update) and tensors_equal(got.tensors, model)


def test_model_limits_never_widen_the_base() -> None:
    base = Limits(max_frame_bytes=1 << 20, chunk_bytes=1 << 20)
    big = {"w": np.zeros(4 << 20, np.float32)}
    assert limits_for_model(big, base).max_frame_bytes == 1 << 20
