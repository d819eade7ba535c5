"""DataSettings -> a client's share and the server's test split, on the shipped IoT-23 copy."""

import numpy as np
import pytest
from pydantic import ValidationError

from fedllm_core.data import (
    OTHER,
    DataSettings,
    encode_labels,
    label_names,
    load_client_data,
    load_eval_data,
    load_flows,
    prepare_data,
)
from fedllm_core.data.loader import client_rows
from fedllm_core.prompts import get_template, render

FAST = {"max_rows": 4000, "num_partitions": 5}


def _all_clients(**kw: object) -> list[tuple[np.ndarray, np.ndarray]]:
    base = DataSettings(**{**FAST, **kw})  # type: ignore[arg-type]
    prepared = prepare_data(base)
    return [
        client_rows(prepared, base.model_copy(update={"partition_index": i}))
        for i in range(base.num_partitions)
    ]


def test_binary_label_set() -> None:
    assert label_names("binary") == ["Benign", "Malicious"]


def test_lowercase_honeypot_benign_is_benign() -> None:
    flows, _ = load_flows()
    honeypot = flows.take(np.flatnonzero(flows.strings["label"] == "benign"))
    assert set(encode_labels(honeypot, "binary", label_names("binary")).tolist()) == {0}


def test_multiclass_groups_rare_labels() -> None:
    flows, _ = load_flows()
    names = label_names("multiclass", flows, min_class_count=100)
    assert names == [
        "Benign",
        "Attack",
        "C&C",
        "C&C-HeartBeat-Attack",
        "DDoS",
        "Okiru",
        "PartOfAHorizontalPortScan",
        OTHER,
    ]


def test_grouping_threshold_is_configurable() -> None:
    flows, _ = load_flows()
    assert OTHER not in label_names("multiclass", flows, min_class_count=1)


def test_grouped_rows_get_the_other_class() -> None:
    flows, _ = load_flows()
    names = label_names("multiclass", flows, min_class_count=100)
    torii = flows.take(np.flatnonzero(flows.strings["detailed-label"] == "C&C-Torii"))
    assert set(encode_labels(torii, "multiclass", names).tolist()) == {names.index(OTHER)}


def test_max_rows_subsample_keeps_every_capture() -> None:
    prepared = prepare_data(DataSettings(max_rows=4000))
    assert (len(prepared.flows), len(set(prepared.flows.captures.tolist()))) == (4000, 19)


def test_split_is_disjoint() -> None:
    s = prepare_data(DataSettings(**FAST)).splits  # type: ignore[arg-type]
    assert len(np.intersect1d(s.train, s.val)) + len(np.intersect1d(s.train, s.test)) == 0


@pytest.mark.parametrize("scheme", ["capture", "iid", "dirichlet"])
def test_clients_share_train_and_validation_exactly_once(scheme: str) -> None:
    prepared = prepare_data(DataSettings(**FAST))  # type: ignore[arg-type]
    clients = _all_clients(partition=scheme)
    train = np.sort(np.concatenate([t for t, _ in clients]))
    val = np.sort(np.concatenate([v for _, v in clients]))
    assert np.array_equal(train, prepared.splits.train) and np.array_equal(val, prepared.splits.val)


@pytest.mark.parametrize("scheme", ["capture", "iid", "dirichlet"])
def test_every_client_has_train_and_validation(scheme: str) -> None:
    assert all(len(t) and len(v) for t, v in _all_clients(partition=scheme, dirichlet_alpha=0.1))


def test_clients_never_see_test_rows() -> None:
    test = prepare_data(DataSettings(**FAST)).splits.test  # type: ignore[arg-type]
    seen = np.concatenate([np.concatenate(c) for c in _all_clients()])
    assert len(np.intersect1d(seen, test)) == 0


def test_client_data_texts_match_labels_and_template() -> None:
    data = DataSettings(**FAST, partition_index=2, template="verbose")  # type: ignore[arg-type]
    client = load_client_data(data)
    prepared = prepare_data(data)
    train, _ = client_rows(prepared, data)
    assert client.train_texts == render(get_template("verbose"), prepared.flows, train)
    assert client.template.key == "verbose@1" and client.sample_count == len(train)


def test_client_data_is_reproducible() -> None:
    data = DataSettings(**FAST, partition_index=1)  # type: ignore[arg-type]
    a, b = load_client_data(data), load_client_data(data)
    assert a.train_texts == b.train_texts and np.array_equal(a.val_labels, b.val_labels)


def test_val_max_caps_the_validation_set() -> None:
    client = load_client_data(DataSettings(**FAST, val_max=50))  # type: ignore[arg-type]
    assert len(client.val_texts) == len(client.val_labels) == 50


def test_eval_data_is_the_capped_test_split() -> None:
    test = load_eval_data(DataSettings(**FAST, test_max=120))  # type: ignore[arg-type]
    assert (test.flows, test.label_names) == (120, ("Benign", "Malicious"))


def test_eval_data_counts_each_distinct_item_once_with_its_flows() -> None:
    test = load_eval_data(DataSettings(**FAST, test_max=120))  # type: ignore[arg-type]
    items = list(zip(test.captures.tolist(), test.texts, test.labels.tolist(), strict=True))
    assert len(set(items)) == len(items) < 120


def test_capture_split_tests_on_whole_captures_never_trained_on() -> None:
    data = DataSettings(**{**FAST, "split": "capture", "num_partitions": 1})  # type: ignore[arg-type]
    prepared = prepare_data(data)
    caps = prepared.flows.captures
    train, val, test = (set(caps[rows].tolist()) for rows in prepared.splits.__dict__.values())
    assert not (train & test) and not (val & test) and not (train & val) and test


def test_capture_split_scores_every_flow_of_the_test_captures() -> None:
    data = DataSettings(**{**FAST, "split": "capture"})  # type: ignore[arg-type]
    prepared = prepare_data(data)
    held = set(prepared.flows.captures[prepared.splits.test].tolist())
    whole, _ = load_flows()
    assert load_eval_data(data).flows == int(np.isin(whole.captures, list(held)).sum())


def test_holdout_captures_are_the_test_split() -> None:
    holdout = ("CTU-IoT-Malware-Capture-49-1", "CTU-Honeypot-Capture-4-1")
    data = DataSettings(**{**FAST, "split": "capture", "holdout_captures": holdout})  # type: ignore[arg-type]
    test = load_eval_data(data)
    assert set(test.captures.tolist()) == set(holdout)


def test_capture_split_clients_never_see_a_test_capture() -> None:
    data = DataSettings(**{**FAST, "split": "capture"})  # type: ignore[arg-type]
    held = set(load_eval_data(data).captures.tolist())
    seen = {
        c
        for i in range(data.num_partitions)
        for c in load_client_data(data.model_copy(update={"partition_index": i})).captures
    }
    assert seen and not (seen & held)


def test_unknown_holdout_capture_is_refused_with_the_known_names() -> None:
    data = DataSettings(**{**FAST, "split": "capture", "holdout_captures": ("CTU-nope",)})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"CTU-nope.*known"):
        prepare_data(data)


def test_holdout_needs_the_capture_split() -> None:
    with pytest.raises(ValidationError, match="holdout_captures"):
        DataSettings(holdout_captures=("CTU-Honeypot-Capture-4-1",))


def test_partition_index_out_of_range_is_refused() -> None:
    with pytest.raises(ValidationError, match="partition_index"):
        DataSettings(num_partitions=2, partition_index=2)


def test_unknown_template_is_refused_in_settings() -> None:
    with pytest.raises(ValidationError, match="template"):
        DataSettings(template="haiku")


def test_capture_clients_hold_disjoint_captures_covering_all_19() -> None:
    base = DataSettings(**FAST)  # type: ignore[arg-type]
    held = [
        load_client_data(base.model_copy(update={"partition_index": i})).captures for i in range(5)
    ]
    flat = [c for captures in held for c in captures]
    assert (len(flat), len(set(flat))) == (19, 19)
