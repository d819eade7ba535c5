"""How much the reference detectors lean on capture fingerprints: leave-one-capture-out.

Each of the shipped IoT-23 captures in turn is the test set (``holdout_captures``); all the
others train the reference detectors (the capture split's validation fold is added back to
training: nothing here selects a model). The test predictions of all folds are pooled into
one detection report per detector over all 87,196 flows. LightGBM on the raw fields (exact
ports and counts) against LightGBM on the words of the prompt text (compact@1 writes exact
values, compact@2 services and log2 bins) shows what the coarse template buys on traffic
never seen; the lookup table and the "tcp -> malicious" rule say what needs no learning.

    python bench/shortcuts.py [--templates compact@1,compact@2] [--max-rows N]

Last line of output: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from typing import Any

import numpy as np

from fedllm_core.data import DataSettings, PreparedData, Splits, load_flows, prepare_data
from fedllm_core.detection import detection_report
from fedllm_core.prompts import get_template
from fedllm_experiment.references import REFERENCES, ReferenceInputs

DETECTORS = ("tcp_rule", "lookup", "lightgbm_fields", "lightgbm_text")


def _all_others_train(prepared: PreparedData) -> PreparedData:
    rows = prepared.splits
    train = np.sort(np.concatenate([rows.train, rows.val]))
    return replace(prepared, splits=Splits(train=train, val=rows.val[:0], test=rows.test))


def _pooled(template: str, max_rows: int | None) -> dict[str, dict[str, Any]]:
    flows, _ = load_flows()
    captures = sorted(set(flows.captures.tolist()))
    preds: dict[str, list[np.ndarray]] = {name: [] for name in DETECTORS}
    truth, caps, texts = [], [], []
    for capture in captures:
        data = DataSettings(split="capture", holdout_captures=(capture,), max_rows=max_rows)
        x = ReferenceInputs(_all_others_train(prepare_data(data)), get_template(template))
        for name in DETECTORS:
            preds[name].append(REFERENCES[name](x))
        truth.append(x.y_test)
        caps.append(x.prepared.flows.captures[x.prepared.splits.test])
        texts += x.test_texts
        print(f"  {template}: {capture} done ({len(x.y_test)} flows)", flush=True)
    y, c = np.concatenate(truth), np.concatenate(caps)
    names = ("Benign", "Malicious")
    return {
        name: detection_report(y, np.concatenate(p), names, captures=c, texts=texts)
        for name, p in preds.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--templates", default="compact@1,compact@2")
    parser.add_argument("--max-rows", type=int, default=None, help="training rows per fold")
    args = parser.parse_args()
    start = time.monotonic()
    out: dict[str, Any] = {}
    for template in args.templates.split(","):
        reports = _pooled(template, args.max_rows)
        out[template] = {
            name: {
                "f1_macro": round(r["f1_macro"], 4),
                "accuracy": round(r["accuracy"], 4),
                "capture_mean_accuracy": round(r["capture_mean_accuracy"], 4),
                "distinct_accuracy": round(r["distinct"]["accuracy"], 4),
            }
            for name, r in reports.items()
        }
        for name, figures in out[template].items():
            print(f"{template:<10} {name:<16} {json.dumps(figures)}")
    wall = round(time.monotonic() - start, 1)
    print(json.dumps({"bench": "shortcuts", "leave_one_capture_out": out, "wall_s": wall}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
