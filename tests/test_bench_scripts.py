"""Every bench script still imports what it measures and parses its arguments.

Benches are run by hand, not by CI, so an API change that breaks one goes unnoticed until
someone needs the figure (bench/aggregate.py called a function the Strategy redesign removed).
`--help` runs each script's imports and argument parser without measuring anything; the
aggregation bench, which needs no daemons, also runs one tiny pass end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p for p in BENCH_DIR.glob("*.py") if not p.name.startswith("_"))


def test_the_bench_directory_has_scripts() -> None:
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bench_script_imports_and_parses_help(script: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script), "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_aggregate_bench_runs_one_small_pass() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "aggregate.py"), "--one", "100x1MB", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["workload"] == "100x1MB"
    assert result["fold_gbps"] > 0
