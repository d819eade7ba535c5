"""Runs the experiment: one real loopback deployment per strategy, one after the other.

Per strategy: write configs, start the server daemon and N client daemons (mutual TLS on
127.0.0.1), follow the server's metrics file for live progress, and stop when the server exits
after its last version. Whatever happens (a daemon crash, a timeout, Ctrl-C) every daemon is
stopped before this module returns or raises; a crash is reported with the daemon's last log
lines. Strategies run sequentially so they never compete for the same cores.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from fedllm_core.certs import PkiPaths, make_federation_pki
from fedllm_core.data import prepare_data, template_for
from fedllm_experiment.collect import IncompleteRun, collect_run, remeasure_interleaved
from fedllm_experiment.configs import ExperimentSettings
from fedllm_experiment.deploy import (
    SERVER_NAME,
    Deployment,
    client_names,
    daemon_data,
    prepare_deployment,
)
from fedllm_experiment.processes import DaemonCrashed, tail_lines
from fedllm_experiment.progress import JsonLinesTail, Progress
from fedllm_experiment.references import reference_reports

POLL_S = 0.5
CLIENT_DRAIN_S = 120.0  # clients finish their final evaluation after the server's last version


class RunTimeout(RuntimeError):
    """A strategy's deployment outlived ``run_timeout_s``."""


@dataclass
class Outcome:
    runs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    server_states: list[Path] = field(default_factory=list)  # per run: its final checkpoint
    # the reference detectors on the same split (docs/experiment.md), by name
    references: dict[str, Any] = field(default_factory=dict)


def _watch(dep: Deployment, progress: Progress, timeout_s: float, start: float) -> None:
    """Until the server exits 0; raises on a crash (any daemon) or on the timeout."""
    tail = JsonLinesTail(dep.server_metrics)
    server = dep.fleet.server
    while True:
        elapsed = time.monotonic() - start
        progress.feed(tail.read_new(), elapsed)
        status = server.poll()
        if status is not None:
            if status != 0:
                raise server.crash()
            return
        dep.fleet.check_clients()
        if elapsed > timeout_s:
            raise RunTimeout(
                f"no final version after {timeout_s:.0f} s; server log ends:\n    "
                + "\n    ".join(tail_lines(server.log_path))
            )
        time.sleep(POLL_S)


def run_strategy(
    exp: ExperimentSettings, strategy: str, pki: PkiPaths, run_dir: Path, out: TextIO
) -> tuple[dict[str, Any], Path]:
    """Deploy, run and tear down one strategy: its run record and the server's state dir."""
    dep = prepare_deployment(exp, strategy, pki, run_dir)
    progress = Progress(strategy, exp.rounds, exp.clients, out=out)
    start = time.monotonic()
    try:
        for daemon in dep.fleet.all:
            daemon.start()
        _watch(dep, progress, exp.run_timeout_s, start)
        server_done = time.monotonic()
        # after the server's Bye each client runs its final evaluation and exits on its own
        dep.fleet.wait_clients(CLIENT_DRAIN_S)
    finally:
        dep.fleet.stop_all(grace_s=10.0)
    return collect_run(exp, strategy, dep, wall_s=server_done - start), dep.server_state


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a `kill`, a CI timeout) tears the daemons down exactly as Ctrl-C does.

    Without it the default action ends this process at once and leaves every daemon, each in
    its own process group, running on.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_experiment(
    exp: ExperimentSettings,
    out_dir: Path,
    *,
    out: TextIO = sys.stdout,
    on_run: Callable[[Outcome], None] | None = None,
) -> Outcome:
    """Every strategy in turn; a failed strategy is recorded and the next one still runs."""
    with sigterm_as_interrupt():
        return _run_strategies(exp, out_dir, out, on_run)


def _run_strategies(
    exp: ExperimentSettings,
    out_dir: Path,
    out: TextIO,
    on_run: Callable[[Outcome], None] | None,
) -> Outcome:
    out_dir = out_dir.resolve()
    pki = make_federation_pki(out_dir / "pki", SERVER_NAME, client_names(exp.clients), force=True)
    outcome = Outcome(references=experiment_references(exp))
    for strategy in exp.strategies:
        print(f"[{strategy}] starting server + {exp.clients} clients (mTLS, 127.0.0.1)", file=out)
        try:
            run, state = run_strategy(exp, strategy, pki, out_dir / strategy, out)
            outcome.runs.append(run)
            outcome.server_states.append(state)
        except (DaemonCrashed, RunTimeout, IncompleteRun) as exc:
            print(f"[{strategy}] FAILED: {exc}", file=out, flush=True)
            outcome.failures.append(_failure(strategy, exc))
        if on_run is not None:
            on_run(outcome)
    if len(outcome.runs) > 1:
        print("timing the final models again, interleaved ...", file=out, flush=True)
        remeasure_interleaved(exp, list(zip(outcome.runs, outcome.server_states, strict=True)))
        if on_run is not None:
            on_run(outcome)
    return outcome


def experiment_references(exp: ExperimentSettings) -> dict[str, Any]:
    """The reference detectors' reports on the experiment's split (seconds of work)."""
    data = daemon_data(exp)
    return reference_reports(prepare_data(data), template_for(data), seed=exp.seed)


def _failure(strategy: str, exc: Exception) -> dict[str, Any]:
    record: dict[str, Any] = {"strategy": strategy, "error": str(exc).splitlines()[0]}
    if isinstance(exc, DaemonCrashed):
        record.update(daemon=exc.name, returncode=exc.returncode, log_tail=exc.log_tail)
    return record
