"""The streamed safetensors writer: files the reference library reads back exactly."""

import hashlib
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open

from fedllm_core.tensorfile import write_safetensors

DTYPES = ["float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool"]


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    out = {f"t.{name}": (rng.standard_normal((3, 5)) * 50).astype(name) for name in DTYPES}
    out["t.bfloat16"] = rng.standard_normal(7).astype(ml_dtypes.bfloat16)
    out["scalar"] = np.array(2.5, dtype=np.float32)  # 0-d stays 0-d
    out["empty"] = np.zeros((0, 4), dtype=np.float32)
    out["strided"] = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]  # not contiguous
    return out


def test_reference_loader_reads_back_every_tensor_bit_exactly(tmp_path: Path) -> None:
    tensors = {k: v for k, v in _tensors().items() if k != "t.bfloat16"}  # numpy loader: no bf16
    path = tmp_path / "a.safetensors"
    write_safetensors(path, tensors)
    loaded = safetensors.numpy.load(path.read_bytes())
    assert all(
        loaded[k].dtype == v.dtype
        and loaded[k].shape == v.shape
        and loaded[k].tobytes() == v.tobytes()
        for k, v in tensors.items()
    ) and set(loaded) == set(tensors)


def test_bfloat16_is_tagged_bf16_with_its_raw_bytes(tmp_path: Path) -> None:
    value = _tensors()["t.bfloat16"]
    path = tmp_path / "b.safetensors"
    write_safetensors(path, {"w": value})
    with safe_open(str(path), framework="numpy") as handle:
        meta = handle.metadata()  # None: no __metadata__ written
    data = path.read_bytes()
    assert meta is None and b'"dtype":"BF16"' in data and data.endswith(value.tobytes())


def test_returned_digest_is_the_sha256_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    digest = write_safetensors(path, _tensors())
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_empty_dict_is_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "d.safetensors"
    write_safetensors(path, {})
    assert safetensors.numpy.load(path.read_bytes()) == {}


def test_header_is_padded_so_the_body_is_8_byte_aligned(tmp_path: Path) -> None:
    path = tmp_path / "e.safetensors"
    write_safetensors(path, {"odd_name_x": np.ones(3, dtype=np.float32)})
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert header_len % 8 == 0


def test_unsupported_dtype_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "f.safetensors"
    with pytest.raises(TypeError, match="complex64"):
        write_safetensors(path, {"z": np.zeros(2, dtype=np.complex64)})
    assert list(tmp_path.iterdir()) == []
