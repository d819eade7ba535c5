"""`fedllm experiment`: a real loopback federation per strategy, then results, report and plots.

With no arguments it runs the embedded defaults (shipped IoT-23 flows, embedded MiniLM,
5 clients, FedAvg + FedOpt + GSFS, 10 rounds each). results.json is rewritten after every
strategy, so an interrupted run keeps what it finished. Exit status: 0 when every strategy ran,
1 when one failed (its daemon's last log lines are printed and kept in results.json), 130 on
Ctrl-C (after every daemon has been stopped).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from fedllm_experiment.configs import ALL_STRATEGIES, ExperimentSettings, load_experiment_settings
from fedllm_experiment.orchestrator import Outcome, run_experiment
from fedllm_experiment.outputs import print_table, write_outputs, write_seed_outputs


def _strategies(text: str) -> tuple[str, ...]:
    names = tuple(s.strip().lower() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in ALL_STRATEGIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(ALL_STRATEGIES)}: got {text!r}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--strategies", type=_strategies, help="comma list (default: fedavg,fedopt,gsfs)"
    )
    parser.add_argument(
        "--attack",
        choices=("none", "signflip", "scale", "labelflip", "freq"),
        help="poison the first ceil(malicious x clients) clients (default none)",
    )
    parser.add_argument(
        "--malicious", type=float, help="share of poisoned clients, 0-1 (default 0.2)"
    )
    parser.add_argument(
        "--defense",
        choices=("none", "clip", "trimmed_mean", "median", "krum", "multi_krum"),
        help="the server's robust aggregation rule (default: the server config's)",
    )
    parser.add_argument(
        "--adaptive",
        action="store_true",
        default=None,
        help="GSFS with the feedback loop: a bandit retunes the client triggers (docs/feedback.md)",
    )
    parser.add_argument(
        "--seeds",
        type=_seeds,
        help="comma list: one whole experiment per seed (its own capture split), then a "
        "summary over seeds in --out (default: just --seed)",
    )
    parser.add_argument(
        "--partition",
        choices=("capture", "iid", "dirichlet"),
        help="how the training flows are dealt to the clients (default capture)",
    )
    add_common_arguments(parser)


def add_common_arguments(parser: argparse.ArgumentParser, *, budget: bool = True) -> None:
    """Flags that fix the data (every command) and, with ``budget``, the model and the
    training budget (`fedllm experiment` and `fedllm baseline`, which trains centrally for
    clients x rounds x local-steps steps so it spends what the federation spends)."""
    add = parser.add_argument
    add("--out", type=Path, help="output directory (default: runs/<UTC timestamp>)")
    if budget:
        add("--clients", type=int, help="clients (default 5): the federation's size and budget")
        add("--rounds", type=int, help="rounds; GSFS: aggregations (default 20)")
        add("--local-steps", type=int, dest="local_steps", help="optimizer steps per round (8)")
        add("--model", help="embedded:all-MiniLM-L6-v2 (default), a local directory or a hub id")
    add("--task", choices=("binary", "multiclass"))
    add(
        "--split",
        choices=("capture", "random"),
        help="capture (default): test on whole captures never trained on; random: the "
        "paper's stratified 70/20/10 over flows",
    )
    add(
        "--holdout-captures",
        type=_captures,
        dest="holdout_captures",
        help="comma list of IoT-23 captures for the final test (implies --split capture)",
    )
    add("--seed", type=int)
    add("--max-rows", type=int, dest="max_rows", help="stratified subsample of the flows")
    add("--quick", action="store_true", help="small preset: about 3 minutes on 2 CPU cores")
    add("--config", type=Path, help="TOML file with any ExperimentSettings key")


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas: {text!r}"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct integer seeds: {text!r}")
    return seeds


def _captures(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected capture names separated by commas: {text!r}")
    return names


COMMON_FLAGS = (
    "split",
    "holdout_captures",
    "clients",
    "rounds",
    "model",
    "task",
    "partition",
    "seed",
    "max_rows",
    "local_steps",
)


def default_out_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def describe(exp: ExperimentSettings) -> str:
    return (
        f"fedllm experiment: {', '.join(exp.strategies)}; {exp.clients} clients, "
        f"{exp.rounds} rounds, model {exp.model}, task {exp.task}, split {exp.split}, "
        f"partition {exp.partition}, "
        f"seed {exp.seed}, {exp.max_rows or 'all'} flows; budget {exp.budget_steps} local "
        f"steps per client ({exp.local_steps} per round x {exp.rounds}), batch {exp.batch_size}"
        + (
            f"; attack {exp.attack} on {exp.malicious_clients} of {exp.clients} clients"
            if exp.malicious_clients
            else ""
        )
        + (f"; defense {exp.defense}" if exp.defense is not None else "")
        + ("; adaptive feedback loop (GSFS)" if exp.adaptive else "")
    )


def settings_and_out_dir(
    args: argparse.Namespace, *extra_flags: str
) -> tuple[ExperimentSettings, Path]:
    # a flag the command does not have is "not given" (bench has no budget flags)
    names = (*COMMON_FLAGS, *extra_flags)
    flags: dict[str, Any] = {name: getattr(args, name, None) for name in names}
    if flags.get("holdout_captures"):
        flags["split"] = "capture"
    exp = load_experiment_settings(args.config, quick=args.quick, flags=flags)
    out_dir = (args.out or default_out_dir()).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    return exp, out_dir


def run(args: argparse.Namespace) -> int:
    exp, out_dir = settings_and_out_dir(
        args, "strategies", "seeds", "attack", "malicious", "defense", "adaptive"
    )
    print(describe(exp), f"\noutput: {out_dir}", flush=True)
    started = time.monotonic()
    seeds = exp.run_seeds
    outcomes: dict[int, Outcome] = {}
    for seed in seeds:
        one = exp.model_copy(update={"seed": seed, "seeds": ()})
        where = out_dir if len(seeds) == 1 else out_dir / f"seed-{seed}"
        if len(seeds) > 1:
            print(f"== seed {seed} ({len(outcomes) + 1} of {len(seeds)}): {where}", flush=True)
        outcomes[seed] = _run_one(one, where, started)
        print_table(outcomes[seed].runs, sys.stdout)
    if len(seeds) > 1:
        write_seed_outputs(exp, outcomes, out_dir, total_wall_s=time.monotonic() - started)
    print(f"total {time.monotonic() - started:.0f} s; results in {out_dir}", flush=True)
    return 1 if any(o.failures for o in outcomes.values()) else 0


def _run_one(exp: ExperimentSettings, out_dir: Path, started: float) -> Outcome:
    out_dir.mkdir(parents=True, exist_ok=True)

    def save(outcome: Outcome) -> None:
        write_outputs(exp, outcome, out_dir, total_wall_s=time.monotonic() - started)

    try:
        return run_experiment(exp, out_dir, on_run=save)
    except KeyboardInterrupt:
        # the orchestrator has stopped every daemon before the interrupt reaches us
        print(f"\ninterrupted: all daemons stopped; finished strategies are in {out_dir}")
        raise
