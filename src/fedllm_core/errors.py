"""Errors shared by the daemons and their distinct process exit codes.

A fatal start-up error maps to one exit code so systemd (and the experiment runner) can tell
a bad config from a missing certificate from a port already in use without parsing logs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # unexpected crash (a bug)
    USAGE = 64  # bad command line (sysexits EX_USAGE)
    DATA = 65  # input data unusable (EX_DATAERR)
    UNAVAILABLE = 69  # a peer or resource we need is unavailable (EX_UNAVAILABLE)
    OS = 71  # could not bind / OS-level failure (EX_OSERR)
    TEMPFAIL = 75  # a resource is busy now, e.g. another server holds the state_dir (EX_TEMPFAIL)
    TLS = 77  # certificates or keys missing / invalid (EX_NOPERM)
    CONFIG = 78  # invalid settings (EX_CONFIG)


class FedllmError(Exception):
    """Base of errors that end a command with a clear message and a distinct exit code."""

    exit_code: ExitCode = ExitCode.FAILURE


class SettingsError(FedllmError):
    exit_code = ExitCode.CONFIG


class DataError(FedllmError):
    exit_code = ExitCode.DATA


class CertificateError(FedllmError):
    exit_code = ExitCode.TLS


class ModelError(FedllmError):
    exit_code = ExitCode.DATA


def run_command(prog: str, command: Callable[[], int]) -> int:
    """Run a console command: a FedllmError becomes its message on stderr and its exit code,
    Ctrl-C exits 130 (what a shell reports for SIGINT); anything else is a bug and propagates."""
    try:
        return int(command())
    except FedllmError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return 130
