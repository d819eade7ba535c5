"""Messages <-> frames: msgpack field maps, the tensor-message header, and chunk splitting.

Rules: a message payload is a msgpack map keyed by field name (docs/protocol.md); unknown keys
are ignored, missing required keys are BAD_MESSAGE. A tensor message is one header frame
(fields + manifest) followed by CHUNK frames that carry the body; raw bodies are never
compressed and chunk payloads are memoryviews of the sender's arrays (no copy). Whether a
body is zstd-compressed is decided per encoding (``COMPRESS_BODY``), measured in the bench.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from fedllm_proto import frames
from fedllm_proto.codec import EncodedBody, Encoding, TensorSpec, encode_tensors
from fedllm_proto.errors import ErrorCode, remote
from fedllm_proto.frames import Flags, FrameType
from fedllm_proto.limits import Limits
from fedllm_proto.messages import MESSAGE_TYPES, GlobalModel, InvalidMessage, Message, Update

Buffer = bytes | memoryview
# Measured on 20 MB of float32 deltas (zstd level 1, 2-core VM): raw saves 7 % at 265 MB/s,
# fp16 8 % at 284 MB/s, int8 6 % at 397 MB/s -- all slower than the TLS link, so not worth it.
# Top-k bodies are ~2 % of raw and their sorted indices shrink 13 % at 890 MB/s: compress.
COMPRESS_BODY: dict[Encoding, bool] = {
    Encoding.RAW: False,
    Encoding.FP16: False,
    Encoding.INT8: False,
    Encoding.TOPK: True,
}
_TENSOR_FIELDS = frozenset({"tensors"})


@dataclass(frozen=True, slots=True)
class EncodedMessage:
    """Every byte of one message as a sequence of buffers, ready for ``writelines``."""

    type: FrameType
    version: int
    frames: tuple[tuple[Buffer, ...], ...]  # one tuple of buffers per frame, in order
    nbytes: int


def _fields(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(msg):
        if f.name in _TENSOR_FIELDS:
            continue
        value = getattr(msg, f.name)
        out[f.name] = dict(value) if hasattr(value, "items") else value
    return out


def _payload_frame(
    version: int, ftype: FrameType, payload: bytes, flags: Flags, limits: Limits
) -> tuple[Buffer, ...]:
    if len(payload) > limits.compress_threshold and ftype not in frames.NEVER_COMPRESSED:
        packed = frames.compress(payload)
        if len(packed) < len(payload):
            hdr = frames.pack_header(
                version, ftype, flags | Flags.COMPRESSED, len(packed), len(payload)
            )
            return (hdr, packed)
    return (frames.pack_header(version, ftype, flags, len(payload)), payload)


def encode_message(msg: Message, version: int, limits: Limits) -> EncodedMessage:
    fields = _fields(msg)
    if not isinstance(msg, GlobalModel | Update):
        frame = _payload_frame(version, msg.TYPE, msgpack.packb(fields), Flags.NONE, limits)
        return _done(msg.TYPE, version, [frame])
    encoding = msg.encoding
    body = encode_tensors(msg.tensors, encoding)
    fields["manifest"] = [s.to_wire() for s in body.specs]
    flags = Flags.LOSSY if encoding.lossy else Flags.NONE
    head = _payload_frame(version, msg.TYPE, msgpack.packb(fields), flags, limits)
    chunks = _chunk_frames(version, body, limits.chunk_bytes, COMPRESS_BODY[encoding])
    return _done(msg.TYPE, version, [head, *chunks])


def _done(ftype: FrameType, version: int, frame_list: list[tuple[Buffer, ...]]) -> EncodedMessage:
    nbytes = sum(len(b) if isinstance(b, bytes) else b.nbytes for f in frame_list for b in f)
    return EncodedMessage(ftype, version, tuple(frame_list), nbytes)


def _chunk_frames(
    version: int, body: EncodedBody, chunk_bytes: int, compress: bool
) -> Iterator[tuple[Buffer, ...]]:
    for parts in _split(body.segments, chunk_bytes):
        size = sum(len(p) for p in parts)
        if compress:
            packed = frames.compress(b"".join(parts))
            hdr = frames.pack_header(version, FrameType.CHUNK, Flags.COMPRESSED, len(packed), size)
            yield (hdr, packed)
        else:
            yield (frames.pack_header(version, FrameType.CHUNK, Flags.NONE, size), *parts)


def _split(segments: Sequence[Buffer], chunk_bytes: int) -> Iterator[list[memoryview]]:
    """Regroup segments into runs of <= chunk_bytes, slicing views (never copying)."""
    run: list[memoryview] = []
    room = chunk_bytes
    for seg in segments:
        view = memoryview(seg)
        while len(view):
            take = view[:room]
            run.append(take)
            view = view[len(take) :]
            room -= len(take)
            if room == 0:
                yield run
                run, room = [], chunk_bytes
    if run:
        yield run


def decode_fields(ftype: FrameType, payload: Any) -> dict[str, Any]:
    """The msgpack map of a message frame, checked for type only."""
    if not isinstance(payload, dict):
        raise remote(ErrorCode.BAD_MESSAGE, f"{ftype.name} payload is not a map")
    return payload


def build_message(ftype: FrameType, fields: dict[str, Any], tensors: Any = None) -> Message:
    """Construct the typed message; any validation failure is the peer's BAD_MESSAGE."""
    cls = MESSAGE_TYPES[ftype]
    kwargs = {f.name: fields[f.name] for f in dataclasses.fields(cls) if f.name in fields}
    if tensors is not None:
        kwargs["tensors"] = tensors
    try:
        return cls(**kwargs)
    except (InvalidMessage, TypeError, ValueError) as exc:
        raise remote(ErrorCode.BAD_MESSAGE, f"{ftype.name}: {exc}") from None


def tensor_header(ftype: FrameType, fields: dict[str, Any], flags: Flags) -> tuple[Any, Encoding]:
    """Split a tensor message's header fields into (raw manifest, encoding) and check the flag."""
    manifest = fields.pop("manifest", None)
    encoding = Encoding.RAW
    try:  # GLOBAL_MODEL without the key (older servers): raw
        encoding = Encoding(fields.get("encoding", "raw"))
    except ValueError:
        raise remote(ErrorCode.BAD_MESSAGE, "unknown encoding") from None
    if bool(flags & Flags.LOSSY) != encoding.lossy:
        raise remote(ErrorCode.BAD_MESSAGE, "LOSSY flag disagrees with the encoding")
    return manifest, encoding


__all__ = ["Buffer", "EncodedMessage", "TensorSpec", "encode_message"]
