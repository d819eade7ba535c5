"""From a finished deployment's files to one results.json run record.

Sources, each used for what it measures first-hand:
- the server's metrics file: every version (``aggregation``: clients, bytes sent, central
  evaluation) and every upload that reached it (``update``: client, trigger, bytes);
- each client's metrics file: its final local model on the test split (``final_eval``), its
  optimizer steps, uploads and bytes received (``stop``), its energy reading;
- the server's last checkpoint: the final global model, loaded here only to time inference
  (the same measurement for every strategy, see latency.py);
- the processes' CPU seconds from the orchestrator (exact, via wait4).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedllm_core.data import (
    DataSettings,
    EvalData,
    load_eval_data,
    load_validation_data,
    template_for,
)
from fedllm_core.metrics_record import read_metrics
from fedllm_core.model import ModelBundle, ModelSettings, build_model, load_trainable_state
from fedllm_experiment.configs import ExperimentSettings
from fedllm_experiment.deploy import Deployment, daemon_data, shared_sections
from fedllm_experiment.latency import (
    DEFAULT_BATCH,
    DEFAULT_WARMUP,
    LatencySample,
    measure_latency,
    sample_latency,
    summarize,
)
from fedllm_experiment.results import average_metrics, metric_block, privacy_record, run_record
from fedllm_experiment.scoring import model_detection

Record = Mapping[str, Any]


class IncompleteRun(RuntimeError):
    """The server stopped cleanly but short of the last version (or never evaluated one)."""


def _kind(records: Sequence[Record], kind: str) -> list[Record]:
    return [r for r in records if r.get("kind") == kind]


def _last(records: Sequence[Record], kind: str) -> Record | None:
    found = _kind(records, kind)
    return found[-1] if found else None


def history(server: Sequence[Record]) -> list[dict[str, Any]]:
    """One record per global version with the cumulative traffic up to its publication."""
    start = _kind(server, "start")
    t0 = float(start[0]["time"]) if start else 0.0
    updates = _kind(server, "update")
    out, down = [], 0
    for agg in _kind(server, "aggregation"):
        at = float(agg["time"])
        before = [u for u in updates if float(u["time"]) <= at]
        down += int(agg.get("bytes_out") or 0)
        evaluation = agg.get("evaluation")
        out.append(
            {
                "version": int(agg["version"]),
                "t_s": round(at - t0, 3),
                "central": metric_block(evaluation) if evaluation else None,
                "loss": evaluation.get("loss") if evaluation else None,
                "uploads": len(before),
                "bytes_up": sum(int(u.get("bytes") or 0) for u in before),
                "bytes_down": down,
                "clients": list(agg.get("clients") or []),
                "trigger": agg.get("trigger"),
            }
        )
    return out


def upload_events(server: Sequence[Record]) -> list[dict[str, Any]]:
    start = _kind(server, "start")
    t0 = float(start[0]["time"]) if start else 0.0
    return [
        {
            "t_s": round(float(u["time"]) - t0, 3),
            "client_id": u.get("client_id"),
            "trigger": u.get("trigger"),
            "bytes": u.get("bytes"),
            "outcome": u.get("outcome"),
        }
        for u in _kind(server, "update")
    ]


def client_summary(name: str, records: Sequence[Record]) -> dict[str, Any]:
    final, stop = _last(records, "final_eval"), _last(records, "stop")
    return {
        "client": name,
        "final_eval": metric_block(final) if final else None,
        "steps_used": (stop or final or {}).get("steps_used"),
        "uploads": (stop or {}).get("uploads"),
        "bytes_up": (stop or {}).get("bytes_up"),
        "bytes_down": (stop or {}).get("bytes_down"),
        "energy": (stop or {}).get("energy"),
        "bytes_up_by_encoding": bytes_by_encoding(_kind(records, "upload")),
    }


def bytes_by_encoding(uploads: Sequence[Record]) -> dict[str, int]:
    """Upload bytes on the wire per encoding (raw, fp16, int8, topk), from upload records."""
    out: dict[str, int] = {}
    for u in uploads:
        key = str(u.get("encoding") or "raw")
        out[key] = out.get(key, 0) + int(u.get("bytes") or 0)
    return out


def energy_block(clients: Sequence[Mapping[str, Any]], cpu_s: Mapping[str, float]) -> dict:
    """CPU seconds of every process (always) and joules only when every client counted them."""
    joules = [(c.get("energy") or {}).get("joules") for c in clients]
    counted = bool(joules) and all(j is not None for j in joules)
    return {
        "joules": sum(joules) if counted else None,
        "cpu_s_server": cpu_s.get("server", 0.0),
        "cpu_s_clients": round(sum(v for k, v in cpu_s.items() if k != "server"), 3),
        "cpu_s_total": round(sum(cpu_s.values()), 3),
        "note": "joules from NVML where available; CPU seconds are process time, not joules",
    }


_timing_models: dict[str, tuple[ModelBundle, EvalData]] = {}


def _timing_model(model: ModelSettings, data: DataSettings) -> tuple[ModelBundle, EvalData]:
    """One model instance per process for timing and scoring every strategy's final state."""
    key = model.model_dump_json() + data.model_dump_json()
    if key not in _timing_models:
        evald = load_eval_data(data)
        _timing_models[key] = build_model(model, evald.label_names, seed=0), evald
    return _timing_models[key]


def _model_and_data(exp: ExperimentSettings) -> tuple[ModelSettings, DataSettings]:
    sections = shared_sections(exp)
    model = ModelSettings.model_validate({**sections["model"], **exp.shared.get("model", {})})
    return model, daemon_data(exp)


def _timing_setup(exp: ExperimentSettings) -> tuple[ModelBundle, list[str]]:
    bundle, evald = _timing_model(*_model_and_data(exp))
    return bundle, evald.texts


def final_detection(exp: ExperimentSettings, dep: Deployment) -> dict[str, Any] | None:
    """The final global model's detection report on every flow of the test split."""
    loaded = _final_checkpoint(dep.server_state)
    return None if loaded is None else _detection(exp, loaded.global_state)


def selected_detection(exp: ExperimentSettings, dep: Deployment) -> dict[str, Any] | None:
    """The same for the server's best-by-validation version (model selection), if it kept one."""
    from safetensors.numpy import load_file

    from fedllm_server.best import INFO_FILE, STATE_FILE

    info_path, state_path = dep.server_state / INFO_FILE, dep.server_state / STATE_FILE
    if not (info_path.exists() and state_path.exists()):
        return None
    info = json.loads(info_path.read_text())
    return {**info, **_detection(exp, load_file(str(state_path)))}


def _detection(exp: ExperimentSettings, state: Mapping[str, Any]) -> dict[str, Any]:
    model, data = _model_and_data(exp)
    bundle, evald = _timing_model(model, data)
    load_trainable_state(bundle.model, dict(state))
    validation = load_validation_data(data, template_for(data))
    return model_detection(bundle, evald, model.max_length, validation=validation, seed=exp.seed)


def _final_checkpoint(server_state: Path) -> Any:
    from fedllm_server.durable.checkpoint import CheckpointStore

    return CheckpointStore(server_state / "checkpoints").load_latest().checkpoint


def final_latency(exp: ExperimentSettings, dep: Deployment) -> dict[str, Any]:
    """This strategy's final global model timed right after its run (see ``interleaved``)."""
    loaded = _final_checkpoint(dep.server_state)
    if loaded is None:
        return {}
    bundle, texts = _timing_setup(exp)
    load_trainable_state(bundle.model, loaded.global_state)
    measured = measure_latency(bundle, texts, requests=exp.latency_requests)
    return {**measured, "model_version": loaded.version, "method": "after_run"}


def remeasure_interleaved(
    exp: ExperimentSettings, finished: Sequence[tuple[dict[str, Any], Path]], passes: int = 4
) -> None:
    """Time every strategy's final model again in alternating passes and update the runs.

    Timed one after the other, each strategy meets whatever else the machine was doing at the
    time; interleaving spreads that load over all of them, so the rows compare like with like.
    """
    loaded = [(run, _final_checkpoint(state)) for run, state in finished]
    loaded = [(run, ckpt) for run, ckpt in loaded if ckpt is not None]
    bundle, texts = _timing_setup(exp)
    samples = {id(run): LatencySample() for run, _ in loaded}
    per_pass = max(1, exp.latency_requests // passes)
    for _ in range(passes):
        for run, ckpt in loaded:
            load_trainable_state(bundle.model, ckpt.global_state)
            sample_latency(bundle, texts, requests=per_pass, into=samples[id(run)])
    for run, ckpt in loaded:
        figures = summarize(
            samples[id(run)], bundle, warmup=DEFAULT_WARMUP, batch_size=DEFAULT_BATCH
        )
        run["latency"] = {**figures, "model_version": ckpt.version, "method": "interleaved"}
        run["latency_ms_per_flow"] = figures["batch1_median_ms"]
        run["flows_per_min"] = figures["flows_per_min"]


def collect_run(
    exp: ExperimentSettings, strategy: str, dep: Deployment, *, wall_s: float
) -> dict[str, Any]:
    server = read_metrics(dep.server_metrics)  # files of either schema
    clients = [client_summary(n, read_metrics(p)) for n, p in dep.client_metrics.items()]
    hist = history(server)
    evaluated = [h for h in hist if h["central"]]
    if not hist or hist[-1]["version"] < exp.rounds or not evaluated:
        reached = hist[-1]["version"] if hist else 0
        raise IncompleteRun(
            f"the server exited at version {reached} of {exp.rounds} "
            f"(evaluated versions: {len(evaluated)}); see {dep.fleet.server.log_path}"
        )
    finals = [c["final_eval"] for c in clients if c["final_eval"]]
    updates = _kind(server, "update")
    return run_record(
        strategy,
        evaluated[-1]["central"],
        final_latency(exp, dep),
        energy_block(clients, dep.fleet.cpu_seconds()),
        wall_s=wall_s,
        clients_avg=average_metrics(finals) if finals else None,
        rounds=hist[-1]["version"] if hist else 0,
        uploads=len(updates),
        bytes_up=sum(int(u.get("bytes") or 0) for u in updates),
        bytes_down=sum(int(c["bytes_down"] or 0) for c in clients),
        history=hist,
        privacy=privacy_record(_kind(server, "aggregation")),
        upload_events=upload_events(server),
        feedback=[dict(r) for r in _kind(server, "feedback")],  # [] unless --adaptive (GSFS)
        # what the clients put on the wire (bytes_up is the server's count of decoded tensor
        # bytes, the same for raw but not for a compressed upload)
        bytes_up_by_encoding=_sum_counts(c["bytes_up_by_encoding"] for c in clients),
        clients=clients,
        clients_reporting_final=len(finals),
        test_flows=_samples(server),
        detection=final_detection(exp, dep),
        detection_selected=selected_detection(exp, dep),
        seed=exp.seed,
        split=exp.split,
        cpu_seconds=dep.fleet.cpu_seconds(),
        exit_codes=dep.fleet.exit_codes(),
    )


def _samples(server: Sequence[Record]) -> int:
    evaluated = [a["evaluation"] for a in _kind(server, "aggregation") if a.get("evaluation")]
    return int(evaluated[-1].get("samples", 0)) if evaluated else 0


def _sum_counts(parts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0) + value
    return total
