"""report.md from a results document: the paper's Table III/IV layout, our numbers beside its own.

Everything printed comes from the results document or from ``paper.py``; the closing "reading"
is computed from the numbers (best strategy, gaps, whether a gap exceeds the sampling noise of the
test set), never written in advance. Baseline runs (no clients) get their own small table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedllm_experiment import paper
from fedllm_experiment.reading import is_federated, reading
from fedllm_experiment.report_detection import detection_section

Run = Mapping[str, Any]


def _f(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _paper3(strategy: str, key: str) -> str:
    row = paper.TABLE3.get(strategy)
    return _f(row[key]) if row else "–"


def _clients(run: Run, key: str) -> float | None:
    avg = run.get("clients_avg")
    return None if avg is None else float(avg[key])


def _table3(runs: Sequence[Run]) -> list[str]:
    lines = [
        "| Strategy | Acc central | (paper) | Acc clients avg | (paper) "
        "| F1 central | (paper) | F1 clients avg | (paper) | F1-weighted central |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        s = run["strategy"]
        c = run["central"]
        lines.append(
            f"| {s} | {_f(c['accuracy'])} | {_paper3(s, 'acc_central')} "
            f"| {_f(_clients(run, 'accuracy'))} | {_paper3(s, 'acc_clients')} "
            f"| {_f(c['f1_macro'])} | {_paper3(s, 'f1_central')} "
            f"| {_f(_clients(run, 'f1_macro'))} | {_paper3(s, 'f1_clients')} "
            f"| {_f(c['f1_weighted'])} |"
        )
    return lines


def _table4(runs: Sequence[Run]) -> list[str]:
    lines = [
        "| Strategy | latency ms/flow, batch 1 median (p95) | batched ms/flow | flows/min "
        "| paper latency s (central / clients) | paper req/min (central / clients) |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        lat = run["latency"]
        ref = paper.TABLE4.get(run["strategy"])
        ref_lat = f"{ref['latency_central_s']} / {ref['latency_clients_s']}" if ref else "–"
        ref_rpm = f"{ref['rpm_central']} / {ref['rpm_clients']}" if ref else "–"
        lines.append(
            f"| {run['strategy']} | {_f(run['latency_ms_per_flow'], 2)} "
            f"({_f(lat.get('batch1_p95_ms'), 2)}) | {_f(lat.get('batched_ms_per_flow'), 2)} "
            f"| {_f(run['flows_per_min'], 0)} | {ref_lat} | {ref_rpm} |"
        )
    return lines


def _energy_cell(energy: Mapping[str, Any]) -> str:
    joules = energy.get("joules")
    cpu = energy.get("cpu_s_total")
    parts = [f"{joules:.0f} J"] if joules else []
    if cpu is not None:
        parts.append(f"{cpu:.0f} CPU s")
    return ", ".join(parts) or "–"


def _steps_cell(run: Run) -> str:
    """Local optimizer steps the clients really took (min-max): the budget actually spent."""
    steps = [c["steps_used"] for c in run.get("clients", []) if c.get("steps_used") is not None]
    if not steps:
        return "–"
    low, high = min(steps), max(steps)
    return str(low) if low == high else f"{low}-{high}"


def _table_extra(runs: Sequence[Run]) -> list[str]:
    lines = [
        "| Strategy | global versions | local steps per client | uploads | bytes up "
        "| bytes down | wall time s | energy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run['strategy']} | {run['rounds']} | {_steps_cell(run)} | {run['uploads']} "
            f"| {run['bytes_up']:,} {_encodings_cell(run)}| {run['bytes_down']:,} "
            f"| {run['wall_s']:.1f} | {_energy_cell(run['energy'])} |"
        )
    return lines


def _encodings_cell(run: Run) -> str:
    """Bytes up by upload encoding, when any upload was not raw: "(int8 1.2 MB, raw 0.3 MB) "."""
    by = run.get("bytes_up_by_encoding") or {}
    if set(by) <= {"raw"}:
        return ""
    parts = [f"{name} {nbytes / 1e6:.2f} MB" for name, nbytes in sorted(by.items())]
    return f"({', '.join(parts)}) "


def _config_lines(config: Mapping[str, Any]) -> list[str]:
    keys = sorted(k for k, v in config.items() if not isinstance(v, Mapping | list))
    return [f"- `{k}`: {config[k]}" for k in keys]


def render_report(doc: Mapping[str, Any], *, title: str = "fedllm experiment") -> str:
    runs = doc["runs"]
    fed = [r for r in runs if is_federated(r)]
    other = [r for r in runs if not is_federated(r)]
    parts = [f"# {title}", "", "## Configuration", "", *_config_lines(doc["config"]), ""]
    if fed:
        parts += ["## Table III layout: accuracy and F1 (ours, paper)", ""]
        parts += [*_table3(fed), "", _F1_NOTE, ""]
    note = f"{_LAT_NOTE} {_SAME_MODEL_NOTE}" if fed else _LAT_NOTE
    parts += ["## Table IV layout: latency and throughput", "", *_table4(fed or runs), "", note]
    parts += [""]
    if fed:
        parts += ["## What the paper does not report", "", *_table_extra(fed), "", _ENERGY_NOTE]
        parts += ["", "## Reading", "", *reading(runs), ""]
    if other:
        parts += ["## Reference points (no federation)", "", *_table_baselines(other), ""]
    parts += detection_section(doc["config"], runs, doc.get("references") or {})
    return "\n".join(parts)


def _table_baselines(runs: Sequence[Run]) -> list[str]:
    lines = [
        "| Run | accuracy | F1 macro | F1 weighted | precision | recall | ms/flow | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        c = run["central"]
        lines.append(
            f"| {run['strategy']} | {_f(c['accuracy'])} | {_f(c['f1_macro'])} "
            f"| {_f(c['f1_weighted'])} | {_f(c['precision'])} | {_f(c['recall'])} "
            f"| {_f(run['latency_ms_per_flow'], 3)} | {run['wall_s']:.1f} |"
        )
    return lines


_F1_NOTE = (
    "Our F1 columns are macro-averaged (weighted F1 in the last column); the paper does not say "
    "which average it uses. Central = the global model on the held-out test split; clients avg = "
    "each client's final local model on the same split, averaged."
)
_LAT_NOTE = (
    "Ours: milliseconds per flow for the final global model (tokenisation included, warm-up "
    "excluded); flows/min from the batched pass. The paper's latency is in seconds and its "
    "throughput in requests per minute for a different unit of work (not stated precisely), so "
    "its magnitudes are not comparable with ours."
)
_SAME_MODEL_NOTE = (
    "Every strategy's final model has the same architecture and adapter size, so differences "
    "between our rows are measurement noise (e.g. other load on the machine), not an effect of "
    "the strategy."
)
_ENERGY_NOTE = (
    "Energy: joules where an NVIDIA energy counter exists; otherwise the CPU seconds of the "
    "server and client processes (a proxy, not joules)."
)
