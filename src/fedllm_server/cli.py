"""`fedllm server` and the `fedllm-server` console script (what systemd runs).

Exit codes (fedllm_core.errors.ExitCode): 0 after a clean stop (SIGTERM or
`stop_after_versions`), 78 for a bad setting (the message names the field), 77 for TLS files,
71 when the port cannot be bound, 65 for unusable data/model, 1 for a crash.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedllm_core.errors import run_command
from fedllm_core.logging import configure_logging, fatal_errors_logged
from fedllm_core.settings import load_settings
from fedllm_core.version import version_text

if TYPE_CHECKING:
    from fedllm_server.settings import ServerSettings

DESCRIPTION = (
    "Run the federation server daemon: aggregate LoRA updates from clients over mutual TLS."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = parser.description or DESCRIPTION
    parser.add_argument("--version", action="version", version=version_text(parser.prog))
    parser.add_argument("--config", type=Path, help="server TOML settings (configs/server.toml)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plain TCP without client authentication (loopback benchmarks only)",
    )
    parser.add_argument("--port", type=int, help="override the listening port")
    parser.add_argument("--state-dir", type=Path, help="override state_dir")


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {}
    if args.insecure:
        out["insecure"] = True
    if args.port is not None:
        out["port"] = args.port
    if args.state_dir is not None:
        out["state_dir"] = str(args.state_dir)
    return out


def run(args: argparse.Namespace) -> int:
    """Load settings, configure logging, run the daemon; FedllmError maps to its exit code."""
    from fedllm_server.settings import ENV_PREFIX, ServerSettings

    with fatal_errors_logged("server"):  # also as one event, for whoever reads the log
        settings = load_settings(
            ServerSettings, args.config, env_prefix=ENV_PREFIX, overrides=_overrides(args)
        )
        log_settings = settings.logging
        configure_logging(log_settings.level, json=log_settings.json_lines, component="server")
        return _start_and_serve(settings)


def _start_and_serve(settings: ServerSettings) -> int:
    from fedllm_server.preflight import check_tls_files

    check_tls_files(settings)  # seconds before the model would be built
    from fedllm_server.daemon import serve_forever
    from fedllm_server.evaluation import CentralModel
    from fedllm_server.gc_pacing import with_gc_pacing

    central = CentralModel(settings)  # slow (torch, tokenizer): before READY, on purpose
    # The GC pacer's first act freezes what that built (torch, the model, the tokenizer:
    # ~460k objects, 234 ms of every full collection on the default model), later ones the
    # connections (fedllm_server/gc_pacing.py). Here, not in the daemon's start(): tests run
    # many daemons in one process.
    return _run_loop(with_gc_pacing(serve_forever(settings, central)))


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    """asyncio on uvloop (the transport's `run` picks uvloop when it is installed)."""
    from fedllm_proto.transport import run as run_on_uvloop

    return int(run_on_uvloop(main))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `fedllm-server`."""
    parser = argparse.ArgumentParser(prog="fedllm-server", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command("fedllm-server", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
