"""Per-tensor encodings: the arithmetic of fp16, int8-with-block-scales and top-k sparse.

Rules: pure numpy, no framing. Each encoder turns one C-contiguous array into a list of byte
segments plus an integer parameter; each decoder inverts that from a memoryview of exactly the
segment's bytes. Only float tensors are ever encoded lossily; integers always travel raw.
Non-finite inputs survive as NaN so the receiver's door check can still see them.
"""

from __future__ import annotations

import math
from enum import StrEnum

import numpy as np

INT8_BLOCK = 256  # elements per int8 scale: 1.6 % overhead, bounded error per block
TOPK_FRACTION = 0.01  # keep the largest 1 % magnitudes (the measured ~1.5 % of raw size)


class Kind(StrEnum):
    """How one tensor's bytes are laid out in a message body."""

    RAW = "raw"
    FP16 = "fp16"
    INT8 = "int8"
    TOPK = "topk"


def as_bytes(arr: np.ndarray) -> memoryview:
    """A flat byte view of a C-contiguous array (works for bfloat16, unlike memoryview(arr))."""
    return arr.reshape(-1).view(np.uint8).data


def index_dtype(size: int) -> np.dtype:
    return np.dtype("<u4") if size < 2**32 else np.dtype("<u8")


def encoded_nbytes(kind: Kind, size: int, itemsize: int, param: int) -> int:
    """Exact body bytes a tensor of ``size`` elements takes; used to validate manifests."""
    if kind is Kind.RAW:
        return size * itemsize
    if kind is Kind.FP16:
        return size * 2
    if kind is Kind.INT8:
        return math.ceil(size / param) * 4 + size if size else 0
    return param * (index_dtype(size).itemsize + itemsize)  # TOPK: k indices + k values


def encode_fp16(arr: np.ndarray) -> tuple[list[memoryview], int]:
    with np.errstate(over="ignore"):  # beyond ±65504 becomes inf on purpose: visibly off
        half = arr.astype(np.float16).reshape(-1)  # (n,) float16
    return [as_bytes(half)], 0


def decode_fp16(seg: memoryview, dtype: np.dtype, size: int) -> np.ndarray:
    return np.frombuffer(seg, dtype="<f2", count=size).astype(dtype)


def encode_int8(arr: np.ndarray, block: int = INT8_BLOCK) -> tuple[list[memoryview], int]:
    flat = arr.reshape(-1).astype(np.float32)  # (n,)
    nblocks = math.ceil(flat.size / block)
    padded = np.zeros(nblocks * block, dtype=np.float32)
    padded[: flat.size] = flat
    blocks = padded.reshape(nblocks, block)  # (nblocks, block)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        amax = np.max(np.abs(blocks), axis=1)  # (nblocks,) NaN/inf when the block has one
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype("<f4")
        finite = np.isfinite(scale)
        scale[~finite] = np.nan  # the whole block decodes to NaN: visibly non-finite
        q = np.rint(blocks / np.where(finite, scale, 1.0)[:, None])
    q = np.where(np.isfinite(q), q, 0).clip(-127, 127).astype(np.int8)
    return [as_bytes(scale), as_bytes(q.reshape(-1)[: flat.size])], block


def decode_int8(seg: memoryview, dtype: np.dtype, size: int, block: int) -> np.ndarray:
    nblocks = math.ceil(size / block)
    scale = np.frombuffer(seg, dtype="<f4", count=nblocks)  # (nblocks,)
    q = np.frombuffer(seg, dtype=np.int8, count=size, offset=nblocks * 4)  # (n,)
    padded = np.zeros(nblocks * block, dtype=np.float32)
    padded[:size] = q
    with np.errstate(over="ignore", invalid="ignore"):  # rounding can step past float16 max
        out = padded.reshape(nblocks, block) * scale[:, None]  # (nblocks, block)
        return out.reshape(-1)[:size].astype(dtype)


def encode_topk(arr: np.ndarray, fraction: float = TOPK_FRACTION) -> tuple[list[memoryview], int]:
    flat = arr.reshape(-1)  # (n,)
    k = min(flat.size, max(1, math.ceil(fraction * flat.size))) if flat.size else 0
    mags = np.abs(flat.astype(np.float32))
    idx = np.argpartition(mags, flat.size - k)[flat.size - k :] if k else np.empty(0, np.int64)
    idx = np.sort(idx).astype(index_dtype(flat.size))  # (k,) strictly increasing
    values = np.ascontiguousarray(flat[idx])  # (k,) original float dtype
    return [as_bytes(idx), as_bytes(values)], k


def decode_topk(seg: memoryview, dtype: np.dtype, size: int, k: int) -> np.ndarray | None:
    """Dense (n,) array, or None when the indices are not strictly increasing and in range."""
    idt = index_dtype(size)
    idx = np.frombuffer(seg, dtype=idt, count=k)
    values = np.frombuffer(seg, dtype=dtype, count=k, offset=k * idt.itemsize)
    if k and (int(idx[-1]) >= size or (k > 1 and not bool(np.all(idx[1:] > idx[:-1])))):
        return None
    out = np.zeros(size, dtype=dtype)
    out[idx] = values
    return out
