"""What the adaptive feedback loop saves: GSFS with fixed trigger thresholds against `--adaptive`.

Per seed (capture split), two real GSFS federations run (`fedllm experiment --strategies gsfs`,
then the same with `--adaptive`: the server's bandit retunes every client's perf_delta and
kappa over TUNING, docs/feedback.md). Printed per seed and as the mean with the spread over
seeds: uploads, the bytes the clients put on the wire, and macro-F1 / distinct-text accuracy of
the final global model on the test captures (never trained on).

Goal (issue 12): uploads (bytes) cut >= 50 % against fixed-threshold GSFS at <= 0.5 pt
macro-F1 cost, mean over 3 seeds. Last line of output: one JSON object.

    python bench/adaptive.py [--seeds 0,1,2] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedllm_experiment.configs import load_experiment_settings
from fedllm_experiment.orchestrator import run_experiment

GOAL_BYTES_CUT = 0.5
GOAL_F1_PTS = 0.5


def _run(seed: int, adaptive: bool, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    flags = {"strategies": ("gsfs",), "seed": seed, "split": "capture", "adaptive": adaptive}
    exp = load_experiment_settings(None, quick=args.quick, flags=flags)
    label = f"seed{seed}-{'adaptive' if adaptive else 'fixed'}"
    print(f"--- {label}", file=sys.stderr, flush=True)
    outcome = run_experiment(exp, out / label, out=sys.stderr)
    if outcome.failures or not outcome.runs:
        raise SystemExit(f"{label}: the GSFS run failed: {outcome.failures}")
    run = outcome.runs[0]
    return {
        "uploads": run["uploads"],
        "wire_bytes_up": sum(run["bytes_up_by_encoding"].values()),
        "f1_macro": round(run["detection"]["f1_macro"], 4),
        "distinct_accuracy": round(run["detection"]["distinct"]["accuracy"], 4),
        "decisions": len(run.get("feedback", [])),
        "last_arm": (run.get("feedback") or [{}])[-1].get("chosen"),
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 4), "min": min(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma list (default 0,1,2)")
    parser.add_argument("--quick", action="store_true", help="the experiment's --quick preset")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    start = time.monotonic()
    per_seed = []
    with tempfile.TemporaryDirectory(prefix="fedllm-adaptive-") as tmp:
        out = args.out or Path(tmp)
        for seed in seeds:
            fixed, adaptive = _run(seed, False, args, out), _run(seed, True, args, out)
            per_seed.append({"seed": seed, "fixed": fixed, "adaptive": adaptive})
            print(f"seed {seed}: fixed {fixed}\n        adaptive {adaptive}", flush=True)
    cut = [1 - s["adaptive"]["wire_bytes_up"] / s["fixed"]["wire_bytes_up"] for s in per_seed]
    cost = [100 * (s["fixed"]["f1_macro"] - s["adaptive"]["f1_macro"]) for s in per_seed]
    summary = {"bytes_cut": _spread(cut), "f1_cost_pts": _spread(cost)}
    print(f"bytes cut {summary['bytes_cut']}, macro-F1 cost (pts) {summary['f1_cost_pts']}")
    print(
        json.dumps(
            {
                "bench": "adaptive",
                "split": "capture",
                "seeds": seeds,
                "quick": args.quick,
                "per_seed": per_seed,
                **summary,
                "goal_bytes_cut": summary["bytes_cut"]["mean"] >= GOAL_BYTES_CUT,
                "goal_f1_cost": summary["f1_cost_pts"]["mean"] <= GOAL_F1_PTS,
                "wall_s": round(time.monotonic() - start, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
