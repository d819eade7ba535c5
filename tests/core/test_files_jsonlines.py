"""Crash-safe writes and JSON-lines metrics files shared by both daemons."""

import json
import math
import stat
from pathlib import Path

import numpy as np

from fedllm_core.files import atomic_write
from fedllm_core.jsonlines import JsonLinesFile, read_json_lines


def test_atomic_write_replaces_content_with_the_requested_mode(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    target.write_bytes(b"old")
    atomic_write(target, b"new", mode=0o600)
    assert (target.read_bytes(), stat.S_IMODE(target.stat().st_mode)) == (b"new", 0o600)


def test_atomic_write_leaves_no_temp_file(tmp_path: Path) -> None:
    atomic_write(tmp_path / "a.json", b"{}")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_torn_last_line_is_skipped_and_the_next_record_starts_clean(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"b": ')  # a kill in the middle of a write
    log = JsonLinesFile(path)
    log.append({"c": 3})
    log.close()
    assert read_json_lines(path) == [{"a": 1}, {"c": 3}]


def test_numpy_scalars_and_non_finite_values_become_plain_json(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    log = JsonLinesFile(path)
    log.append({"n": np.int64(4), "x": math.nan, "p": tmp_path / "f", "v": [np.float32(0.5)]})
    log.close()
    assert json.loads(path.read_text()) == {"n": 4, "x": None, "p": str(tmp_path / "f"), "v": [0.5]}
