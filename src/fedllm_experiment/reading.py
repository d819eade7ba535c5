"""The "reading" closing report.md: sentences computed from the numbers, never written ahead.

Who won and by how much, whether the gap exceeds the sampling noise of the test set, the
paper's headline margin (GSFS over FedAvg) beside ours, what GSFS's communication saving cost
in time and CPU, and which of its triggers actually fired. A statement the numbers cannot
support (a missing strategy, no test size) is left out rather than guessed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from fedllm_experiment import paper

Run = Mapping[str, Any]


def is_federated(run: Run) -> bool:
    """Federated runs publish global versions; baselines and benchmarks have none."""
    return int(run.get("rounds", 0)) > 0


def _standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on n test flows."""
    return math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / max(n, 1))


def _winner(fed: Sequence[Run]) -> list[str]:
    best = max(fed, key=lambda r: r["central"]["accuracy"])
    worst = min(fed, key=lambda r: r["central"]["accuracy"])
    b, w = best["central"]["accuracy"], worst["central"]["accuracy"]
    out = [
        f"- Highest central accuracy: **{best['strategy']}** ({b:.4f}); lowest: "
        f"{worst['strategy']} ({w:.4f}); gap {b - w:.4f}."
    ]
    n = int(best.get("test_flows") or 0)
    if n and best is not worst:
        noise = 2 * math.hypot(_standard_error(b, n), _standard_error(w, n))
        verdict = "larger" if b - w > noise else "not larger"
        out.append(
            f"- On {n} test flows, two standard errors of that difference are {noise:.4f}: "
            f"the gap is {verdict} than the sampling noise."
        )
    return out


def _headline(g: Run, a: Run) -> str:
    """The paper's claim, GSFS above FedAvg, in our numbers next to its own margins."""
    ref_g, ref_a = paper.TABLE3["gsfs"], paper.TABLE3["fedavg"]
    central = g["central"]["accuracy"] - a["central"]["accuracy"]
    line = (
        f"- GSFS minus FedAvg, central accuracy: {central:+.4f} "
        f"(paper: {ref_g['acc_central'] - ref_a['acc_central']:+.4f})"
    )
    if g.get("clients_avg") and a.get("clients_avg"):
        clients = g["clients_avg"]["accuracy"] - a["clients_avg"]["accuracy"]
        paper_clients = ref_g["acc_clients"] - ref_a["acc_clients"]
        line += f"; client average: {clients:+.4f} (paper: {paper_clients:+.4f})"
    n = int(g.get("test_flows") or 0)
    if n:
        se = math.hypot(
            _standard_error(g["central"]["accuracy"], n),
            _standard_error(a["central"]["accuracy"], n),
        )
        within = "larger than" if abs(central) > 2 * se else "within"
        line += f"; two standard errors of the central difference: {2 * se:.4f} ({within} noise)"
    return line + "."


def _cost(g: Run, a: Run) -> list[str]:
    ratio = g["bytes_up"] / a["bytes_up"]
    lines = [
        f"- GSFS sent {g['uploads']} uploads ({g['bytes_up']:,} bytes) against FedAvg's "
        f"{a['uploads']} ({a['bytes_up']:,} bytes): {ratio:.2f}x the upstream traffic, in "
        f"{g['wall_s']:.0f} s against {a['wall_s']:.0f} s of wall time."
    ]
    cpu_g, cpu_a = g["energy"].get("cpu_s_total"), a["energy"].get("cpu_s_total")
    if cpu_g and cpu_a:
        lines.append(
            f"- CPU time of all daemons: GSFS {cpu_g:.0f} s, FedAvg {cpu_a:.0f} s (GSFS clients "
            "also evaluate their validation set at every trigger check and broadcast)."
        )
    return lines


def _triggers(g: Run) -> list[str]:
    fired = Counter(str(e.get("trigger")) for e in g.get("upload_events", []))
    if not fired:
        return []
    parts = ", ".join(f"{name} {count}" for name, count in fired.most_common())
    return [
        f"- GSFS uploads by trigger: {parts}. The minimum gap between a client's uploads is "
        "sized for budget parity (docs/experiment.md), so it, not only the triggers, sets the "
        "pace."
    ]


def reading(runs: Sequence[Run]) -> list[str]:
    """Bullet lines for report.md (empty when there is no federated run)."""
    fed = [r for r in runs if is_federated(r)]
    if not fed:
        return []
    out = _winner(fed)
    by = {r["strategy"]: r for r in fed}
    if "gsfs" in by and "fedavg" in by and by["fedavg"]["bytes_up"]:
        g, a = by["gsfs"], by["fedavg"]
        out += [_headline(g, a), *_cost(g, a), *_triggers(g)]
    best = max(fed, key=lambda r: r["central"]["accuracy"])["strategy"]
    paper_best = max(paper.TABLE3, key=lambda s: paper.TABLE3[s]["acc_central"])
    agrees = "agrees" if best == paper_best else "does not agree"
    out.append(
        f"- The paper's ranking puts {paper_best} first; ours {agrees}. Our set-up differs from "
        "the paper's (model, data size, local budget, CPU only), so absolute numbers are not "
        "expected to match; the comparison between strategies under equal budgets is the point."
    )
    return out
