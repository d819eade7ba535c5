"""``fedllm client`` / ``fedllm-client``: run the client daemon, or classify flows with its model.

Modes: ``fedllm client --config client.toml`` runs the daemon (what systemd's unit calls via
``fedllm-client``); ``fedllm client classify --config client.toml --input conn.log [--follow]``
classifies Zeek flows with the model in the client's state directory. Errors that end the
command map to distinct exit codes (fedllm_core.errors.ExitCode; 78 = bad setting).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedllm_core.errors import ExitCode, FedllmError, run_command
from fedllm_core.logging import configure_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "mode",
        nargs="?",
        choices=("run", "classify"),
        default="run",
        help="run the daemon (default) or classify flows with the current model",
    )
    parser.add_argument(
        "--config", type=Path, help="client settings TOML (env: FEDLLM_CLIENT__...)"
    )
    parser.add_argument("--log-level", help="override log_level")
    parser.add_argument("--insecure", action="store_true", help="plain TCP (lab only)")
    parser.add_argument("--input", type=Path, help="classify: Zeek conn.log / CSV of flows")
    parser.add_argument(
        "--output", type=Path, help="classify: predictions JSON lines (default stdout)"
    )
    parser.add_argument("--follow", action="store_true", help="classify: keep reading (tail -f)")


def run(args: argparse.Namespace) -> int:
    from fedllm_client.settings import load_client_settings  # heavy (torch): only when run

    overrides: dict[str, object] = {}
    if args.insecure:
        overrides["insecure"] = True
    if args.log_level:
        overrides["log_level"] = args.log_level
    settings = load_client_settings(args.config, overrides)
    configure_logging(settings.log_level, component="client")
    if args.mode == "classify":
        from fedllm_client.inference import run_classify

        if args.input is None:
            raise UsageError("classify needs --input FILE")
        return run_classify(settings, args.input, output=args.output, follow=args.follow)
    from fedllm_client.daemon import run_daemon

    return run_daemon(settings)


class UsageError(FedllmError):
    exit_code = ExitCode.USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``fedllm-client`` (what the systemd unit runs)."""
    parser = argparse.ArgumentParser(prog="fedllm-client", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command("fedllm-client", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
