"""The ``fedllm`` command: one entry point, one module per subcommand.

Subcommand modules are imported lazily so ``fedllm certs ...`` never pays for importing torch.
Each module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fedllm_core.errors import run_command
from fedllm_core.version import version_text

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "server": ("fedllm_server.cli", "run the federation server daemon"),
    "client": ("fedllm_client.cli", "run a federation client daemon"),
    "certs": ("fedllm_core.certs_cli", "manage the federation's CA and certificates"),
    "experiment": ("fedllm_experiment.experiment_cli", "run a loopback federation experiment"),
    "baseline": ("fedllm_experiment.baseline_cli", "centralised and gradient-boosting baselines"),
    "bench": ("fedllm_experiment.bench_cli", "benchmarks (e.g. `fedllm bench models`)"),
    "status": (
        "fedllm_core.status_cli",
        "the running server's state (its [metrics] endpoint)",
    ),
}


# --help shows prose, not this module's reST markup
DESCRIPTION = "Federated LLM intrusion detection: one command, one subcommand per job."


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedllm", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=version_text("fedllm"))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = argv[0] if argv else None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text)
        if name == wanted:  # only import the module that will actually run
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
            # the one-line help is `fedllm NAME --help`'s description unless the module sets one
            sub_parser.description = sub_parser.description or help_text
            sub_parser.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    return run_command(f"fedllm {args.command}", lambda: args._module.run(args))


if __name__ == "__main__":
    sys.exit(main())
