"""The IoT-23 copy shipped in the package: checksums, attribution, row counts."""

import re
from collections import Counter
from pathlib import Path

from fedllm_core.data import SHIPPED_DIR, fine_classes, load_flows, shipped_paths
from fedllm_core.data.loader import sha256_of

FILE_ROW = re.compile(r"^\| `([^`]+\.csv\.gz)` \| (\d+) \| (\d+) \| ([0-9a-f]{64}) \|", re.M)


def _source_table() -> dict[str, tuple[int, int, str]]:
    text = (SHIPPED_DIR / "SOURCE.md").read_text()
    return {m[1]: (int(m[2]), int(m[3]), m[4]) for m in FILE_ROW.finditer(text)}


def test_source_md_lists_exactly_the_shipped_files() -> None:
    assert sorted(_source_table()) == sorted(p.name for p in shipped_paths())


def test_shipped_files_match_source_md_sha256() -> None:
    table = _source_table()
    assert {p.name: sha256_of(p) for p in shipped_paths()} == {k: v[2] for k, v in table.items()}


def test_attribution_carries_the_iot23_citation() -> None:
    text = (SHIPPED_DIR / "ATTRIBUTION.md").read_text()
    assert "doi.org/10.5281/zenodo.4743746" in text and "Garcia" in text


def test_rows_per_file_match_source_md() -> None:
    _, report = load_flows()
    counts = {Path(p).name: n for p, n in zip(report.files, report.rows_per_file, strict=True)}
    assert counts == {k: v[0] for k, v in _source_table().items()}


def test_shipped_data_loads_without_malformed_lines() -> None:
    _, report = load_flows()
    assert (report.rows, report.malformed) == (87196, 0)


def test_shipped_class_counts_match_source_md() -> None:
    flows, _ = load_flows()
    counts = Counter(fine_classes(flows).tolist())
    assert (counts["Benign"], counts["DDoS"], counts["C&C-Torii"]) == (52737 + 582, 14967, 16)


def test_shipped_data_has_19_captures() -> None:
    flows, _ = load_flows()
    assert len(set(flows.captures.tolist())) == 19
