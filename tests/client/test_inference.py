"""Live classification: a Zeek conn.log (with its header, a malformed line), and --follow of
a growing log through the real CLI process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w

from fedllm_client.inference import run_classify, zeek_lines
from fedllm_client.runtime import ClientRuntime
from fedllm_client.settings import ClientSettings

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
    rt = ClientRuntime.open(settings)
    rt.apply_global(0, rt.model.state(), gsfs=False)
    rt.train_chunk(5)
    rt.persist()
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


def test_follow_mode_classifies_appended_flows_until_interrupted(
    trained: ClientSettings, tmp_path: Path
) -> None:
    config = tmp_path / "client.toml"
    config.write_text(tomli_w.dumps(trained.model_dump(mode="json", exclude_none=True)))
    log, out = tmp_path / "conn.log", tmp_path / "predictions.jsonl"
    log.write_text(HEADER)
    argv = [sys.executable, "-m", "fedllm_client.cli", "classify", "--config", str(config)]
    argv += ["--input", str(log), "--output", str(out), "--follow"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        with log.open("a") as fh:
            fh.writelines(FLOWS)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (
            not out.exists() or len(out.read_text().splitlines()) < 2
        ):
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    summary = json.loads(err.strip().splitlines()[-1])
    assert (proc.returncode, summary["flows"]) == (0, 2)
