"""Live classification throughput and latency of ``fedllm client classify`` (the default model).

The default (embedded) all-MiniLM-L6-v2 with its LoRA adapter, trained for a few steps on the
shipped IoT-23 flows by the client's own learner and persisted as a client state directory,
is what ``classify`` loads. The input is a real Zeek conn.log written from a seeded sample of
the shipped flows (every capture, in time order: a gateway watching many devices). Each
scenario is the real pipeline in-process (``ClassifyRun``: read line, parse, prompt text,
tokenise, model, ECS document, JSON line to a file), so a figure is what a deployed
classifier does, reading and writing included:

- ``replay``: the whole log, batches of 64 with the per-text result cache (how the daemon
  runs; traffic repeats, so most flows cost no forward pass)
- ``batched_model``: the first flows of the same log, batches of 64, cache off (a text
  repeated within one batch still goes through the model once)
- ``distinct_model``: one flow per distinct prompt text (the list three times over, so the
  figure is warm), batches of 64, cache off: every flow costs a forward pass (the
  model-bound floor, what traffic that never repeats would get)
- ``batch1``: cache off, one flow per forward pass: p50/p95 latency per flow (warm-up
  excluded), what a single flow waits when traffic is sparse

``classify`` serves a copy of the model with the LoRA factors folded into its weights; the
``merged`` line checks it answers as the adapter model does on every distinct text (largest
difference of a class probability, verdicts that differ).

Goal (issue 11): >= 1,000 flows/s batched on 2 cores. Last line: one JSON object.

    python bench/classify.py [--flows 20000] [--model-flows 3000] [--batch1-flows 300]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedllm_client.inference import ClassifyRun, FlowClassifier, StopSignal
from fedllm_client.learner import Learner
from fedllm_client.settings import ClientSettings
from fedllm_core.data import FlowTable, load_flows
from fedllm_core.data.table import NUMERIC_FIELDS, ZEEK_FIELDS
from fedllm_core.training import encode_split, predict_logits

GOAL_FLOWS_PER_S = 1000.0
TRAIN_STEPS = 20
DISTINCT_REPEATS = 3
INT_FIELDS = frozenset(NUMERIC_FIELDS) - {"ts", "duration"}


def client_state(root: Path) -> ClientSettings:
    """A client state directory holding the default model after a few local steps."""
    settings = ClientSettings.model_validate(
        {
            "insecure": True,
            "client_name": "bench",
            "state_dir": str(root / "state"),
            "data": {"max_rows": 4000},
            "final_eval": {"enabled": False},
        }
    )
    learner = Learner.open(settings)
    learner.apply_global(0, learner.model.state(), gsfs=False)
    learner.train_chunk(TRAIN_STEPS)
    learner.persist()
    return settings


def write_conn_log(path: Path, flows: FlowTable, rows: np.ndarray) -> None:
    """Zeek TSV (with its header) of ``rows``: what Zeek's conn.log looks like."""
    lines = ["#separator \\x09", "#path\tconn", "#fields\t" + "\t".join(ZEEK_FIELDS)]
    for i in rows:
        record = flows.record(int(i))
        lines.append("\t".join(_zeek_value(name, record[name]) for name in ZEEK_FIELDS))
    path.write_text("\n".join(lines) + "\n")


def _zeek_value(name: str, value: str | float) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return str(int(value)) if name in INT_FIELDS else f"{value:.6f}"
    return value or "-"


def sample_rows(flows: FlowTable, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(flows), size=min(count, len(flows)), replace=False)
    return rows[np.argsort(flows.numbers["ts"][rows], kind="stable")]


def distinct_rows(flows: FlowTable, rows: np.ndarray, run: ClassifyRun) -> np.ndarray:
    seen: dict[str, int] = {}
    for i in rows:
        seen.setdefault(run.classifier.template(flows.record(int(i))), int(i))
    return np.array(sorted(seen.values()))


def merged_parity(classifier: FlowClassifier, texts: list[str]) -> dict[str, Any]:
    """The served (merged) model against the adapter model it was folded from, on ``texts``."""
    bundle = classifier.bundle  # the adapter model, as trained
    split = encode_split(bundle.tokenizer, texts, None, bundle.settings.max_length)
    served = classifier.probabilities(texts)  # (N, C), through the merged copy
    adapter = torch.softmax(torch.from_numpy(predict_logits(bundle, split)), dim=1)
    adapter_np = adapter.numpy()  # (N, C)
    return {
        "merged": classifier.serving is not classifier.bundle,
        "texts": len(texts),
        "max_abs_diff_p": float(np.abs(served - adapter_np).max()),
        "argmax_differs": int((served.argmax(1) != adapter_np.argmax(1)).sum()),
    }


def scenario(settings: ClientSettings, log: Path, **inference: Any) -> dict[str, Any]:
    """One ``classify`` pass over ``log`` with some [inference] keys changed; its summary."""
    changed = settings.inference.model_copy(update=inference)
    run_settings = settings.model_copy(update={"inference": changed})
    with StopSignal() as stop:
        job = ClassifyRun(run_settings, io.StringIO(), alerts_only=False)
        job.summary.started = time.monotonic()  # model loading is not the pipeline's cost
        job.run(log, follow=False, stop=stop)
    return job.summary.as_dict(changed.warmup, str(job.classifier.bundle.device))


def _print(name: str, s: dict[str, Any]) -> None:
    lat = s["latency_ms"]
    print(
        f"{name:<15} {s['flows']:>6} flows  {s['flows_per_s']:>8.1f} flows/s  "
        f"model {s['model_flows_per_s']:>8.1f} flows/s  mean batch {s['mean_batch']:>5.1f}  "
        f"cache hits {s['cache_hits']:>6}  latency p50 {lat['median']} ms p95 {lat['p95']} ms",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=20000, help="flows in the replayed log")
    parser.add_argument("--model-flows", type=int, default=3000, help="flows with cache off")
    parser.add_argument("--batch1-flows", type=int, default=300, help="flows at batch 1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedllm-bench-classify-") as tmp:
        root = Path(tmp)
        settings = client_state(root)
        flows, _ = load_flows()
        rows = sample_rows(flows, args.flows, args.seed)
        logs = {name: root / f"{name}.log" for name in ("replay", "model", "distinct", "one")}
        write_conn_log(logs["replay"], flows, rows)
        write_conn_log(logs["model"], flows, rows[: args.model_flows])
        write_conn_log(logs["one"], flows, rows[: args.batch1_flows])
        probe = ClassifyRun(settings, io.StringIO(), alerts_only=False)
        distinct = distinct_rows(flows, rows, probe)
        texts = [probe.classifier.template(flows.record(int(i))) for i in distinct]
        parity = merged_parity(probe.classifier, texts)
        write_conn_log(logs["distinct"], flows, np.tile(distinct, DISTINCT_REPEATS))
        del probe
        results = {
            "replay": scenario(settings, logs["replay"], batch_size=64),
            "batched_model": scenario(settings, logs["model"], batch_size=64, cache_size=0),
            "distinct_model": scenario(settings, logs["distinct"], batch_size=64, cache_size=0),
            "batch1": scenario(settings, logs["one"], batch_size=1, cache_size=0, warmup=10),
        }
    print(
        f"default model, {torch.get_num_threads()} torch threads, "
        f"{len(distinct)} distinct texts in {len(rows)} flows"
    )
    for name, summary in results.items():
        _print(name, summary)
    print(f"merged          {parity}")
    figures = {name: _figures(s) for name, s in results.items()}
    batched = [(n, s) for n, s in results.items() if n != "batch1"]
    print(
        json.dumps(
            {
                "bench": "classify",
                "model": settings.model.name,
                "torch_threads": torch.get_num_threads(),
                "flows": len(rows),
                "distinct_texts": len(distinct),
                "results": figures,
                "merged_parity": parity,
                "goal_flows_per_s": GOAL_FLOWS_PER_S,
                "goal_met": {name: s["flows_per_s"] >= GOAL_FLOWS_PER_S for name, s in batched},
                "wall_s": round(time.monotonic() - started, 1),
            }
        )
    )
    return 0


def _figures(s: dict[str, Any]) -> dict[str, Any]:
    keys = ("flows", "flows_per_s", "model_flows_per_s", "mean_batch", "cache_hits")
    return {**{k: s[k] for k in keys}, "latency_ms": s["latency_ms"]}


if __name__ == "__main__":
    raise SystemExit(main())
