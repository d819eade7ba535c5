"""Tailing the server's metrics file while it is written, and the progress line built from it."""

from __future__ import annotations

import io
from pathlib import Path

from fedllm_experiment.progress import JsonLinesTail, Progress


def test_a_half_written_line_waits_for_its_end(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    tail = JsonLinesTail(path)
    path.write_text('{"kind": "start"}\n{"kind": "upd')
    first = tail.read_new()
    with path.open("a") as fh:
        fh.write('ate"}\n')
    assert (first, tail.read_new()) == ([{"kind": "start"}], [{"kind": "update"}])


def test_a_file_that_does_not_exist_yet_reads_as_empty(tmp_path: Path) -> None:
    assert JsonLinesTail(tmp_path / "absent.jsonl").read_new() == []


def test_progress_shows_version_clients_uploads_and_accuracy() -> None:
    out = io.StringIO()
    progress = Progress("gsfs", target_versions=10, num_clients=5, out=out)
    progress.feed(
        [
            {"kind": "update", "client_id": "client-1"},
            {"kind": "update", "client_id": "client-2"},
            {"kind": "aggregation", "version": 1, "evaluation": {"accuracy": 0.875}},
        ],
        elapsed_s=12.0,
    )
    line = out.getvalue()
    assert all(part in line for part in ("1/10", "2/5", "uploads 2", "0.8750"))
