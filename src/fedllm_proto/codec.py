"""Tensor codec: ``TensorDict`` <-> a manifest plus a body of aligned byte segments.

Rules: the manifest (names, dtypes, shapes, per-tensor kind and byte counts) is validated
against ``Limits`` in full before the body is allocated; raw segments are memoryviews of the
caller's arrays on the way out and ``np.frombuffer`` views of the body on the way in (zero
copy); tensor bytes are little-endian; each segment starts at a multiple of ``ALIGN`` so the
decoded views are aligned. Lossy encodings touch float tensors only.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import msgpack
import numpy as np

from fedllm_proto import encodings as enc
from fedllm_proto.encodings import Kind, as_bytes
from fedllm_proto.errors import ErrorCode, RemoteProtocolError, remote
from fedllm_proto.limits import Limits

TensorDict = dict[str, np.ndarray]
ALIGN = 64  # segment alignment inside a body (a cache line)


class _WireDtypes(Mapping[str, np.dtype]):
    """Wire dtype name -> numpy dtype. bfloat16's comes from ml_dtypes, imported on first use:
    that import costs about a second of CPU, and a bad settings file (settings reach this
    module through fedllm_proto.messages) must fail fast. An array can only be bfloat16 once
    ml_dtypes is loaded, so checking a name never needs it."""

    def __init__(self) -> None:
        self._dtypes: dict[str, np.dtype | None] = {
            "float32": np.dtype("<f4"),
            "float16": np.dtype("<f2"),
            "bfloat16": None,  # ml_dtypes.bfloat16, on first lookup
            "int8": np.dtype("i1"),
            "int32": np.dtype("<i4"),
            "int64": np.dtype("<i8"),
            "uint8": np.dtype("u1"),
        }

    def __getitem__(self, name: str) -> np.dtype:
        dtype = self._dtypes[name]
        if dtype is None:
            import ml_dtypes

            dtype = self._dtypes[name] = np.dtype(ml_dtypes.bfloat16)
        return dtype

    def __iter__(self) -> Iterator[str]:
        return iter(self._dtypes)

    def __len__(self) -> int:
        return len(self._dtypes)

    def __contains__(self, name: object) -> bool:
        return name in self._dtypes


ALLOWED_DTYPES: Mapping[str, np.dtype] = _WireDtypes()
FLOAT_DTYPES = frozenset({"float32", "float16", "bfloat16"})
_PAD = bytes(ALIGN)


class Encoding(StrEnum):
    """How a tensor message's floats travel; everything but RAW is lossy."""

    RAW = "raw"
    FP16 = "fp16"
    INT8 = "int8"
    TOPK = "topk"

    @property
    def lossy(self) -> bool:
        return self is not Encoding.RAW


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One manifest entry: where a tensor lives in the body and how to rebuild it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    kind: Kind
    nbytes: int
    param: int  # int8: block size; topk: k; otherwise 0

    def to_wire(self) -> list[Any]:
        return [self.name, self.dtype, list(self.shape), str(self.kind), self.nbytes, self.param]


@dataclass(frozen=True, slots=True)
class EncodedBody:
    specs: tuple[TensorSpec, ...]
    segments: tuple[memoryview | bytes, ...]  # already padded to ALIGN; sums to body_bytes
    body_bytes: int


def dtype_name(arr: np.ndarray) -> str:
    name = arr.dtype.name
    if name not in ALLOWED_DTYPES:
        raise ValueError(f"dtype {name} is not allowed on the wire")
    return name


def _kind_for(encoding: Encoding, dtype: str) -> Kind:
    if encoding is Encoding.RAW or dtype not in FLOAT_DTYPES:
        return Kind.RAW
    if encoding is Encoding.FP16:
        return Kind.RAW if dtype == "float16" else Kind.FP16
    return Kind.INT8 if encoding is Encoding.INT8 else Kind.TOPK


def _encode_one(arr: np.ndarray, kind: Kind) -> tuple[list[memoryview], int]:
    if kind is Kind.RAW:
        return [as_bytes(arr)], 0
    if kind is Kind.FP16:
        return enc.encode_fp16(arr)
    if kind is Kind.INT8:
        return enc.encode_int8(arr)
    return enc.encode_topk(arr)


def encode_tensors(tensors: Mapping[str, np.ndarray], encoding: Encoding) -> EncodedBody:
    """Manifest + segments; raw tensors are not copied (non-contiguous ones are, once)."""
    specs: list[TensorSpec] = []
    segments: list[memoryview | bytes] = []
    offset = 0
    for name, tensor in tensors.items():
        arr = np.asarray(tensor, order="C")  # not ascontiguousarray: it turns 0-d into 1-d
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        dtype = dtype_name(arr)
        kind = _kind_for(encoding, dtype)
        parts, param = _encode_one(arr, kind)
        nbytes = sum(p.nbytes for p in parts)
        specs.append(TensorSpec(name, dtype, tuple(arr.shape), kind, nbytes, param))
        segments.extend(p for p in parts if p.nbytes)
        pad = -nbytes % ALIGN
        if pad:
            segments.append(_PAD[:pad])
        offset += nbytes + pad
    return EncodedBody(tuple(specs), tuple(segments), offset)


def parse_manifest(raw: Any, limits: Limits) -> tuple[tuple[TensorSpec, ...], int]:
    """Validate a wire manifest; returns the specs and the exact body size they imply."""
    if not isinstance(raw, list):
        raise remote(ErrorCode.BAD_MESSAGE, "manifest is not a list")
    if len(raw) > limits.max_tensors:
        raise remote(ErrorCode.LIMIT_EXCEEDED, f"{len(raw)} tensors > {limits.max_tensors}")
    specs = tuple(_parse_spec(entry, limits) for entry in raw)
    if len({s.name for s in specs}) != len(specs):
        raise remote(ErrorCode.BAD_MESSAGE, "duplicate tensor name")
    dense = sum(_size(s.shape) * ALLOWED_DTYPES[s.dtype].itemsize for s in specs)
    if dense > limits.max_tensor_bytes:
        raise remote(ErrorCode.LIMIT_EXCEEDED, f"decoded tensors {dense} B > limit")
    body = sum(s.nbytes + (-s.nbytes % ALIGN) for s in specs)
    if body > limits.max_message_bytes:
        raise remote(ErrorCode.LIMIT_EXCEEDED, f"body {body} B > {limits.max_message_bytes}")
    return specs, body


# What an Update header may carry beyond the manifest: 1024 metrics of 256 characters (4-byte
# UTF-8) plus the other fields.
_UPDATE_FIELDS_BYTES = 1024 * (4 * 256 + 16) + 4096


def limits_for_model(
    tensors: Mapping[str, np.ndarray], base: Limits | None = None, margin: int = 64 * 1024
) -> Limits:
    """``base`` narrowed to what an Update of this model can need (a receiving server's limits).

    Body and dense sizes: the model's raw body plus ``margin`` (lossy encodings of float32 are
    smaller than raw); tensor count: the model's. Frames and decompressed sizes: the larger of
    that body and the biggest Update header (manifest plus metrics), so an Update that could
    not be for this model is refused at its header, before any body byte is received.
    """
    base = base or Limits()
    body = encode_tensors(tensors, Encoding.RAW)  # views of the arrays, nothing copied
    dense = sum(np.asarray(t).nbytes for t in tensors.values())
    manifest = len(msgpack.packb([s.to_wire() for s in body.specs]))
    header = 2 * manifest + _UPDATE_FIELDS_BYTES  # 2x: lossy kinds write larger numbers
    frame = max(header, body.body_bytes + margin)
    max_frame = min(base.max_frame_bytes, frame)
    return replace(
        base,
        max_frame_bytes=max_frame,
        max_decompressed_bytes=min(base.max_decompressed_bytes, frame),
        max_message_bytes=min(base.max_message_bytes, body.body_bytes + margin),
        max_tensor_bytes=min(base.max_tensor_bytes, dense + margin),
        max_tensors=min(base.max_tensors, len(body.specs)),
        chunk_bytes=min(base.chunk_bytes, max_frame),
    )


def _size(shape: tuple[int, ...]) -> int:
    size = 1
    for dim in shape:
        size *= dim
    return size


def _parse_spec(entry: Any, limits: Limits) -> TensorSpec:
    if not (isinstance(entry, list) and len(entry) == 6):
        raise remote(ErrorCode.BAD_MESSAGE, "manifest entry is not a 6-item list")
    name, dtype, shape, kind, nbytes, param = entry
    _check_name(name, limits)
    if dtype not in ALLOWED_DTYPES:
        raise remote(ErrorCode.LIMIT_EXCEEDED, f"dtype {dtype!r} not allowed")
    dims = _check_shape(shape, limits)
    if kind not in Kind.__members__.values() or not isinstance(param, int):
        raise remote(ErrorCode.BAD_MESSAGE, f"bad tensor kind {kind!r}")
    spec = TensorSpec(name, dtype, dims, Kind(kind), nbytes, param)
    _check_kind(spec)
    return spec


def _check_name(name: Any, limits: Limits) -> None:
    if not isinstance(name, str) or not name or len(name.encode()) > limits.max_name_bytes:
        raise remote(ErrorCode.BAD_MESSAGE, "tensor name must be a non-empty short string")


def _check_shape(shape: Any, limits: Limits) -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) > limits.max_ndim:
        raise remote(ErrorCode.LIMIT_EXCEEDED, f"shape must be a list of <= {limits.max_ndim}")
    if not all(isinstance(d, int) and 0 <= d < 2**48 for d in shape):
        raise remote(ErrorCode.BAD_MESSAGE, f"bad shape {shape!r}")
    return tuple(shape)


def _check_kind(spec: TensorSpec) -> None:
    size = _size(spec.shape)
    is_float = spec.dtype in FLOAT_DTYPES
    ok = {
        Kind.RAW: spec.param == 0,
        Kind.FP16: is_float and spec.param == 0,
        Kind.INT8: is_float and 0 < spec.param <= 2**20,
        Kind.TOPK: is_float and 0 <= spec.param <= size,
    }[spec.kind]
    itemsize = ALLOWED_DTYPES[spec.dtype].itemsize
    if not ok or spec.nbytes != enc.encoded_nbytes(spec.kind, size, itemsize, spec.param):
        raise remote(ErrorCode.BAD_MESSAGE, f"tensor {spec.name!r}: bytes do not match shape")


def decode_body(specs: tuple[TensorSpec, ...], body: memoryview) -> TensorDict:
    """Rebuild tensors from a complete body; raw ones are views into ``body`` (no copy)."""
    out: TensorDict = {}
    offset = 0
    for spec in specs:
        seg = body[offset : offset + spec.nbytes]
        out[spec.name] = _decode_one(spec, seg)
        offset += spec.nbytes + (-spec.nbytes % ALIGN)
    return out


def _decode_one(spec: TensorSpec, seg: memoryview) -> np.ndarray:
    dtype = ALLOWED_DTYPES[spec.dtype]
    size = _size(spec.shape)
    if spec.kind is Kind.RAW:
        flat = np.frombuffer(seg, dtype=dtype, count=size)
    elif spec.kind is Kind.FP16:
        flat = enc.decode_fp16(seg, dtype, size)
    elif spec.kind is Kind.INT8:
        flat = enc.decode_int8(seg, dtype, size, spec.param)
    else:
        dense = enc.decode_topk(seg, dtype, size, spec.param)
        if dense is None:
            raise remote(ErrorCode.BAD_MESSAGE, f"tensor {spec.name!r}: bad top-k indices")
        flat = dense
    return flat.reshape(spec.shape)


_LEN = struct.Struct(">I")


def pack_tensors(tensors: Mapping[str, np.ndarray], encoding: Encoding = Encoding.RAW) -> bytes:
    """Standalone ``TensorDict -> bytes``: u32 manifest length, msgpack manifest, body."""
    body = encode_tensors(tensors, encoding)
    manifest = msgpack.packb([s.to_wire() for s in body.specs])
    return b"".join([_LEN.pack(len(manifest)), manifest, *body.segments])


def unpack_tensors(data: bytes | memoryview, limits: Limits | None = None) -> TensorDict:
    """Inverse of ``pack_tensors``; raises only ``RemoteProtocolError`` on bad input."""
    limits = limits or Limits()
    view = memoryview(data)
    if len(view) < _LEN.size:
        raise remote(ErrorCode.BAD_MESSAGE, "truncated tensor blob")
    (mlen,) = _LEN.unpack(view[: _LEN.size])
    end = _LEN.size + mlen
    if end > len(view):
        raise remote(ErrorCode.BAD_MESSAGE, "truncated tensor manifest")
    specs, body_bytes = parse_manifest(unpack_msgpack(view[_LEN.size : end], limits), limits)
    if len(view) - end != body_bytes:
        raise remote(ErrorCode.BAD_MESSAGE, "tensor body size differs from the manifest")
    return decode_body(specs, view[end:])


# msgpack container limits. The largest array a message has is its manifest (max_tensors);
# the largest map, metrics or strategy_params (1024 entries, plus room for unknown keys); the
# longest string a 4096-character detail in 4-byte UTF-8. Nothing on the wire is bin or ext.
_MAX_MAP_LEN = 1024 + 64
_MAX_STR_LEN = 4 * 4096
_MIN_ARRAY_LEN = 64  # Hello.capabilities, whatever max_tensors says


class _ItemBudget:
    """Counts every container and element decoded; refuses past the budget.

    Per-container limits alone let a nested payload (arrays of arrays of empty maps) build a
    container per payload byte, ~60 B each: this bounds their total. msgpack calls the hooks
    as each container closes, so at most the open ones (its stack) are built beyond it.
    """

    def __init__(self, limit: int) -> None:
        self.left = limit

    def take(self, obj: Any) -> Any:
        self.left -= 1 + len(obj)
        if self.left < 0:
            raise remote(ErrorCode.BAD_MESSAGE, "msgpack: too many containers or elements")
        return obj


def msgpack_item_budget(limits: Limits) -> int:
    """Containers + elements one payload may hold: a full manifest plus the message's maps."""
    per_tensor = 3 + 6 + limits.max_ndim  # manifest slot, entry list + 6 items, shape + dims
    return limits.max_tensors * per_tensor + 4 * _MAX_MAP_LEN


def unpack_msgpack(payload: bytes | memoryview, limits: Limits | None = None) -> Any:
    """msgpack with allocation limits derived from ``limits``; every failure is BAD_MESSAGE.

    No container may declare more entries than the payload has bytes or than any message
    needs, so msgpack never preallocates past that; the item budget bounds the total.
    """
    limits = limits or Limits()
    size = len(payload)
    budget = _ItemBudget(msgpack_item_budget(limits))
    try:
        return msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            max_array_len=min(size, max(limits.max_tensors, _MIN_ARRAY_LEN)),
            max_map_len=min(size, _MAX_MAP_LEN),
            max_str_len=min(size, _MAX_STR_LEN),
            max_bin_len=0,
            max_ext_len=0,
            list_hook=budget.take,
            object_hook=budget.take,
        )
    except RemoteProtocolError:
        raise
    except Exception as exc:  # msgpack raises a zoo of types; all mean "bad payload"
        raise remote(ErrorCode.BAD_MESSAGE, f"msgpack: {type(exc).__name__}: {exc}") from None
