"""What each poisoning attack costs the federated GSFS model, with the default defence and without.

For one seed (capture split), real GSFS federations run (`fedllm experiment --strategies gsfs`:
server + client daemons over mutual TLS on loopback): one clean, then per attack one with the
server's default defence (the door's norm bound, the sample-count and GSFS frequency caps, and
`--defense`'s robust rule, default the server's own) and one with all of it switched off
(`[norm_bound] enabled = false`, `frequency_cap = 0`, robust rule `none`). The poisoned
clients, the first ceil(0.2 x clients), run the ordinary client daemon with its `[attack]`
section on (docs/robust.md, "Attacks").

Goal (issue 10): with 20 % malicious clients each attack costs <= 1 pt of central macro-F1 with
the default defence, and shows its damage without it. Macro-F1 is on the test captures (never
trained on). Last line of output: one JSON object.

    python bench/poisoning.py [--attacks signflip,scale,labelflip,freq] [--quick]
                              [--seed 0] [--defense trimmed_mean] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedllm_experiment.configs import load_experiment_settings
from fedllm_experiment.orchestrator import run_experiment

GOAL_PTS = 1.0
# everything the server does by default against a poisoned client, switched off
UNDEFENDED = {"norm_bound": {"enabled": False}, "strategy": {"frequency_cap": 0}}


def _run(label: str, flags: dict[str, Any], args: argparse.Namespace, out: Path) -> dict:
    base = {"strategies": ("gsfs",), "seed": args.seed, "split": "capture"}
    exp = load_experiment_settings(None, quick=args.quick, flags={**base, **flags})
    print(f"--- {label}", file=sys.stderr, flush=True)
    outcome = run_experiment(exp, out / label, out=sys.stderr)
    if outcome.failures or not outcome.runs:
        raise SystemExit(f"{label}: the GSFS run failed: {outcome.failures}")
    run = outcome.runs[0]
    detection = run["detection"]
    return {
        "f1_macro": round(detection["f1_macro"], 4),
        "accuracy": round(detection["accuracy"], 4),
        "uploads": run["uploads"],
        "rejected": sum(1 for e in run["upload_events"] if e.get("outcome") != "accepted"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", default="signflip,scale,labelflip,freq")
    parser.add_argument("--malicious", type=float, default=0.2)
    parser.add_argument("--defense", default=None, help="robust rule for the defended runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="the experiment's --quick preset")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args()
    attacks = [a for a in args.attacks.split(",") if a]
    start = time.monotonic()
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fedllm-poisoning-") as tmp:
        out = args.out or Path(tmp)
        clean = _run("clean", {}, args, out)
        for attack in attacks:
            poison = {"attack": attack, "malicious": args.malicious}
            defended = _run(f"{attack}-defended", {**poison, "defense": args.defense}, args, out)
            undefended = _run(
                f"{attack}-undefended",
                {**poison, "defense": "none", "server": UNDEFENDED},
                args,
                out,
            )
            rows[attack] = {"defended": defended, "undefended": undefended}
    print(f"\nclean GSFS macro-F1 {clean['f1_macro']:.4f} (seed {args.seed}, capture split)")
    print(f"{'attack':<10} {'defended':>9} {'cost pt':>8} {'undefended':>11} {'cost pt':>8}")
    for attack, row in rows.items():
        d, u = row["defended"]["f1_macro"], row["undefended"]["f1_macro"]
        row["defended_cost_pt"] = round(100 * (clean["f1_macro"] - d), 2)
        row["undefended_cost_pt"] = round(100 * (clean["f1_macro"] - u), 2)
        print(
            f"{attack:<10} {d:>9.4f} {row['defended_cost_pt']:>8.2f} {u:>11.4f} "
            f"{row['undefended_cost_pt']:>8.2f}"
        )
    print(
        json.dumps(
            {
                "bench": "poisoning",
                "seed": args.seed,
                "quick": args.quick,
                "split": "capture",
                "malicious": args.malicious,
                "defense": args.defense,
                "clean": clean,
                "attacks": rows,
                "goal_defended_cost_le_1pt": all(
                    r["defended_cost_pt"] <= GOAL_PTS for r in rows.values()
                ),
                "wall_s": round(time.monotonic() - start, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
