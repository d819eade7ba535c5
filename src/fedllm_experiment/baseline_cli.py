"""`fedllm baseline`: the reference points for an experiment, on the same split and budget.

Takes the same flags and --config file as `fedllm experiment`, so `fedllm baseline --quick`
scores exactly the data a `fedllm experiment --quick` federates. Writes results.json (same
contract, ``clients_avg`` null) and report.md to --out.
"""

from __future__ import annotations

import argparse
import sys

from fedllm_experiment.baseline import central_baseline, experiment_data, gbt_baseline, load_split
from fedllm_experiment.experiment_cli import add_common_arguments, settings_and_out_dir
from fedllm_experiment.outputs import config_block, print_table, write_document
from fedllm_experiment.results import results_document

KINDS = ("central", "gbt")


def _kinds(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    if not names or any(n not in KINDS for n in names):
        raise argparse.ArgumentTypeError(f"choose from {', '.join(KINDS)}: got {text!r}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--which", type=_kinds, default=KINDS, help="comma list of central,gbt (default both)"
    )
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    exp, out_dir = settings_and_out_dir(args)
    split = load_split(experiment_data(exp))
    print(
        f"fedllm baseline: {len(split.train_texts)} training flows, "
        f"{int(split.test_weights.sum())} "
        f"test flows; central budget {exp.clients * exp.budget_steps} steps; output {out_dir}",
        flush=True,
    )
    runs = []
    for kind in args.which:
        print(f"[{kind}] training ...", flush=True)
        runs.append(central_baseline(exp, split) if kind == "central" else gbt_baseline(exp, split))
        doc = results_document(config_block(exp, kind="baseline"), runs)
        write_document(doc, out_dir, title="fedllm baseline")
    print_table(runs, sys.stdout)
    return 0
