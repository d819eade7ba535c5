"""Frame headers a receiver refuses before it buffers a payload byte (issue 10's attacks)."""

from __future__ import annotations

import pytest

from fedllm_proto import frames
from fedllm_proto.errors import ErrorCode, RemoteProtocolError
from fedllm_proto.frames import FrameType
from fedllm_proto.limits import Limits

RESERVED_BITS = [1 << bit for bit in range(16) if not (1 << bit) & int(frames.KNOWN_FLAGS)]


@pytest.mark.parametrize("bit", RESERVED_BITS, ids=hex)
def test_every_reserved_flag_bit_is_a_bad_frame(bit: int) -> None:
    header = frames.HEADER.pack(frames.MAGIC, 1, FrameType.HEARTBEAT, bit, 1, 0)
    with pytest.raises(RemoteProtocolError) as err:
        frames.parse_header(header, Limits())
    assert err.value.code is ErrorCode.BAD_FRAME


def test_there_are_fourteen_reserved_flag_bits() -> None:
    assert len(RESERVED_BITS) == 14
