"""Detection on traffic never seen: the federated GSFS model against the reference detectors.

For each seed, the shipped IoT-23 flows are split by whole capture (``split = "capture"``:
the seed deals a fifth of the mostly-benign and of the mostly-malicious captures to the test
set, a fifth to validation), then a real GSFS federation runs (``fedllm experiment
--strategies gsfs``: server + client daemons over mutual TLS on loopback), and its final global
model is scored on every flow of the test captures beside the majority class, the "tcp ->
malicious" rule, a lookup table of training texts and LightGBM (raw fields, and the words of the
prompt text). ``gsfs_val_threshold`` is the same model at the P(malicious) threshold chosen on
the validation captures; ``gsfs_selected`` the global version the server kept as best on the
validation captures (model selection, docs/server.md). Each seed's test captures are
different (seeds 0-4 test every capture once), so the seeds together are a leave-captures-out
estimate.

Goals (issue 8): GSFS macro-F1 >= LightGBM's on the same splits, and distinct-text accuracy on
held-out captures >= 0.85. Last line of output: one JSON object with the means, per-seed values
and whether each goal was met.

    python bench/generalisation.py [--seeds 0,1,2] [--task binary|multiclass] [--quick]
                                   [--config experiment.toml]
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

DISTINCT_GOAL = 0.85
REFERENCE = "lightgbm_fields"


def _one_seed(seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    flags = {"strategies": ("gsfs",), "seed": seed, "task": args.task, "split": "capture"}
    exp = load_experiment_settings(args.config, quick=args.quick, flags=flags)
    outcome = run_experiment(exp, out / f"seed{seed}", out=sys.stderr)
    if outcome.failures or not outcome.runs:
        raise SystemExit(f"seed {seed}: the GSFS run failed: {outcome.failures}")
    detection = outcome.runs[0]["detection"]
    tuned = detection.get("val_threshold")
    extra = {"gsfs_val_threshold": tuned} if tuned else {}
    if outcome.runs[0].get("detection_selected"):
        extra["gsfs_selected"] = outcome.runs[0]["detection_selected"]
    return {"seed": seed, "gsfs": detection, **extra, **outcome.references}


def _summary(name: str, report: dict[str, Any]) -> dict[str, Any]:
    return {
        "detector": name,
        "f1_macro": round(report["f1_macro"], 4),
        "f1_macro_ci95": [round(v, 4) for v in report["ci95"]["f1_macro"]],
        "malicious_f1": round(report["malicious"]["f1"], 4),
        "accuracy": round(report["accuracy"], 4),
        "capture_mean_accuracy": round(report["capture_mean_accuracy"], 4),
        "distinct_accuracy": round(report["distinct"]["accuracy"], 4),
        "predicted_malicious_share": round(report["predicted_malicious_share"], 4),
    }


def _print_seed(result: dict[str, Any]) -> None:
    test = sorted(result["gsfs"]["per_capture"])
    print(f"\nseed {result['seed']}: test captures {', '.join(test)}")
    print(f"{'detector':<16} macro-F1 [95% CI]        mal-F1  acc     cap-mean distinct pred-mal")
    for name, report in result.items():
        if name == "seed":
            continue
        s = _summary(name, report)
        low, high = s["f1_macro_ci95"]
        print(
            f"{name:<16} {s['f1_macro']:.4f} [{low:.3f}, {high:.3f}]  {s['malicious_f1']:.4f}  "
            f"{s['accuracy']:.4f}  {s['capture_mean_accuracy']:.4f}   "
            f"{s['distinct_accuracy']:.4f}   {s['predicted_malicious_share']:.3f}"
        )


def _mean(results: list[dict[str, Any]], name: str, key: str) -> float:
    values = [_summary(name, r[name])[key] for r in results]
    return round(statistics.fmean(values), 4)


def _goals_at_val_threshold(
    means: dict[str, dict[str, float]], tree: dict[str, float]
) -> dict[str, bool]:
    tuned = means.get("gsfs_val_threshold")
    if tuned is None:  # no seed had a validation threshold
        return {}
    return {
        "goal_f1_vs_lightgbm_at_val_threshold": tuned["f1_macro"] >= tree["f1_macro"],
        "goal_distinct_accuracy_at_val_threshold": tuned["distinct_accuracy"] >= DISTINCT_GOAL,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma list (default 0,1,2)")
    parser.add_argument("--task", choices=("binary", "multiclass"), default="binary")
    parser.add_argument("--quick", action="store_true", help="the experiment's --quick preset")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--config", type=Path, help="experiment TOML laid under the flags")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedllm-generalisation-") as tmp:
        out = args.out or Path(tmp)
        results = []
        for seed in seeds:
            results.append(_one_seed(seed, args, out))
            _print_seed(results[-1])
    names = [n for n in results[0] if n != "seed"]
    means = {n: {k: _mean(results, n, k) for k in ("f1_macro", "distinct_accuracy")} for n in names}
    print("\nmean over seeds:", json.dumps(means))
    gsfs, tree = means["gsfs"], means[REFERENCE]
    print(
        json.dumps(
            {
                "bench": "generalisation",
                "task": args.task,
                "split": "capture",
                "seeds": seeds,
                "quick": args.quick,
                "means": means,
                "per_seed": [
                    {"seed": r["seed"], **{n: _summary(n, r[n]) for n in names}} for r in results
                ],
                "goal_f1_vs_lightgbm": gsfs["f1_macro"] >= tree["f1_macro"],
                "goal_distinct_accuracy": gsfs["distinct_accuracy"] >= DISTINCT_GOAL,
                # the same final model at the P(malicious) threshold chosen on the validation
                # captures (no test data): an operating point an operator would pick
                **_goals_at_val_threshold(means, tree),
                "wall_s": round(time.monotonic() - start, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
