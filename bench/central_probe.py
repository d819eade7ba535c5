"""Why the federated model does not generalise: train it centrally, score unseen captures.

The same code path as a client (``build_model`` from the client's model settings,
``LocalTrainer`` from ``fedllm_core.training``) trains one model on the training captures of
the capture split (all of them, as if one client held every federated client's rows), then
``detection_report`` scores every flow of the test captures. A run is minutes, not the ~6 min
of a federation, so hypotheses can be tested one at a time; each variant changes one thing
from ``base`` (the experiment's defaults: lr 3e-3, batch 16, LoRA r 8 on query/value, head
trained, uniform sampling of rows).

    python bench/central_probe.py [--seeds 0,2] [--steps 160] [--variants base,balanced,...]

Last line of output: one JSON object (macro-F1 and distinct-text accuracy per variant/seed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np
import torch

from fedllm_core.data import DataSettings, load_eval_data, prepare_data
from fedllm_core.data.loader import template_for
from fedllm_core.detection import detection_report
from fedllm_core.model import ModelSettings, build_model
from fedllm_core.prompts import get_template, render
from fedllm_core.training import LocalTrainer, TrainSettings, encode_split, predict_logits

# name -> overrides of (model settings, train settings, probe options)
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "balanced": {"sampling": "class"},
    "capture": {"sampling": "capture"},
    "capture_class": {"sampling": "capture_class"},
    "lr1e-3": {"train": {"lr": 1e-3}},
    "lr1e-2": {"train": {"lr": 1e-2}},
    "steps_x3": {"steps_factor": 3},
    "head_only": {"model": {"lora_r": 1, "target_modules": ("__none__",)}},
    "lora_qkvd": {"model": {"target_modules": ("query", "key", "value", "dense")}},
    "lora_r32": {"model": {"lora_r": 32, "lora_alpha": 64}},
    "compact1": {"template": "compact@1"},
    "verbose": {"template": "verbose"},
}


def _sample_weights(labels: np.ndarray, captures: np.ndarray, how: str) -> np.ndarray | None:
    """Per-row draw probability so each class / capture / (capture, class) weighs the same."""
    if how == "rows":
        return None
    if how == "class":
        keys = labels.astype(str)
    elif how == "capture":
        keys = captures.astype(str)
    else:
        keys = np.char.add(np.char.add(captures.astype(str), "|"), labels.astype(str))
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse]
    return w / w.sum()


def _run(seed: int, name: str, steps: int, threads: int) -> dict[str, Any]:
    spec = VARIANTS[name]
    template = spec.get("template", "compact@2")
    data = DataSettings(split="capture", seed=seed, max_rows=6000, template=template)
    prepared = prepare_data(data)
    chosen = get_template(template) if "template" in spec else template_for(data)
    train_rows = prepared.splits.train
    labels = prepared.labels[train_rows]
    captures = prepared.flows.captures[train_rows]
    probs = _sample_weights(labels, captures, spec.get("sampling", "rows"))
    total = steps * int(spec.get("steps_factor", 1))
    batch = int(spec.get("train", {}).get("batch_size", 16))
    if probs is not None:  # a fixed draw with replacement: the trainer's epochs then walk it
        draw = np.random.default_rng(seed).choice(len(train_rows), total * batch, p=probs)
        train_rows, labels = train_rows[draw], labels[draw]
    model_kw: dict[str, Any] = {"torch_threads": threads, "device": "cpu", "dtype": "float32"}
    model_kw.update(spec.get("model", {}))
    head_only = model_kw.get("target_modules") == ("__none__",)
    if head_only:
        model_kw["target_modules"] = None
    bundle = build_model(ModelSettings(**model_kw), prepared.label_names, seed=seed)
    if head_only:  # freeze the LoRA factors: only the classifier head learns
        for pname, param in bundle.model.named_parameters():
            if "lora_" in pname:
                param.requires_grad_(False)
    texts = render(chosen, prepared.flows, train_rows)
    encoded = encode_split(bundle.tokenizer, texts, labels, bundle.settings.max_length)
    settings = TrainSettings(**{"lr": 3e-3, "batch_size": batch, **spec.get("train", {})})
    trainer = LocalTrainer(bundle, encoded, settings, seed=seed)
    start = time.monotonic()
    losses = [trainer.step().loss for _ in range(total)]
    train_s = time.monotonic() - start
    ev = load_eval_data(data, chosen)
    split = encode_split(bundle.tokenizer, ev.texts, ev.labels, bundle.settings.max_length)
    pred = predict_logits(bundle, split).argmax(axis=1)
    report = detection_report(
        ev.labels, pred, ev.label_names, captures=ev.captures, texts=ev.texts, weights=ev.weights
    )
    return {
        "f1_macro": round(report["f1_macro"], 4),
        "distinct_accuracy": round(report["distinct"]["accuracy"], 4),
        "pred_mal": round(report["predicted_malicious_share"], 3),
        "train_mal": round(float(labels.mean()), 3),
        "last_loss": round(statistics.fmean(losses[-20:]), 3),
        "train_s": round(train_s, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,2")
    parser.add_argument("--steps", type=int, default=160, help="optimizer steps (batch 16)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    out: dict[str, dict[str, Any]] = {}
    print(f"{'variant':<14} seed macro-F1 distinct pred-mal train-mal loss   train_s", flush=True)
    for name in args.variants.split(","):
        out[name] = {}
        for seed in seeds:
            r = _run(seed, name, args.steps, args.threads)
            out[name][str(seed)] = r
            print(
                f"{name:<14} {seed:>4} {r['f1_macro']:.4f}   {r['distinct_accuracy']:.4f}   "
                f"{r['pred_mal']:.3f}    {r['train_mal']:.3f}     {r['last_loss']:.3f}  "
                f"{r['train_s']}",
                flush=True,
            )
    print(json.dumps({"bench": "central_probe", "steps": args.steps, "results": out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
