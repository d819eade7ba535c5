"""`fedllm bench models`: the paper's Table II for the models this machine can load.

Every model is fine-tuned centrally on the experiment's training split with the same budget
(optimizer steps x batch size), then scored and timed on the same test split. Offline default
list: the embedded MiniLM and small randomly initialised BERT, OPT and GPT-2 configurations
(their numbers say what the architecture learns from scratch within the budget, not what the
pretrained model would reach). Hub ids are added when the Hugging Face hub answers; a model that
cannot be loaded is reported as skipped with the reason, never silently dropped.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

from fedllm_core.embedded import EMBEDDED_MINILM
from fedllm_core.errors import FedllmError
from fedllm_experiment import paper
from fedllm_experiment.baseline import Split, experiment_model, finetune, train_settings
from fedllm_experiment.configs import ExperimentSettings

RANDOM_PREFIX = "random:"
OFFLINE_MODELS = (EMBEDDED_MINILM, "random:bert", "random:opt", "random:gpt2")
HUB_MODELS = ("prajjwal1/bert-tiny", "facebook/opt-125m", "openai-community/gpt2")


def hub_reachable(timeout_s: float = 2.0) -> bool:
    """True when the hub's endpoint accepts a TCP connection (and offline mode is not set)."""
    import os

    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"):
        return False
    try:
        from huggingface_hub.constants import ENDPOINT

        host = urlparse(ENDPOINT).hostname or ""
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except (OSError, ImportError):
        return False


def default_models() -> tuple[str, ...]:
    return OFFLINE_MODELS + (HUB_MODELS if hub_reachable() else ())


def model_overrides(spec: str) -> dict[str, Any]:
    """ModelSettings fields for a list entry: ``random:<type>`` or a name / path / hub id."""
    if spec.startswith(RANDOM_PREFIX):
        return {"name": spec[len(RANDOM_PREFIX) :], "random_init": True}
    return {"name": spec, "random_init": False}


def bench_one(exp: ExperimentSettings, split: Split, spec: str, steps: int) -> dict[str, Any]:
    model = experiment_model(exp, **model_overrides(spec))
    train = train_settings(exp)
    return finetune(
        model,
        split,
        train,
        steps=steps,
        seed=exp.seed,
        latency_requests=exp.latency_requests,
        name=spec,
    )


def bench_models(
    exp: ExperimentSettings, split: Split, specs: Sequence[str], steps: int
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Run records for the models that loaded, and (model, reason) for those that did not."""
    runs, skipped = [], []
    for spec in specs:
        print(f"[{spec}] fine-tuning {steps} steps ...", flush=True)
        try:
            runs.append(bench_one(exp, split, spec, steps))
        except (FedllmError, OSError, ValueError) as exc:
            print(f"[{spec}] skipped: {exc}", flush=True)
            skipped.append({"model": spec, "reason": str(exc).splitlines()[0]})
    return runs, skipped


def _energy(run: Mapping[str, Any]) -> str:
    e = run["energy"]
    if e.get("joules") is not None:
        return f"{e['joules']:.0f} J"
    return f"{e.get('cpu_seconds', 0):.0f} CPU s"


def render_bench_report(doc: Mapping[str, Any]) -> str:
    cfg = doc["config"]
    lines = [
        "# fedllm bench models (the paper's Table II layout)",
        "",
        f"Equal budget: {cfg['bench_steps']} optimizer steps x batch {cfg['batch_size']} on "
        f"{cfg.get('train_flows', '?')} training flows; scored on {cfg.get('test_flows', '?')} "
        f"test flows; {cfg['machine']['cpu_count']} CPU cores, latency with torch threads as "
        "recorded per run.",
        "",
        "| Model | Precision | Recall | F1 (macro) | Accuracy | latency ms/flow (p95) "
        "| flows/min | energy | trainable params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in doc["runs"]:
        c, lat = run["central"], run["latency"]
        lines.append(
            f"| {run['strategy']} | {c['precision']:.4f} | {c['recall']:.4f} "
            f"| {c['f1_macro']:.4f} | {c['accuracy']:.4f} | {run['latency_ms_per_flow']:.2f} "
            f"({lat['batch1_p95_ms']:.2f}) | {run['flows_per_min']:.0f} | {_energy(run)} "
            f"| {run.get('trainable_params', 0):,} |"
        )
    lines += ["", "Skipped: " + (", ".join(_skips(doc)) or "none"), "", *_paper_rows()]
    return "\n".join(lines) + "\n"


def _skips(doc: Mapping[str, Any]) -> list[str]:
    return [f"{s['model']} ({s['reason']})" for s in doc.get("skipped", [])]


def _paper_rows() -> list[str]:
    lines = [
        "The paper's own Table II (GPUs: A100 / RTX 3080Ti; full models, 33,602 training flows):",
        "",
        "| Model | Precision | Recall | F1 | Accuracy | latency ms | req/min |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (p, r, f1, acc, ms, rpm) in paper.TABLE2.items():
        lines.append(f"| {name} | {p} | {r} | {f1} | {acc} | {ms} | {rpm} |")
    return lines
