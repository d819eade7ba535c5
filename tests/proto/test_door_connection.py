"""A failed or attacked Connection frees what it holds and refuses oversized input early.

Issue 10's attacks on the sans-I/O core, fed in memory: memory pinned by a failed connection,
container bombs, oversized frames before Hello, compressed control messages.
"""

from __future__ import annotations

import contextlib
import gc
import tracemalloc
import weakref
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest
import zstandard

from fedllm_proto import frames
from fedllm_proto.connection import Connection
from fedllm_proto.errors import ErrorCode, RemoteProtocolError
from fedllm_proto.frames import Flags, FrameType
from fedllm_proto.limits import Limits
from fedllm_proto.messages import Ack, Reject, RejectCode
from fedllm_proto.states import Role
from fedllm_proto.testing import hello, open_pair

BODY_BYTES = 8 << 20  # 8 MiB: large against everything else the test allocates


@contextlib.contextmanager
def no_cycle_collector() -> Iterator[None]:
    """Only reference counting frees objects inside (what happens between GC runs)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def frame(ftype: FrameType, payload: bytes, flags: Flags = Flags.NONE, raw: int = 0) -> bytes:
    return frames.pack_header(1, ftype, flags, len(payload), raw) + payload


def update_with_bad_field() -> bytes:
    """A complete Update (manifest + 8 MiB body) whose ``trigger`` is not a TriggerReason:
    it fails only once the body has been received and decoded."""
    fields = {
        "update_id": "u1",
        "base_version": 3,
        "round": -1,
        "sample_count": 10,
        "trigger": "bogus",
        "metrics": {},
        "manifest": [["w", "float32", [BODY_BYTES // 4], "raw", BODY_BYTES, 0]],
    }
    head = frame(FrameType.UPDATE, msgpack.packb(fields))
    return head + frame(FrameType.CHUNK, bytes(BODY_BYTES))


def fail(conn: Connection, data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        conn.receive_data(data, 0.0)


def test_failed_connection_is_freed_by_reference_counting() -> None:
    _client, server = open_pair()
    stream = update_with_bad_field()
    with no_cycle_collector():
        fail(server, stream)
        alive = weakref.ref(server)
        del server
        assert alive() is None


def test_failed_connection_keeps_no_payload_memory() -> None:
    _client, server = open_pair()
    stream = update_with_bad_field()
    with no_cycle_collector():
        tracemalloc.start()
        try:
            fail(server, stream)
            held, _peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert held < BODY_BYTES // 8


def test_failure_is_re_raised_with_the_same_code_every_time() -> None:
    _client, server = open_pair()
    fail(server, update_with_bad_field())
    codes = set()
    for _ in range(3):
        try:
            server.next_event()
        except RemoteProtocolError as exc:
            codes.add(exc.code)
    assert len(codes) == 1


def test_failed_connection_raises_a_fresh_error_without_history() -> None:
    _client, server = open_pair()
    fail(server, update_with_bad_field())
    errors = []
    for _ in range(2):
        try:
            server.next_event()
        except RemoteProtocolError as exc:
            errors.append(exc)
    assert errors[0] is not errors[1] and errors[1].__context__ is None


def test_a_numpy_body_is_traced_by_tracemalloc() -> None:
    # guards the memory test above: it is only meaningful if numpy buffers are traced
    tracemalloc.start()
    try:
        buf = np.empty(BODY_BYTES, np.uint8)
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del buf
    assert held >= BODY_BYTES


# ---- frames before Hello (attack 4) ---------------------------------------------------------


def refused_code(conn: Connection, data: bytes) -> ErrorCode:
    with pytest.raises(RemoteProtocolError) as err:
        conn.receive_data(data, 0.0)
    return err.value.code


def test_a_large_frame_before_hello_is_refused_at_its_header() -> None:
    header = frames.pack_header(1, FrameType.HELLO, Flags.NONE, Limits().max_frame_bytes)
    assert refused_code(Connection(Role.SERVER), header) is ErrorCode.FRAME_TOO_LARGE


def test_a_large_decompressed_size_before_hello_is_refused_at_its_header() -> None:
    header = frames.pack_header(1, FrameType.HELLO, Flags.COMPRESSED, 100, 1 << 20)
    assert refused_code(Connection(Role.SERVER), header) is ErrorCode.DECOMPRESSION_FAILED


def test_a_large_frame_after_hello_before_welcome_is_refused() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(Connection(Role.CLIENT).send(hello(), 0.0), 0.0)
    header = frames.pack_header(1, FrameType.BYE, Flags.NONE, 40 << 10)
    assert refused_code(server, header) is ErrorCode.FRAME_TOO_LARGE


def test_a_frame_before_hello_allocates_nothing_big() -> None:
    server = Connection(Role.SERVER)
    header = frames.pack_header(1, FrameType.HELLO, Flags.NONE, Limits().max_frame_bytes)
    tracemalloc.start()
    try:
        with contextlib.suppress(RemoteProtocolError):
            server.receive_data(header, 0.0)
        _held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 10


def test_the_largest_ascii_hello_fits_the_handshake_limit() -> None:
    big = hello(model_fingerprint="f" * 256, capabilities=tuple(f"{i:03d}" * 85 for i in range(64)))
    server = Connection(Role.SERVER)
    server.receive_data(Connection(Role.CLIENT).send(big, 0.0), 0.0)
    assert server.next_event() == big


# ---- compressed and oversized control messages (attack 6) -----------------------------------


NEVER_COMPRESSED = [FrameType.HEARTBEAT, FrameType.ACK, FrameType.TRAIN_REQUEST]


@pytest.mark.parametrize("ftype", NEVER_COMPRESSED, ids=lambda t: t.name)
def test_a_compressed_control_message_is_refused_at_its_header(ftype: FrameType) -> None:
    client, server = open_pair()
    receiver = server if ftype is FrameType.HEARTBEAT else client
    header = frames.pack_header(1, ftype, Flags.COMPRESSED, 12, 1 << 20)
    assert refused_code(receiver, header) is ErrorCode.BAD_FRAME


def test_a_compressed_heartbeat_is_refused_even_when_honest_about_its_size() -> None:
    _client, server = open_pair()
    payload = zstandard.ZstdCompressor().compress(b"\x80")  # an empty map
    data = frame(FrameType.HEARTBEAT, payload, Flags.COMPRESSED, 1)
    assert refused_code(server, data) is ErrorCode.BAD_FRAME


def test_a_bye_declaring_more_than_the_control_limit_is_refused_at_its_header() -> None:
    _client, server = open_pair()
    header = frames.pack_header(1, FrameType.BYE, Flags.COMPRESSED, 100, 1 << 20)
    assert refused_code(server, header) is ErrorCode.DECOMPRESSION_FAILED


def test_a_heartbeat_larger_than_the_control_limit_is_refused_at_its_header() -> None:
    _client, server = open_pair()
    header = frames.pack_header(1, FrameType.HEARTBEAT, Flags.NONE, 1 << 20)
    assert refused_code(server, header) is ErrorCode.FRAME_TOO_LARGE


def test_a_long_reject_detail_is_compressed_and_still_arrives() -> None:
    client, server = open_pair()
    reject = Reject("u1", RejectCode.TOO_STALE, "é" * 4096)
    client.receive_data(server.send(reject, 0.0), 0.0)
    assert client.next_event() == reject


def test_control_messages_are_never_sent_compressed() -> None:
    _client, server = open_pair(Limits(compress_threshold=0))
    data = server.send(Ack("u" * 256, 3), 0.0)
    assert not frames.parse_header(data[: frames.HEADER_SIZE], Limits()).compressed
