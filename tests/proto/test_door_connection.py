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

from fedllm_proto import frames
from fedllm_proto.connection import Connection
from fedllm_proto.errors import RemoteProtocolError
from fedllm_proto.frames import Flags, FrameType
from fedllm_proto.testing import open_pair

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
