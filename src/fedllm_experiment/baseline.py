"""Reference points without federation, on exactly the experiment's data split.

- ``central``: the same model fine-tuned on the union of every client's training rows with the
  federation's total budget (clients x rounds x local_steps optimizer steps at the same batch
  size: the same number of training samples seen). The upper bound federation should approach.
- ``gbt``: LightGBM on the flow fields (``gbt.py``), what a practitioner would try first.

Both are scored on the same held-out test split as the federation's central model and produce
results.json run records (``clients_avg`` null: there are no clients).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedllm_core.data import (
    DataSettings,
    PreparedData,
    load_eval_data,
    prepare_data,
    template_for,
)
from fedllm_core.energy import EnergyMeter
from fedllm_core.model import ModelSettings, build_model
from fedllm_core.prompts import render
from fedllm_core.training import LocalTrainer, TrainSettings, encode_split, evaluate
from fedllm_experiment import gbt
from fedllm_experiment.configs import ExperimentSettings
from fedllm_experiment.deploy import daemon_data, shared_sections
from fedllm_experiment.latency import measure_latency
from fedllm_experiment.results import run_record


@dataclass(frozen=True)
class Split:
    """Train and test data of the experiment, as every run sees them.

    ``test_texts``/``test_labels`` come from ``load_eval_data``: exactly the flows the server
    scores the global model on (``test_max`` applied). GBT reads the test rows' fields instead;
    they are the same flows unless ``test_max`` caps the split (not with the defaults), in which
    case GBT is scored on the whole test split and its ``test_flows`` says so.
    """

    prepared: PreparedData
    train_texts: list[str]
    test_texts: list[str]  # distinct test items (load_eval_data) ...
    test_labels: np.ndarray
    test_weights: np.ndarray  # ... and the flows each stands for

    @property
    def train_labels(self) -> np.ndarray:
        return self.prepared.labels[self.prepared.splits.train]


def experiment_data(exp: ExperimentSettings) -> DataSettings:
    """The [data] section the daemons get, minus the per-client partition index."""
    return daemon_data(exp)


def load_split(data: DataSettings) -> Split:
    prepared = prepare_data(data)
    template = template_for(data)
    scored = load_eval_data(data, template)
    return Split(
        prepared=prepared,
        train_texts=render(template, prepared.flows, prepared.splits.train),
        test_texts=scored.texts,
        test_labels=np.asarray(scored.labels),
        test_weights=np.asarray(scored.weights),
    )


def experiment_model(exp: ExperimentSettings, **overrides: Any) -> ModelSettings:
    section = {**shared_sections(exp)["model"], **exp.shared.get("model", {}), **overrides}
    return ModelSettings.model_validate(section)


def train_settings(exp: ExperimentSettings) -> TrainSettings:
    """The [train] section the clients get, so central training optimises the same way."""
    section = {"batch_size": exp.batch_size, "lr": exp.lr, "seed": exp.seed}
    return TrainSettings.model_validate({**section, **exp.client.get("train", {})})


def finetune(
    model: ModelSettings,
    split: Split,
    train: TrainSettings,
    *,
    steps: int,
    seed: int,
    latency_requests: int,
    name: str,
) -> dict[str, Any]:
    """Fine-tune ``model`` for ``steps`` optimizer steps, score it, time it: one run record."""
    bundle = build_model(model, split.prepared.label_names, seed=seed)
    tok, max_len = bundle.tokenizer, model.max_length
    train_split = encode_split(tok, split.train_texts, split.train_labels, max_len)
    test_split = encode_split(
        tok, split.test_texts, split.test_labels, max_len, weights=split.test_weights
    )
    trainer = LocalTrainer(bundle, train_split, train, seed=seed)
    meter = EnergyMeter(bundle.device)
    start = time.perf_counter()
    losses = [trainer.step().loss for _ in range(steps)]
    wall = time.perf_counter() - start
    energy = meter.read().to_dict()
    metrics = evaluate(bundle, test_split, train.eval_batch_size)
    latency = measure_latency(bundle, split.test_texts, requests=latency_requests)
    return run_record(
        name,
        metrics,
        latency,
        energy,
        wall_s=wall,
        model=model.name,
        train_steps=steps,
        train_flows=len(train_split),
        test_flows=int(split.test_weights.sum()),
        final_loss=float(np.mean(losses[-10:])) if losses else None,
        trainable_params=sum(p.numel() for p in bundle.model.parameters() if p.requires_grad),
    )


def central_baseline(exp: ExperimentSettings, split: Split) -> dict[str, Any]:
    """The federation's model and total budget, trained in one place."""
    train = train_settings(exp)
    steps = exp.clients * exp.budget_steps
    return finetune(
        experiment_model(exp),
        split,
        train,
        steps=steps,
        seed=exp.seed,
        latency_requests=exp.latency_requests,
        name="central",
    )


def gbt_baseline(exp: ExperimentSettings, split: Split) -> dict[str, Any]:
    prepared = split.prepared
    flows, rows = prepared.flows, prepared.splits
    start = time.perf_counter()
    meter = EnergyMeter("cpu")
    scored = gbt.train_and_score(
        flows.take(rows.train),
        split.train_labels,
        flows.take(rows.test),
        prepared.labels[rows.test],
        split.prepared.label_names,
        seed=exp.seed,
    )
    energy: Mapping[str, Any] = meter.read().to_dict()
    return run_record(
        "gbt",
        scored["metrics"],
        scored["latency"],
        energy,
        wall_s=time.perf_counter() - start,
        model="lightgbm",
        fit_s=scored["fit_s"],
        params=scored["params"],
        train_flows=len(rows.train),
        test_flows=len(rows.test),
    )
