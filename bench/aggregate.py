"""Aggregation throughput and memory of the running weighted sum (fedllm_server.strategies).

For each workload (10 x 20 MB and 100 x 1 MB float32 updates, each split into 10 tensors) it
streams the updates, generating each one, folding it into a `WeightedSum`, and dropping it, the
way the server folds uploads on arrival. Three timings, all in the same process and run:
  fold       WeightedSum.add with the norm supplied (the door has already computed it)
  fold+norm  WeightedSum.add computing ‖Δ‖₂ itself (one extra read of the update)
  memcpy     np.copyto of the same update bytes into a preallocated buffer (the floor)
then `FedAvg.finish` (mean + apply to the global). GB/s counts update bytes folded per second
(median over repeats, and best); fold/memcpy is the median of the per-repeat ratio.
Peak RSS growth is ru_maxrss after all passes minus ru_maxrss before any (global model, noise
source and memcpy sink already resident), each workload in a fresh interpreter so the peaks
do not mix. It includes the update in flight (1 x model), the running sums (float64, so 2 x)
and the 1 MiB scratch block: O(model), where a list of all updates would be clients x model.
Last output line: one JSON object.

    python bench/aggregate.py [--repeat 9]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np

from fedllm_server.strategies.base import TensorDict, l2_norm
from fedllm_server.strategies.fedavg import FedAvg
from fedllm_server.strategies.settings import FedAvgSettings
from fedllm_server.strategies.weighted_sum import WeightedSum

WORKLOADS = {"10x20MB": (10, 20 * 2**20), "100x1MB": (100, 1 * 2**20)}
TENSORS_PER_UPDATE = 10


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def model_layout(update_bytes: int) -> dict[str, int]:
    per_tensor = update_bytes // 4 // TENSORS_PER_UPDATE
    return {f"layer{i}.weight": per_tensor for i in range(TENSORS_PER_UPDATE)}


def updates(noise: TensorDict, clients: int) -> Iterator[tuple[str, TensorDict, float]]:
    """Fresh arrays per client (allocated, then dropped by the consumer), plus their norm."""
    base_norm = l2_norm(noise)
    for i in range(clients):
        scale = np.float32(1.0 + 0.01 * i)
        yield f"c{i}", {k: v * scale for k, v in noise.items()}, base_norm * float(scale)


def one_pass(
    noise: TensorDict, glob: TensorDict, sink: TensorDict, clients: int, mode: str
) -> tuple[float, float]:
    """Seconds spent folding (or copying into `sink`) and in finish; generation is untimed."""
    acc = WeightedSum()
    spent = 0.0
    for cid, tensors, norm in updates(noise, clients):
        t0 = time.perf_counter()
        if mode == "memcpy":
            for name, arr in tensors.items():
                np.copyto(sink[name], arr)
        else:
            acc.add(cid, tensors, 1.0 + len(acc), norm if mode == "fold" else None)
        spent += time.perf_counter() - t0
        del tensors
    if mode == "memcpy":
        return spent, 0.0
    t0 = time.perf_counter()
    FedAvg(FedAvgSettings()).finish(glob, acc, None, new_version=1)
    return spent, time.perf_counter() - t0


def run_workload(name: str, repeat: int) -> dict[str, float | int | str]:
    clients, update_bytes = WORKLOADS[name]
    rng = np.random.default_rng(0)
    layout = model_layout(update_bytes)
    noise = {k: rng.standard_normal(n, dtype=np.float32) for k, n in layout.items()}
    glob = {k: np.zeros(n, dtype=np.float32) for k, n in layout.items()}
    model_bytes = sum(v.nbytes for v in glob.values())
    sink = {k: np.zeros_like(v) for k, v in noise.items()}  # memcpy target, pages touched
    np.dot(noise["layer0.weight"][:1024], noise["layer0.weight"][:1024])  # load BLAS first
    rss_before = peak_rss_bytes()  # global, noise source and sink resident; nothing folded
    timings: dict[str, list[float]] = {"fold": [], "fold+norm": [], "memcpy": [], "finish": []}
    for _ in range(repeat):  # modes interleaved so a noisy neighbour hits all of them alike
        for mode in ("fold", "fold+norm", "memcpy"):
            spent, finish = one_pass(noise, glob, sink, clients, mode)
            timings[mode].append(spent)
            if mode == "fold":
                timings["finish"].append(finish)
    growth = peak_rss_bytes() - rss_before
    total = clients * model_bytes
    out: dict[str, float | int | str] = {"workload": name, "clients": clients}
    out["update_mb"] = model_bytes / 2**20
    for mode in ("fold", "fold+norm", "memcpy"):
        out[f"{mode}_gbps"] = total / statistics.median(timings[mode]) / 1e9
        out[f"{mode}_gbps_best"] = total / min(timings[mode]) / 1e9
    out["fold_over_memcpy"] = statistics.median(
        m / f for f, m in zip(timings["fold"], timings["memcpy"], strict=True)
    )  # per repeat, so both sides saw the same neighbours
    out["finish_ms"] = statistics.median(timings["finish"]) * 1e3
    out["peak_rss_growth_mb"] = growth / 2**20
    out["rss_growth_over_model"] = growth / model_bytes
    out["all_updates_mb"] = total / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--one", choices=sorted(WORKLOADS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # child: one workload, one JSON line
        print(json.dumps(run_workload(args.one, args.repeat)))
        return
    results = []
    for name in WORKLOADS:
        cmd = [sys.executable, __file__, "--one", name, "--repeat", str(args.repeat)]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        res = json.loads(line.strip().splitlines()[-1])
        results.append(res)
        print(
            f"{name:>8}: fold {res['fold_gbps']:.2f} GB/s, fold+norm {res['fold+norm_gbps']:.2f}"
            f" GB/s, memcpy {res['memcpy_gbps']:.2f} GB/s (fold/memcpy"
            f" {res['fold_over_memcpy']:.2f}; best fold {res['fold_gbps_best']:.2f}, memcpy"
            f" {res['memcpy_gbps_best']:.2f}), finish {res['finish_ms']:.1f} ms,"
            f" peak RSS +{res['peak_rss_growth_mb']:.1f} MB"
            f" ({res['rss_growth_over_model']:.2f} x model; all updates = "
            f"{res['all_updates_mb']:.0f} MB)"
        )
    print(json.dumps({"bench": "aggregate", "repeat": args.repeat, "results": results}))


if __name__ == "__main__":
    main()
