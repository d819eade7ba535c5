"""report.md's detection section: every model beside the reference detectors, on one split.

It states the split first (a random split of IoT-23 measures memory of each capture; only the
capture split measures detection on traffic never seen), marks the all-benign floor, and says
plainly when two figures lie within each other's capture-bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Report = Mapping[str, Any]

_HEADER = (
    "| detector | macro-F1 [95% CI] | malicious P / R / F1 | capture-mean acc | "
    "distinct-text acc | predicted malicious |"
)


def _ci(report: Report, key: str) -> str:
    low, high = report["ci95"][key]
    return f"{report[key]:.4f} [{low:.3f}, {high:.3f}]"


def _row(name: str, r: Report) -> str:
    m = r["malicious"]
    return (
        f"| {name} | {_ci(r, 'f1_macro')} | {m['precision']:.3f} / {m['recall']:.3f} / "
        f"{m['f1']:.3f} | {r['capture_mean_accuracy']:.4f} | {r['distinct']['accuracy']:.4f} "
        f"({r['distinct']['items']}) | {r['predicted_malicious_share']:.3f} |"
    )


def _split_line(config: Mapping[str, Any], report: Report) -> str:
    captures = ", ".join(sorted(report["per_capture"]))
    if config.get("split") == "random":
        return (
            "Split: **random** (stratified 70/20/10 over flows; every test capture was also "
            "trained on, so these figures measure memory as much as detection)."
        )
    return (
        f"Split: **capture** (seed {config.get('seed')}): {report['flows']} flows of "
        f"{report['captures']} captures never used in training or validation: {captures}."
    )


def _noise_line(models: Sequence[tuple[str, Report]], refs: Mapping[str, Report]) -> str:
    if not models or "lightgbm_fields" not in refs:
        return ""
    name, best = max(models, key=lambda item: item[1]["f1_macro"])
    tree = refs["lightgbm_fields"]
    low, high = tree["ci95"]["f1_macro"]
    verdict = (
        "within the noise of which captures were tested"
        if low <= best["f1_macro"] <= high
        else ("above" if best["f1_macro"] > high else "below")
        + " LightGBM's capture-bootstrap interval"
    )
    return (
        f"Best model {name}: macro-F1 {best['f1_macro']:.4f} against LightGBM "
        f"{tree['f1_macro']:.4f}: {verdict}."
    )


def detection_section(
    config: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], refs: Mapping[str, Report]
) -> list[str]:
    """Markdown lines; empty when no run carries a detection report."""
    models = [(r["strategy"], r["detection"]) for r in runs if r.get("detection")]
    models += [
        (f"{r['strategy']}, best on validation (v{r['detection_selected']['version']})", sel)
        for r in runs
        if (sel := r.get("detection_selected"))
    ]
    if not models and not refs:
        return []
    first = models[0][1] if models else next(iter(refs.values()))
    lines = ["## Detection on the test split", "", _split_line(config, first), "", _HEADER]
    lines.append("|---|---|---|---|---|---|")
    for name, r in models:
        lines.append(_row(name, r))
        if "val_threshold" in r:
            tuned = r["val_threshold"]
            lines.append(_row(f"{name}, threshold {tuned['threshold']:.3f} from validation", tuned))
    lines += [_row(f"reference: {name}", r) for name, r in refs.items()]
    floor = refs.get("majority")
    lines += [""]
    if floor:
        lines.append(
            f"All-benign floor (majority class): macro-F1 {floor['f1_macro']:.4f}, "
            f"accuracy {floor['accuracy']:.4f}. Distinct-text accuracy counts each distinct "
            "(text, class) once; CIs resample whole test captures."
        )
    noise = _noise_line(models, refs)
    return [*lines, *([noise] if noise else []), ""]
