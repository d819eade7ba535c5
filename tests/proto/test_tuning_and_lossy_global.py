"""TUNING (11): the feedback loop's thresholds survive the wire, out-of-range values do not;
GLOBAL_MODEL's encoding (lossy broadcasts)."""

import numpy as np
import pytest

from fedllm_proto.codec import Encoding, pack_tensors, unpack_tensors
from fedllm_proto.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from fedllm_proto.frames import Flags, FrameType
from fedllm_proto.messages import GlobalModel, InvalidMessage, Tuning
from fedllm_proto.testing import drain, example_tensors, open_pair
from fedllm_proto.wire import build_message, tensor_header


def test_tuning_round_trips_from_server_to_client():
    client, server = open_pair()
    sent = Tuning(7, 0.03, 4.0)
    client.receive_data(server.send(sent, 0.0), 0.0)
    assert drain(client) == [sent]


@pytest.mark.parametrize(
    "fields",
    [
        {"version": 1, "perf_delta": 1.5, "kappa": 2.0},  # a change of F1 above 1
        {"version": 1, "perf_delta": -0.1, "kappa": 2.0},
        {"version": 1, "perf_delta": 0.01, "kappa": float("nan")},
        {"version": 1, "perf_delta": 0.01, "kappa": 1e9},  # a threshold that never fires
        {"version": -1, "perf_delta": 0.01, "kappa": 2.0},
        {"version": 1, "perf_delta": "0.01", "kappa": 2.0},
        {"version": 1, "kappa": 2.0},  # perf_delta missing
    ],
)
def test_bad_tuning_fields_are_the_peers_bad_message(fields):
    with pytest.raises(RemoteProtocolError) as info:
        build_message(FrameType.TUNING, fields)
    assert info.value.code is ErrorCode.BAD_MESSAGE


def test_a_client_may_not_send_tuning():
    client, _ = open_pair()
    with pytest.raises(LocalProtocolError, match="TUNING"):
        client.send(Tuning(1, 0.01, 2.0), 0.0)


def test_tuning_cannot_be_built_out_of_range():
    with pytest.raises(InvalidMessage, match="perf_delta"):
        Tuning(1, 2.0, 2.0)


# --- GLOBAL_MODEL's encoding (lossy broadcasts, capability-gated) ------------------------


@pytest.mark.parametrize("encoding", [Encoding.RAW, Encoding.FP16, Encoding.INT8])
def test_a_global_model_arrives_as_the_decoded_tensors_of_its_encoding(encoding):
    client, server = open_pair()
    tensors = example_tensors(3)
    client.receive_data(server.send(GlobalModel(5, tensors, encoding), 0.0), 0.0)
    (got,) = drain(client)
    assert isinstance(got, GlobalModel) and got.encoding is encoding
    expected = unpack_tensors(pack_tensors(tensors, encoding))
    assert got.tensors.keys() == expected.keys()
    for name, array in expected.items():
        np.testing.assert_array_equal(got.tensors[name], array)  # bit for bit


def test_a_global_model_is_never_topk():
    with pytest.raises(InvalidMessage, match="topk"):
        GlobalModel(1, example_tensors(0), Encoding.TOPK)


def test_a_lossy_flag_on_a_raw_global_model_is_a_bad_message():
    fields = {"version": 1, "manifest": [], "encoding": "raw"}
    with pytest.raises(RemoteProtocolError) as info:
        tensor_header(FrameType.GLOBAL_MODEL, fields, Flags.LOSSY)
    assert info.value.code is ErrorCode.BAD_MESSAGE
