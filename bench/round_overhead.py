"""The cost of the federation itself: seconds per FedAvg round with training taken out.

4 client daemons whose training is replaced by a fixed random update (``trainer =
"synthetic"``) and the real server daemon, every one a process, over mutual TLS on loopback;
FedAvg, 5 rounds, for updates of 2, 20 and 100 MB (20 float32 arrays). The update size is the
global model's: a randomly initialised 5-layer BERT whose LoRA factors on query/value (rank
chosen for the size, head not trained) are exactly 20 arrays of the target size.

A round is measured on the server's clock, from one global version's publication to the next
(round 1: from the round's start): broadcast to 4 clients, their decode + "training" + encode,
4 uploads, validation, aggregation, checkpoint, encoding of the new version. Server peak RSS
comes from wait4() (ru_maxrss) of the server process, idle RSS from /proc once it listens.

Flower's deployment runtime took 10.7 / 12.4 / 22.5 s per round on this workload (TLS) with
0.46 / 0.78 / 2.4 GB server RSS; the target is a tenth of its time per round and server RSS
growth under 3x one round's update bytes. Last line of output: one JSON object.

    python bench/round_overhead.py [--sizes 2,20,100] [--rounds 5] [--clients 4]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomli_w

from fedllm_core.certs import PkiPaths, make_federation_pki
from fedllm_experiment.processes import Daemon, DaemonCrashed, Fleet

FLOWER_S_PER_ROUND = {2: 10.7, 20: 12.4, 100: 22.5}
# size (MB) -> (hidden size, LoRA rank): 5 layers x {query, value} x {A, B} = 20 arrays of
# rank x hidden float32 each, 20 * r * h * 4 bytes ~= size.
SHAPES = {2: (128, 195), 20: (256, 977), 100: (256, 4883)}
DATA = {"max_rows": 1000, "num_partitions": 4}
RUN_TIMEOUT_S = 600.0  # one size's whole run
CLIENT_EXIT_S = 60.0  # clients' exit after the server's Bye


def model_section(size_mb: int) -> dict[str, Any]:
    hidden, rank = SHAPES[size_mb]
    overrides = {
        "hidden_size": hidden,
        "num_hidden_layers": 5,
        "num_attention_heads": 4,
        "intermediate_size": 2 * hidden,
    }
    return {
        "name": "bert",
        "random_init": True,
        "train_head": False,
        "lora_r": rank,
        "config_overrides": overrides,
    }


def server_config(root: Path, pki: PkiPaths, port: int, size_mb: int, rounds: int, n: int) -> Path:
    cfg = {
        "host": "127.0.0.1",
        "port": port,
        "state_dir": str(root / "server-state"),
        "strategy": {"name": "fedavg"},
        "rounds": {"min_clients": n, "local_steps": 1, "deadline_s": 300.0},
        "stop_after_versions": rounds,
        "model": model_section(size_mb),
        "data": DATA,
        "evaluation": {"every_versions": 0},
        "tls": {"ca": str(pki.ca_cert), "cert": str(pki.server_cert), "key": str(pki.server_key)},
        "logging": {"level": "info", "json_lines": True},
    }
    path = root / "server.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path


def client_config(root: Path, pki: PkiPaths, port: int, size_mb: int, index: int) -> Path:
    name = f"client-{index + 1}"
    cfg = {
        "client_name": name,
        "state_dir": str(root / f"{name}-state"),
        "server": {"port": port, "server_name": "localhost"},
        "tls": {
            "ca": str(pki.ca_cert),
            "cert": str(pki.clients[name].cert),
            "key": str(pki.clients[name].key),
        },
        "trainer": "synthetic",
        "model": model_section(size_mb),
        "data": {**DATA, "partition_index": index},
        "max_total_steps": 1000,
        "final_eval": {"enabled": False},
        "backoff": {"initial_s": 0.2, "max_s": 1.0},
    }
    path = root / f"{name}.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path


def daemon(name: str, module: str, config: Path, root: Path) -> Daemon:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = [sys.executable, "-m", module, "--config", str(config)]
    return Daemon(name, argv, root / f"{name}.log", env=env, cwd=root)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wait_listening(server: Daemon, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while "server_listening" not in server.log_path.read_text(errors="replace"):
        if server.poll() is not None:
            raise server.crash()
        if time.monotonic() > deadline:
            raise SystemExit(f"server not listening after {timeout:.0f} s: see {server.log_path}")
        time.sleep(0.1)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def round_seconds(metrics: Path) -> list[float]:
    """Publication-to-publication time of each version (round 1 from its start)."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    published = [r["time"] for r in records if r.get("kind") == "aggregation"]
    first_round = next(r for r in records if r.get("kind") == "round")
    start = first_round["time"] - first_round["duration_s"]
    times = [start, *published]
    return [b - a for a, b in itertools.pairwise(times)]


def follow(fleet: Fleet) -> int:
    """Start the server, then the clients; return once all have exited 0 (else raise).

    Returns the server's idle RSS (kB) measured once it listens, before any client connects.
    """
    server = fleet.server
    server.start()
    wait_listening(server)
    assert server.proc is not None
    idle_kb = rss_kb(server.proc.pid)
    for client in fleet.clients:
        client.start()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while server.poll() is None:
        fleet.check_clients()  # a client that dies would leave the server waiting forever
        if time.monotonic() > deadline:
            raise SystemExit(f"no result after {RUN_TIMEOUT_S:.0f} s: see {server.log_path}")
        time.sleep(0.1)
    if server.returncode != 0:
        raise server.crash()
    fleet.wait_clients(CLIENT_EXIT_S)
    fleet.check_clients()
    stuck = [c.name for c in fleet.clients if c.returncode is None]
    if stuck:
        raise SystemExit(f"{stuck} still running {CLIENT_EXIT_S:.0f} s after the server's Bye")
    return idle_kb


def run_size(size_mb: int, rounds: int, n: int, root: Path) -> dict[str, Any]:
    names = [f"client-{i + 1}" for i in range(n)]
    pki = make_federation_pki(root / "pki", clients=names)
    port = free_port()
    server_cfg = server_config(root, pki, port, size_mb, rounds, n)
    server = daemon("server", "fedllm_server.cli", server_cfg, root)
    clients = [
        daemon(name, "fedllm_client.cli", client_config(root, pki, port, size_mb, i), root)
        for i, name in enumerate(names)
    ]
    fleet = Fleet(server, clients)
    try:
        idle_kb = follow(fleet)
    except DaemonCrashed as exc:
        raise SystemExit(f"{size_mb} MB run failed: {exc}") from None
    finally:
        fleet.stop_all(grace_s=5.0)  # whatever happened, no daemon outlives the bench
    per_round = round_seconds(root / "server-state" / "metrics.jsonl")
    update_bytes = n * size_mb * 1_000_000
    growth = server.max_rss_kb * 1024 - idle_kb * 1024
    return {
        "size_mb": size_mb,
        "rounds": len(per_round),
        "s_per_round": {
            "median": round(statistics.median(per_round), 3),
            "min": round(min(per_round), 3),
            "max": round(max(per_round), 3),
        },
        "flower_s_per_round": FLOWER_S_PER_ROUND.get(size_mb),
        "fraction_of_flower": round(statistics.median(per_round) / FLOWER_S_PER_ROUND[size_mb], 4)
        if size_mb in FLOWER_S_PER_ROUND
        else None,
        "server_idle_rss_mb": round(idle_kb / 1024, 1),
        "server_peak_rss_mb": round(server.max_rss_kb / 1024, 1),
        "server_rss_growth_over_round_bytes": round(growth / update_bytes, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2,20,100", help="update sizes in MB (2, 20, 100)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--keep", type=Path, help="keep configs, logs and metrics here")
    args = parser.parse_args()
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix=f"round-overhead-{size}mb-") as tmp:
            root = args.keep / f"{size}mb" if args.keep else Path(tmp)
            root.mkdir(parents=True, exist_ok=True)
            result = run_size(size, args.rounds, args.clients, root)
        print(
            f"{size:>4} MB: {result['s_per_round']['median']:.3f} s/round median "
            f"(min {result['s_per_round']['min']:.3f}, max {result['s_per_round']['max']:.3f}); "
            f"server RSS {result['server_idle_rss_mb']} -> {result['server_peak_rss_mb']} MB",
            flush=True,
        )
        results.append(result)
    print(json.dumps({"bench": "round_overhead", "clients": args.clients, "results": results}))


if __name__ == "__main__":
    main()
