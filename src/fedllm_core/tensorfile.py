"""Durable safetensors files written straight from the arrays, hashed from the same buffers.

Why not ``safetensors.numpy.save``: it builds the whole file as one ``bytes`` object (a copy
of every tensor), and the caller then hashes and writes that copy. For a 100 MB global model
that was 0.12 s and 100 MB of freshly touched memory per checkpoint (measured on the 2-core
development VM). Here the 8-byte header length, the JSON header and each tensor's own buffer
are fed to sha256 and then to ``atomic_write_parts`` in order: no copy of the tensors, and the
file is byte-for-byte a safetensors file (``safetensors.numpy.load`` reads it; a test checks).
Format: https://github.com/huggingface/safetensors#format (little-endian u64 header size N, N
bytes of JSON padded with spaces to a multiple of 8, then the tensor bytes back to back).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

from fedllm_core.files import atomic_write_parts

# numpy dtype -> safetensors dtype tag (the federated state is float32; the rest for completeness)
_DTYPE_TAGS = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


def raw_view(arr: np.ndarray) -> memoryview:
    """The array's bytes in C order as a flat memoryview: no copy unless ``arr`` is not
    C-contiguous. Works for every dtype (bfloat16 too) and for 0-d and empty arrays."""
    return np.require(arr, requirements="C").reshape(-1).view(np.uint8).data


def safetensors_parts(tensors: Mapping[str, np.ndarray]) -> list[bytes | memoryview]:
    """The pieces of a safetensors file for ``tensors``, in file order, sharing their memory."""
    header: dict[str, object] = {}
    bodies: list[memoryview] = []
    offset = 0
    for name, arr in tensors.items():
        tag = _DTYPE_TAGS.get(arr.dtype)
        if tag is None:
            raise TypeError(f"tensor {name!r}: dtype {arr.dtype} has no safetensors tag")
        header[name] = {
            "dtype": tag,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        bodies.append(raw_view(arr))
        offset += arr.nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the reference writer aligns the body to 8 bytes
    return [struct.pack("<Q", len(head)), head, *bodies]


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray], mode: int = 0o644) -> str:
    """Atomically and durably write ``tensors`` to ``path``; return the file's sha256 (hex)."""
    parts = safetensors_parts(tensors)
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    atomic_write_parts(path, parts, mode)
    return digest.hexdigest()
