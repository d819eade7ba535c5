"""Live classification: a Zeek conn.log (with its header, a malformed line), alerts-only
output, batching, and --follow of a growing log through the real CLI process ended by SIGTERM
or SIGINT (the summary must still come)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
import torch

from fedllm_client import cli
from fedllm_client.inference import FlowClassifier, run_classify, zeek_lines
from fedllm_client.learner import Learner
from fedllm_client.settings import ClientSettings
from fedllm_core.training import encode_split, predict_logits

from .conftest import tiny_settings

HEADER = (
    "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n"
    "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\t"
    "orig_bytes\tresp_bytes\tconn_state\tlocal_orig\tlocal_resp\tmissed_bytes\thistory\t"
    "orig_pkts\torig_ip_bytes\tresp_pkts\tresp_ip_bytes\ttunnel_parents   label   detailed-label\n"
)
FLOWS = [
    "1545403816.870900\tCZVKY732XLLAUm01ci\t192.168.1.1\t40831\t192.168.1.195\t22\ttcp\t-\t"
    "502.919185\t952\t17192\tSF\t-\t-\t0\tDdAtaFf\t200\t11444\t184\t28048\t-   Benign   -\n",
    "1545404132.353979\tCnkuiE1ejnVWSFRkzg\t192.168.1.195\t48986\t185.244.25.235\t6667\ttcp\t-\t"
    "3.107733\t0\t0\tS0\t-\t-\t0\tS\t3\t180\t0\t0\t-   Malicious   C&C\n",
]
MALFORMED = "1545404132.353979\tonly\tthree fields\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> ClientSettings:
    settings = tiny_settings(tmp_path_factory.mktemp("classify") / "state")
    learner = Learner.open(settings)
    learner.apply_global(0, learner.model.state(), gsfs=False)
    learner.train_chunk(5)
    learner.persist()
    return settings


def test_classifies_every_flow_and_reports_malformed_lines(
    trained: ClientSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "conn.log"
    log.write_text(HEADER + FLOWS[0] + MALFORMED + FLOWS[1])
    out = tmp_path / "predictions.jsonl"
    assert run_classify(trained, log, output=out) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert [r["true_label"] for r in rows] == ["Benign", "Malicious"]
    assert (summary["flows"], summary["malformed"]) == (2, 1)


def test_follow_yields_a_line_only_when_it_is_complete(tmp_path: Path) -> None:
    log = tmp_path / "conn.log"
    log.write_text("first\nhalf")
    lines = zeek_lines(log, follow=True, poll_s=0.01)
    assert next(lines) == (1, "first\n")
    assert next(lines) == (0, "")  # idle: "half" is not a line yet
    with log.open("a") as fh:
        fh.write(" done\n")
    assert next(lines) == (2, "half done\n")


def _run(settings: ClientSettings, log: Path, out: Path, **inference: object) -> None:
    """Classify ``log`` in-process with some [inference] keys changed."""
    changed = settings.inference.model_copy(update=inference)
    assert run_classify(settings.model_copy(update={"inference": changed}), log, output=out) == 0


def _summary(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    return dict(json.loads(capsys.readouterr().err.strip().splitlines()[-1]))


def test_every_flow_is_an_ecs_document_with_the_model_verdict(
    trained: ClientSettings, tmp_path: Path
) -> None:
    log, out = tmp_path / "conn.log", tmp_path / "out.jsonl"
    log.write_text(HEADER + FLOWS[0] + FLOWS[1])
    _run(trained, log, out, threshold=0.2)
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = {d["event"]["kind"] for d in docs}
    assert kinds <= {"alert", "event"} and [d["fedllm"]["threshold"] for d in docs] == [0.2, 0.2]


def test_alerts_only_writes_no_document_for_a_flow_below_the_threshold(
    trained: ClientSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, out = tmp_path / "conn.log", tmp_path / "alerts.jsonl"
    log.write_text(HEADER + FLOWS[0] + FLOWS[1])
    _run(trained, log, out, threshold=0.999999, alerts_only=True)
    summary = _summary(capsys)
    assert (out.read_text(), summary["flows"], summary["alerts"]) == ("", 2, 0)


def test_alerts_only_writes_every_alert(
    trained: ClientSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, out = tmp_path / "conn.log", tmp_path / "alerts.jsonl"
    log.write_text(HEADER + FLOWS[0] + FLOWS[1])
    _run(trained, log, out, threshold=1e-6, alerts_only=True)
    kinds = [json.loads(line)["event"]["kind"] for line in out.read_text().splitlines()]
    assert (kinds, _summary(capsys)["alerts"]) == (["alert", "alert"], 2)


def test_flows_are_classified_in_batches_of_at_most_batch_size(
    trained: ClientSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, out = tmp_path / "conn.log", tmp_path / "out.jsonl"
    log.write_text(HEADER + "".join(FLOWS * 5))
    _run(trained, log, out, batch_size=4, max_wait_ms=600_000)
    summary = _summary(capsys)
    assert (summary["flows"], summary["batches"], summary["largest_batch"]) == (10, 3, 4)


def test_a_repeated_prompt_text_costs_no_second_forward_pass(
    trained: ClientSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, out = tmp_path / "conn.log", tmp_path / "out.jsonl"
    log.write_text(HEADER + "".join(FLOWS * 5))  # 10 flows, 2 distinct texts
    _run(trained, log, out, batch_size=4, max_wait_ms=600_000)
    assert _summary(capsys)["cache_hits"] == 8


def test_cached_and_fresh_verdicts_agree(trained: ClientSettings, tmp_path: Path) -> None:
    log = tmp_path / "conn.log"
    log.write_text(HEADER + "".join(FLOWS * 2))
    cached, fresh = tmp_path / "cached.jsonl", tmp_path / "fresh.jsonl"
    _run(trained, log, cached, batch_size=1)
    _run(trained, log, fresh, batch_size=1, cache_size=0)
    p = [
        [json.loads(line)["fedllm"]["p"] for line in f.read_text().splitlines()]
        for f in (cached, fresh)
    ]
    assert p[0] == p[1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_follow_mode_batches_what_arrived_and_summarises_on_a_signal(
    trained: ClientSettings, tmp_path: Path, sig: signal.Signals
) -> None:
    config = tmp_path / "client.toml"
    config.write_text(tomli_w.dumps(trained.model_dump(mode="json", exclude_none=True)))
    log, out = tmp_path / "conn.log", tmp_path / "predictions.jsonl"
    log.write_text(HEADER + "".join(FLOWS * 5))  # all there before the reader starts
    argv = [sys.executable, "-m", "fedllm_client.cli", "classify", "--config", str(config)]
    argv += ["--input", str(log), "--output", str(out), "--follow", "--batch-size", "4"]
    env = {**os.environ, "FEDLLM_CLIENT__INFERENCE__MAX_WAIT_MS": "600000"}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (
            not out.exists() or len(out.read_text().splitlines()) < 10
        ):
            time.sleep(0.2)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    summary = json.loads(err.strip().splitlines()[-1])
    got = (proc.returncode, summary["flows"], summary["batches"], summary["stopped_by"])
    assert got == (0, 10, 3, sig.name)


def test_classify_help_is_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["classify", "--help"])
    assert "--alerts-only" in capsys.readouterr().out


def test_the_served_model_has_the_adapter_folded_in_and_answers_as_the_adapter_model(
    trained: ClientSettings,
) -> None:
    # float32 whatever the CPU: on an AMX machine "auto" picks bfloat16, which is served
    # unfolded (the test below)
    classifier = serving_classifier(trained, "float32")
    served = dict(classifier.serving.model.named_parameters())
    adapter = dict(classifier.bundle.model.named_parameters())
    layer = "bert.encoder.layer.0.attention.self.query"
    texts = ["tcp 22 SF 502.9 s", "tcp 6667 S0 3.1 s", "udp 53 dns"]
    split = encode_split(classifier.bundle.tokenizer, texts, None, trained.model.max_length)
    expected = torch.softmax(torch.from_numpy(predict_logits(classifier.bundle, split)), dim=1)
    assert not any("lora_" in name for name in served)
    assert not torch.equal(  # the fold moved the weight
        served[f"{layer}.weight"], adapter[f"base_model.model.{layer}.base_layer.weight"]
    )
    np.testing.assert_allclose(classifier.probabilities(texts), expected.numpy(), atol=1e-5)


def test_a_bfloat16_model_is_served_unfolded_so_its_answers_are_not_rounded(
    trained: ClientSettings,
) -> None:
    classifier = serving_classifier(trained, "bfloat16")
    assert classifier.serving.model is classifier.bundle.model


def serving_classifier(trained: ClientSettings, dtype: str) -> FlowClassifier:
    local = trained.inference.model_copy(update={"which": "local"})  # trained: B ≠ 0
    model = trained.model.model_copy(update={"dtype": dtype})
    return FlowClassifier(trained.model_copy(update={"inference": local, "model": model}))


SCAN = [  # one host sends a SYN to three addresses on port 23 within 2 s, then a late flow
    f"{1545404000 + t:.6f}\tC{i}\t192.168.1.77\t4000{i}\t10.0.0.{i}\t23\ttcp\t-\t-\t-\t-\t"
    "S0\t-\t-\t0\tS\t1\t60\t0\t0\t-   Malicious   PartOfAHorizontalPortScan\n"
    for i, t in enumerate((0.0, 1.0, 2.0, 300.0))
]


def test_live_host_context_is_the_one_training_computes(tmp_path: Path) -> None:
    """A followed conn.log gets, line by line, the context the training pipeline computes
    for the same flows read as a table; a line without ts is classified on its own context."""
    from fedllm_client.inference import _records
    from fedllm_client.stats import Summary
    from fedllm_core.data import read_flow_file
    from fedllm_core.hostcontext import CONTEXT_FIELDS, with_context

    log = tmp_path / "conn.log"
    log.write_text(HEADER + "".join(SCAN) + "-" + SCAN[0][SCAN[0].index("\t") :])
    summary = Summary(("Benign", "Malicious"))
    live = [r for r in _records(log, False, 0.05, summary, 60.0) if r is not None]
    table = with_context(read_flow_file(log)[0], 60.0)
    expected = [{k: table.record(i)[k] for k in CONTEXT_FIELDS} for i in range(len(table))]
    assert [{k: r[k] for k in CONTEXT_FIELDS} for r in live] == expected
    # the 4th is 5 min later; the 5th has no ts: alone
    assert [r["host.destinations"] for r in live] == [1.0, 2.0, 3.0, 1.0, 1.0]
    assert summary.malformed == 0


def test_a_model_trained_with_host_context_classifies_a_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tiny_settings(tmp_path / "state", data={"host_context_s": 60.0})
    learner = Learner.open(settings)
    learner.apply_global(0, learner.model.state(), gsfs=False)
    learner.train_chunk(2)
    learner.persist()
    log, out = tmp_path / "conn.log", tmp_path / "predictions.jsonl"
    log.write_text(HEADER + "".join(FLOWS + SCAN))
    assert run_classify(settings, log, output=out) == 0
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert (summary["flows"], summary["malformed"]) == (6, 0)
    assert len(out.read_text().splitlines()) == 6
