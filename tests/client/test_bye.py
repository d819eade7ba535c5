"""What a client reads from the server's Bye frame: the code, a missing code (an older
server) and a code this build does not know (a newer server) -- never a protocol error."""

from __future__ import annotations

import msgpack
import pytest

from fedllm_proto import frames
from fedllm_proto.frames import Flags, FrameType
from fedllm_proto.messages import Bye, ByeCode
from fedllm_proto.testing import open_pair


def _bye_as_client_reads_it(fields: dict[str, object]) -> object:
    client, _server = open_pair()
    payload = msgpack.packb(fields)
    client.receive_data(frames.pack_header(1, FrameType.BYE, Flags.NONE, len(payload)) + payload, 0)
    return client.next_event()


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"reason": "stop_after_versions", "code": "finished"}, ByeCode.FINISHED),
        ({"reason": "sigterm"}, ByeCode.UNSPECIFIED),  # a server from before Bye codes
        ({"reason": "x", "code": "moved_to_mars"}, ByeCode.UNSPECIFIED),  # a newer server
    ],
)
def test_a_bye_code_reads_back_and_an_absent_or_unknown_one_is_unspecified(
    fields: dict[str, object], code: ByeCode
) -> None:
    assert _bye_as_client_reads_it(fields) == Bye(str(fields["reason"]), code)


def test_a_bye_sent_with_a_code_arrives_with_it() -> None:
    client, server = open_pair()
    client.receive_data(server.send(Bye("sigterm", ByeCode.RESTARTING), 0.0), 0.0)
    assert client.next_event() == Bye("sigterm", ByeCode.RESTARTING)
