"""Privacy spent by DP-FedAvg over default-experiment-like federations, by two methods.

For T aggregations (default 10, the experiment's rounds, and 30), sampling probabilities q and
noise multipliers σ, prints ε at δ from dp-accounting's PLD accountant (the one
`fedllm_server.privacy.PrivacyAccountant` checks its budget with) beside its RDP accountant
(the cross-check; RDP is an upper bound, so RDP ≥ PLD, and the ratio shows how much looser it
is). q = 1 is how a GSFS client is accounted (every aggregation it could have contributed to,
docs/privacy.md); q < 1 needs the server to draw participation by a secret Poisson coin.
Then the smallest σ with ε ≤ the target for each (T, q), by both methods, and what it means for
central mode: the noise std on the mean per unit of clip norm, σ/(q·N) with N clients.
Then one variable-participation ledger (q alternating between 0.6 and 1), through the
accountant class itself, and the cost of the CSPRNG normals against numpy's PCG64.
Then the default experiment's setting (`--rounds` FedAvg aggregations, every client in each:
q = 1): the σ that PLD gives for the target, and ε at that σ by three methods: PLD, RDP and
the exact ε of T composed Gaussian mechanisms (μ-GDP with μ = √T/σ, Balle & Wang 2018: δ(ε) =
Φ(−ε/μ + μ/2) − e^ε·Φ(−ε/μ − μ/2), solved for ε), a second method independent of
dp-accounting. Last output line: one JSON object.

    python bench/privacy_accounting.py [--clients 5] [--delta 1e-6] [--target-epsilon 8]
                                       [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

from fedllm_server.privacy import (
    AccountantConfig,
    PrivacyAccountant,
    SystemRandom,
    compose,
    epsilon,
    noise_multiplier_for,
)

AGGREGATIONS = (10, 30)
QS = (0.6, 0.8, 1.0)
SIGMAS = (0.5, 1.0, 1.5, 2.0, 4.0)


def epsilon_table(delta: float) -> list[dict[str, float]]:
    rows = []
    print(f"epsilon at delta = {delta:g}  (PLD | RDP, RDP/PLD)")
    print(f"{'T':>3} {'q':>4} " + " ".join(f"{'sigma=' + str(s):>22}" for s in SIGMAS))
    for t in AGGREGATIONS:
        for q in QS:
            cells = []
            for s in SIGMAS:
                ledger = compose((), s, q, t)
                pld, rdp = epsilon(ledger, delta, "pld"), epsilon(ledger, delta, "rdp")
                rows.append({"T": t, "q": q, "sigma": s, "pld": pld, "rdp": rdp})
                cells.append(f"{pld:8.2f} | {rdp:7.2f} {rdp / pld:4.2f}")
            print(f"{t:>3} {q:>4} " + " ".join(f"{c:>22}" for c in cells))
    return rows


def sigma_table(delta: float, target: float, clients: int) -> list[dict[str, float]]:
    rows = []
    print(f"\nsmallest sigma with epsilon <= {target:g} at delta = {delta:g}; central noise std on")
    print(f"the mean per unit C = sigma / (q*N), N = {clients}")
    print(f"{'T':>3} {'q':>4} {'sigma PLD':>10} {'sigma RDP':>10} {'std/C (PLD)':>12}")
    for t in AGGREGATIONS:
        for q in QS:
            pld = noise_multiplier_for(target, delta, t, q, "pld")
            rdp = noise_multiplier_for(target, delta, t, q, "rdp")
            std = pld / (q * clients)
            rows.append({"T": t, "q": q, "sigma_pld": pld, "sigma_rdp": rdp, "std_per_c": std})
            print(f"{t:>3} {q:>4} {pld:>10.3f} {rdp:>10.3f} {std:>12.3f}")
    return rows


def variable_participation(delta: float, clients: int) -> dict[str, Any]:
    """30 aggregations at σ = 4: even ones sampled with q = 0.6, odd ones with everyone."""
    acc = PrivacyAccountant(AccountantConfig(target_delta=delta))
    ids = [f"c{i}" for i in range(clients)]
    for t in range(30):
        q = 0.6 if t % 2 == 0 else 1.0
        acc = acc.record_aggregation(4.0, dict.fromkeys(ids, q))
    pld, rdp = acc.federation_epsilon("pld"), acc.federation_epsilon("rdp")
    print(
        f"\nvariable participation, 30 aggregations, sigma 4, q = 0.6/1 alternating: "
        f"epsilon PLD {pld:.3f}, RDP {rdp:.3f}"
    )
    return {"pld": pld, "rdp": rdp, "ledger": acc.to_dict()["federation"]}


def noise_speed(n: int = 2_000_000) -> dict[str, float]:
    source, pcg = SystemRandom(), np.random.default_rng()
    timings = {}
    for name, draw in (("csprng", source.standard_normal), ("pcg64", pcg.standard_normal)):
        best = min(_timed(draw, n) for _ in range(3))
        timings[name] = best / n * 1e6
    print(
        f"\nnormals: CSPRNG (os.urandom + Box-Muller) {timings['csprng']:.3f} s per million, "
        f"numpy PCG64 {timings['pcg64']:.3f} s per million"
    )
    return timings


def exact_gaussian_epsilon(sigma: float, aggregations: int, delta: float) -> float:
    """ε at δ of `aggregations` Gaussian mechanisms (sensitivity 1, std σ), composed exactly."""
    mu = np.sqrt(aggregations) / sigma

    def gap(eps: float) -> float:
        return float(norm.cdf(-eps / mu + mu / 2) - np.exp(eps) * norm.cdf(-eps / mu - mu / 2))

    return float(brentq(lambda e: gap(e) - delta, 0.0, 500.0))


def experiment_check(delta: float, target: float, rounds: int) -> dict[str, float]:
    sigma = noise_multiplier_for(target, delta, rounds)
    ledger = compose((), sigma, 1.0, rounds)
    row = {
        "T": rounds,
        "sigma": sigma,
        "pld": epsilon(ledger, delta, "pld"),
        "rdp": epsilon(ledger, delta, "rdp"),
        "exact": exact_gaussian_epsilon(sigma, rounds, delta),
    }
    print(
        f"\ndefault experiment, T = {rounds} aggregations, q = 1: sigma {sigma:.4f} (PLD, "
        f"epsilon <= {target:g}); epsilon PLD {row['pld']:.4f}, RDP {row['rdp']:.4f}, "
        f"exact Gaussian composition {row['exact']:.4f}"
    )
    return row


def _timed(draw: Any, n: int) -> float:
    start = time.perf_counter()
    draw(n)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--delta", type=float, default=1e-6)
    parser.add_argument("--target-epsilon", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=20, help="the experiment's aggregations")
    args = parser.parse_args()
    result = {
        "delta": args.delta,
        "target_epsilon": args.target_epsilon,
        "clients": args.clients,
        "epsilon": epsilon_table(args.delta),
        "sigma_for_target": sigma_table(args.delta, args.target_epsilon, args.clients),
        "variable_participation": variable_participation(args.delta, args.clients),
        "normals_s_per_million": noise_speed(),
        "experiment": experiment_check(args.delta, args.target_epsilon, args.rounds),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
