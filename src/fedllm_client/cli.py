"""``fedllm client`` / ``fedllm-client``: run the client daemon, or classify flows with its model.

Modes: ``fedllm client [run] --config client.toml`` runs the daemon (what systemd's unit calls
via ``fedllm-client``); ``fedllm client classify --config client.toml --input conn.log
[--follow]`` classifies Zeek flows with the model in the client's state directory and writes
ECS alerts (docs/alerts.md). Each mode has its own ``--help``. Errors that end the command map
to distinct exit codes (fedllm_core.errors.ExitCode; 78 = bad setting).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedllm_core.errors import run_command
from fedllm_core.logging import configure_logging, fatal_errors_logged
from fedllm_core.version import version_text

DESCRIPTION = (
    "Run a federation client daemon: train a LoRA model on this host's IoT flows and share "
    "only model updates with the server over mutual TLS."
)
CLASSIFY_DESCRIPTION = (
    "Classify Zeek conn.log flows with the model in the client's state directory and write "
    "one JSON document per flow (Elastic Common Schema: event.kind alert or event). "
    "SIGTERM/SIGINT end a --follow run after the flows already read, with a summary on stderr."
)
EPILOG = (
    "exit codes: 0 stopped or finished, 1 crash, 2 usage, 65 data or model unusable, 69 server "
    "unreachable, 77 certificates, 78 settings or refused by the server"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The daemon's options, ``--version``, and the ``run`` / ``classify`` modes."""
    prog = "fedllm-client" if parser.prog == "fedllm-client" else parser.prog
    parser.description = parser.description or DESCRIPTION
    parser.epilog = EPILOG
    _common(parser, prog)
    parser.add_argument("--insecure", action="store_true", help="plain TCP (lab use only)")
    modes = parser.add_subparsers(dest="mode", metavar="MODE", title="modes")
    daemon = modes.add_parser("run", help="run the daemon (the default)", description=DESCRIPTION)
    _common(daemon, f"{prog} run", suppress=True)
    daemon.add_argument("--insecure", action="store_true", default=argparse.SUPPRESS)
    classify = modes.add_parser(
        "classify", help="classify flows, write ECS alerts", description=CLASSIFY_DESCRIPTION
    )
    _common(classify, f"{prog} classify", suppress=True)
    _classify_arguments(classify)


def _common(parser: argparse.ArgumentParser, prog: str, *, suppress: bool = False) -> None:
    # A mode repeats these so they may come after its name; SUPPRESS keeps a value given
    # before the name from being reset by the mode's default.
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--config", type=Path, default=default, help="client settings TOML (env FEDLLM_CLIENT__...)"
    )
    parser.add_argument(
        "--log-level", default=default, help="override log_level (debug, info, ...)"
    )
    parser.add_argument("--version", action="version", version=version_text(prog))


def _classify_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--input", type=Path, required=True, help="Zeek conn.log (or an IoT-23 CSV) to read")
    add("--output", type=Path, help="append documents here (default: inference.output, or stdout)")
    add("--follow", action="store_true", help="keep reading the growing log (tail -F)")
    add(
        "--alerts-only",
        action="store_true",
        default=None,
        help="write alerts only, not every flow (default: inference.alerts_only)",
    )
    add("--threshold", type=float, help="P(malicious) at which a flow is an alert (0.5)")
    add("--batch-size", type=int, help="most flows per forward pass (64)")


def run(args: argparse.Namespace) -> int:
    """Settings, logging, then the mode; a fatal error is also one ``fatal_error`` event."""
    with fatal_errors_logged("client"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from fedllm_client.settings import load_client_settings  # heavy (torch): only when run

    settings = load_client_settings(args.config, _overrides(args))
    configure_logging(settings.log_level, component="client")
    if args.mode == "classify":
        from fedllm_client.inference import run_classify

        return run_classify(
            settings,
            args.input,
            output=args.output,
            follow=args.follow,
            alerts_only=args.alerts_only,
        )
    from fedllm_client.daemon import run_daemon

    return run_daemon(settings)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if getattr(args, "insecure", False):
        overrides["insecure"] = True
    if args.log_level:
        overrides["log_level"] = args.log_level
    inference = {
        key: value
        for key, value in (
            ("threshold", getattr(args, "threshold", None)),
            ("batch_size", getattr(args, "batch_size", None)),
        )
        if value is not None
    }
    if inference:
        overrides["inference"] = inference
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``fedllm-client`` (what the systemd units run)."""
    parser = argparse.ArgumentParser(prog="fedllm-client", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command("fedllm-client", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
