"""`fedllm bench models`: fine-tune a list of models with an equal budget (the paper's Table II).

Data, batch size, learning rate and seed come from the same settings as `fedllm experiment`
(--config, --quick and the shared flags); --steps sets the equal budget. Writes results.json
(one run per model, ``clients_avg`` null), report.md and bench.md to --out.
"""

from __future__ import annotations

import argparse
import sys

from fedllm_experiment.baseline import experiment_data, load_split
from fedllm_experiment.bench_models import bench_models, default_models, render_bench_report
from fedllm_experiment.experiment_cli import add_common_arguments, settings_and_out_dir
from fedllm_experiment.outputs import config_block, print_table, write_document
from fedllm_experiment.results import results_document

DEFAULT_STEPS = 300
QUICK_STEPS = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=("models",), help="what to benchmark")
    parser.add_argument(
        "--models",
        help="comma list: embedded:<name>, random:<bert|opt|gpt2|llama>, a path or a hub id "
        "(default: the embedded MiniLM and random BERT, OPT, GPT-2; hub models when reachable)",
    )
    parser.add_argument("--steps", type=int, help=f"optimizer steps per model ({DEFAULT_STEPS})")
    add_common_arguments(parser, budget=False)  # --steps is the budget, --models the models


def run(args: argparse.Namespace) -> int:
    exp, out_dir = settings_and_out_dir(args)
    steps = args.steps or (QUICK_STEPS if args.quick else DEFAULT_STEPS)
    specs = [s.strip() for s in args.models.split(",")] if args.models else list(default_models())
    split = load_split(experiment_data(exp))
    print(f"fedllm bench models: {', '.join(specs)}; {steps} steps each; output {out_dir}")
    runs, skipped = bench_models(exp, split, specs, steps)
    config = config_block(
        exp,
        kind="bench_models",
        bench_steps=steps,
        train_flows=len(split.train_texts),
        test_flows=int(split.test_weights.sum()),
    )
    doc = results_document(config, runs, skipped=skipped)
    write_document(doc, out_dir, title="fedllm bench models")
    (out_dir / "bench.md").write_text(render_bench_report(doc))
    print_table(runs, sys.stdout)
    return 0 if runs else 1
