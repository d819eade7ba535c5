"""One strategy's loopback deployment on disk: certificates, daemon TOML files, process specs.

Every file lives under the run directory the user chose; nothing is written elsewhere. The
daemon settings are built as ``ServerSettings`` / ``ClientSettings`` objects first (validation
happens here, naming the field) and then dumped to TOML, so a daemon never starts on a file it
would refuse. Each daemon gets ``torch_threads`` threads (also through OMP/MKL variables, which
libraries read before torch is configured) because N+1 processes share the machine's cores.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedllm_core.certs import PkiPaths
from fedllm_core.data import DataSettings
from fedllm_core.settings import deep_merge
from fedllm_experiment.configs import ExperimentSettings
from fedllm_experiment.processes import Daemon, Fleet

SERVER_NAME = "localhost"
DEFAULT_QUORUM = 0.6  # GsfsServerSettings.quorum_fraction's default (gsfs.md)


def client_names(count: int) -> list[str]:
    return [f"client-{i + 1}" for i in range(count)]


def free_port() -> int:
    """A port the kernel just handed out on loopback (released for the server to bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shared_sections(exp: ExperimentSettings) -> dict[str, Any]:
    """[data] and [model] every daemon of the run must agree on (the fingerprint checks it)."""
    data = {
        "task": exp.task,
        "partition": exp.partition,
        "num_partitions": exp.clients,
        "seed": exp.seed,
        "split": exp.split,
        "holdout_captures": list(exp.holdout_captures),
        "max_rows": exp.max_rows,
        "val_max": exp.val_samples,
        # the capture split scores every flow of its test captures (as distinct texts)
        "test_max": exp.test_samples if exp.split == "random" else None,
        "template": exp.template,
    }
    model = {"name": exp.model, "torch_threads": exp.torch_threads}
    return {"data": data, "model": model}


def daemon_data(exp: ExperimentSettings) -> DataSettings:
    """The [data] every daemon of the run gets (generated, then [shared.data]), index 0."""
    return DataSettings.model_validate(deep_merge(shared_sections(exp), exp.shared)["data"])


def strategy_section(exp: ExperimentSettings, strategy: str) -> dict[str, Any]:
    if strategy != "gsfs":
        return {"name": strategy}
    # N is explicit: a client that connects late must not shrink the quorum K = ceil(q N).
    # max_wait_s bounds the wait for a quorum when clients run out of budget.
    return {
        "name": "gsfs",
        "federation_size_source": "explicit",
        "federation_size": exp.clients,
        "max_wait_s": 30.0,
        "sample_weighting": exp.gsfs_sample_weighting,
        "server_lr": exp.gsfs_server_lr,
    }


def server_dict(
    exp: ExperimentSettings, strategy: str, pki: PkiPaths, run_dir: Path, port: int
) -> dict[str, Any]:
    generated = {
        "host": "127.0.0.1",
        "port": port,
        "tls": {"ca": pki.ca_cert, "cert": pki.server_cert, "key": pki.server_key},
        "state_dir": run_dir / "server-state",
        "metrics_file": run_dir / "server-metrics.jsonl",
        "seed": exp.seed,
        "strategy": strategy_section(exp, strategy),
        "rounds": {"min_clients": exp.clients, "local_steps": exp.local_steps},
        # data.test_max already caps the test split, the same rows for server and clients
        "evaluation": {"every_versions": 1, "max_samples": exp.test_samples},
        "stop_after_versions": exp.rounds,
        "logging": {"json_lines": True},
    }
    if exp.defense is not None:
        generated["robust"] = defense_section(exp.defense)
    if exp.adaptive and strategy == "gsfs":
        generated["feedback"] = {"enabled": True}
    layered = deep_merge(deep_merge(generated, shared_sections(exp)), exp.shared)
    return deep_merge(layered, exp.server)


def defense_section(rule: str) -> dict[str, Any]:
    """The server's [robust] for `--defense`; clipping to the median norm for "clip"."""
    return {"rule": rule, "clip_multiplier": 1.0} if rule == "clip" else {"rule": rule}


def attack_sections(exp: ExperimentSettings, strategy: str) -> dict[str, Any]:
    """What a poisoned client's config adds: its [attack], or for "freq" a GSFS trigger that
    fires at every step (a flood of uploads; synchronous rounds ask for one, so no effect)."""
    if exp.attack == "freq":
        if strategy != "gsfs":
            return {}
        flood = {"check_every": 1, "warmup_steps": 0, "min_steps_between_uploads": 0}
        return {"trigger": {**flood, "max_silence_steps": 1}}
    return {"attack": {"kind": exp.attack}}


def gsfs_trigger(exp: ExperimentSettings) -> dict[str, Any]:
    """Trigger cadence that spends about the same budget as ``rounds`` synchronous rounds.

    An aggregation needs K = ceil(q N) uploads; N clients that upload at most every G steps
    give at most N/G uploads per step, so ``rounds`` aggregations take about rounds * K * G / N
    steps. G = 0.8 * local_steps * N / K spends ~80% of the budget on them, leaving slack so
    the last aggregation is reached before budgets run out (a client's final upload happens at
    budget end). Which trigger fires, and when after the gap, is still GSFS's own decision;
    max silence forces an upload one check after the gap.
    """
    q = float(exp.server.get("strategy", {}).get("quorum_fraction", DEFAULT_QUORUM))
    quorum = math.ceil(q * exp.clients)
    check = max(2, exp.local_steps // 4)
    gap = max(check, math.floor(0.8 * exp.local_steps * exp.clients / quorum))
    return {
        "check_every": check,
        "warmup_steps": 2 * check,
        "min_steps_between_uploads": gap,
        "max_silence_steps": gap + check,
    }


def client_dict(
    exp: ExperimentSettings, strategy: str, pki: PkiPaths, run_dir: Path, port: int, index: int
) -> dict[str, Any]:
    name = client_names(exp.clients)[index]
    paths = pki.clients[name]
    generated = {
        "server": {"host": "127.0.0.1", "port": port, "server_name": SERVER_NAME},
        "tls": {"ca": pki.ca_cert, "cert": paths.cert, "key": paths.key},
        "client_name": name,
        "state_dir": run_dir / f"{name}-state",
        "metrics_file": run_dir / f"{name}-metrics.jsonl",
        "seed": exp.seed + index,
        "data": {"partition_index": index},
        "train": {"batch_size": exp.batch_size, "lr": exp.lr},
        "max_total_steps": exp.budget_steps,
        "final_eval": {"enabled": True, "max_samples": 0},  # 0: the whole test split
        "backoff": {"initial_s": 0.2, "max_s": 2.0},
    }
    if strategy == "gsfs":
        generated["trigger"] = gsfs_trigger(exp)
    layered = deep_merge(deep_merge(shared_sections(exp), generated), exp.shared)
    layered = deep_merge(layered, exp.client)
    if index < exp.malicious_clients:
        layered = deep_merge(layered, attack_sections(exp, strategy))
    return layered


def _to_toml(settings: Any) -> str:
    """TOML of a settings object: paths as strings, unset (None) options left out."""
    return tomli_w.dumps(settings.model_dump(mode="json", exclude_none=True))


def _daemon_env(exp: ExperimentSettings) -> dict[str, str]:
    threads = str(exp.torch_threads)
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    return env


@dataclass(frozen=True)
class Deployment:
    fleet: Fleet
    server_metrics: Path
    server_state: Path
    client_metrics: dict[str, Path]
    port: int


def prepare_deployment(
    exp: ExperimentSettings, strategy: str, pki: PkiPaths, run_dir: Path
) -> Deployment:
    """Validate and write every daemon's config; return the (not yet started) fleet."""
    from fedllm_client.settings import ClientSettings
    from fedllm_server.settings import ServerSettings

    # The daemons resume from whatever state they find (checkpoints, client state), so a
    # strategy directory left by an earlier run into the same --out must not survive.
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    port = free_port()
    server = ServerSettings.model_validate(server_dict(exp, strategy, pki, run_dir, port))
    (run_dir / "server.toml").write_text(_to_toml(server))
    env = _daemon_env(exp)
    daemons, metrics = [], {}
    for index, name in enumerate(client_names(exp.clients)):
        raw = client_dict(exp, strategy, pki, run_dir, port, index)
        client = ClientSettings.model_validate(raw)
        (run_dir / f"{name}.toml").write_text(_to_toml(client))
        metrics[name] = client.metrics_path
        argv = [sys.executable, "-m", "fedllm_client.cli", "--config", f"{name}.toml"]
        daemons.append(Daemon(name, argv, run_dir / f"{name}.log", env=env, cwd=run_dir))
    server_argv = [sys.executable, "-m", "fedllm_server.cli", "--config", "server.toml"]
    fleet = Fleet(
        Daemon("server", server_argv, run_dir / "server.log", env=env, cwd=run_dir), daemons
    )
    return Deployment(fleet, server.metrics_path, server.state_dir, metrics, port)
