"""Seeded stratified 70/20/10 split and stratified subsampling."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedllm_core.data import split_indices, strata_ids, stratified_subsample
from fedllm_core.data.splits import allocate


def _strata(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(5, size=2000, p=[0.6, 0.2, 0.1, 0.07, 0.03])


def test_same_seed_same_split() -> None:
    a, b = split_indices(_strata(), seed=7), split_indices(_strata(), seed=7)
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("train", "val", "test"))


def test_other_seed_other_split() -> None:
    a, b = split_indices(_strata(), seed=7), split_indices(_strata(), seed=8)
    assert not np.array_equal(a.train, b.train)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=300), st.integers(0, 2**32 - 1))
def test_splits_are_disjoint_and_cover_every_row(strata: list[int], seed: int) -> None:
    s = split_indices(np.array(strata), seed=seed)
    joined = np.concatenate([s.train, s.val, s.test])
    assert np.array_equal(np.sort(joined), np.arange(len(strata)))


def test_every_stratum_keeps_70_20_10() -> None:
    strata = _strata()
    s = split_indices(strata, seed=1)
    for k in np.unique(strata):
        n = np.count_nonzero(strata == k)
        got = [np.count_nonzero(strata[part] == k) / n for part in (s.train, s.val, s.test)]
        assert got == pytest.approx([0.7, 0.2, 0.1], abs=1.5 / n + 1e-9)


def test_overall_sizes_are_70_20_10() -> None:
    s = split_indices(_strata(), seed=1)
    assert s.sizes() == pytest.approx((1400, 400, 200), abs=5)


def test_tiny_stratum_rounding_is_documented_rule() -> None:
    s = split_indices(np.array([0, 1, 1, 2, 2, 2]), seed=0)  # strata of 1, 2 and 3 rows
    sizes = [
        [int(np.count_nonzero(np.isin(p, idx))) for p in (s.train, s.val, s.test)]
        for idx in ([0], [1, 2], [3, 4, 5])
    ]
    assert sizes == [[1, 0, 0], [1, 0, 1], [2, 1, 0]]


def test_bad_fractions_are_refused() -> None:
    with pytest.raises(ValueError):
        split_indices(np.zeros(10), seed=0, fractions=(0.7, 0.2, 0.2))


def test_allocate_gives_every_bin_one_then_proportional() -> None:
    assert allocate([1000, 10, 1, 0], 101).tolist() == [98, 2, 1, 0]


def test_allocate_never_exceeds_capacity() -> None:
    assert allocate([3, 2], 100).tolist() == [3, 2]


def test_subsample_has_exact_size_and_keeps_every_stratum() -> None:
    strata = _strata()
    keep = stratified_subsample(strata, 100, seed=0)
    assert (len(keep), set(strata[keep].tolist())) == (100, {0, 1, 2, 3, 4})


def test_subsample_is_proportional() -> None:
    strata = _strata()
    keep = stratified_subsample(strata, 500, seed=0)
    share = np.bincount(strata[keep]) / 500
    assert share == pytest.approx(np.bincount(strata) / len(strata), abs=0.01)


def test_subsample_is_deterministic_per_seed() -> None:
    strata = _strata()
    a, b = stratified_subsample(strata, 300, 4), stratified_subsample(strata, 300, 4)
    assert np.array_equal(a, b) and not np.array_equal(a, stratified_subsample(strata, 300, 5))


def test_strata_ids_combine_keys() -> None:
    ids = strata_ids(np.array(["a", "a", "b", "b"]), np.array(["x", "y", "x", "x"]))
    assert ids.tolist() == [0, 1, 2, 2]


def test_five_consecutive_capture_seeds_test_every_capture_exactly_once() -> None:
    from fedllm_core.data import capture_split, fine_classes, load_flows

    flows, _ = load_flows()
    malicious = fine_classes(flows) != "Benign"
    tested = []
    for seed in range(5, 10):
        split = capture_split(flows.captures, malicious, seed)
        tested += sorted(set(flows.captures[split.test].tolist()))
    assert sorted(tested) == sorted(set(flows.captures.tolist()))


def test_capture_split_tests_both_kinds_and_keeps_captures_whole() -> None:
    from fedllm_core.data import capture_split, fine_classes, load_flows

    flows, _ = load_flows()
    malicious = fine_classes(flows) != "Benign"
    split = capture_split(flows.captures, malicious, 2)
    parts = [set(flows.captures[rows].tolist()) for rows in (split.train, split.val, split.test)]
    kinds = {bool(malicious[flows.captures == c].mean() >= 0.5) for c in parts[2]}
    assert kinds == {False, True} and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
