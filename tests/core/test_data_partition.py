"""Client partitioners: by capture, IID, Dirichlet label skew."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedllm_core.data import PartitionScheme, partition_indices
from fedllm_core.errors import DataError

SCHEMES: tuple[PartitionScheme, ...] = ("capture", "iid", "dirichlet")


def _rows(n: int = 3000, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    captures = np.array([f"cap-{i}" for i in range(7)])
    return {
        "labels": rng.choice(4, size=n, p=[0.55, 0.25, 0.15, 0.05]),
        "groups": captures[rng.choice(7, size=n, p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.04, 0.01])],
        "blocks": (rng.random(n) < 0.25).astype(np.int64),  # 0 = train row, 1 = validation row
    }


def _parts(scheme: PartitionScheme, k: int, seed: int = 0, **kw: object) -> list[np.ndarray]:
    return partition_indices(scheme, k, seed=seed, **_rows(), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_partitions_cover_every_row_exactly_once(scheme: PartitionScheme) -> None:
    joined = np.concatenate(_parts(scheme, 5))
    assert np.array_equal(np.sort(joined), np.arange(3000))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_partitions_are_deterministic_per_seed(scheme: PartitionScheme) -> None:
    a, b = _parts(scheme, 5, seed=11), _parts(scheme, 5, seed=11)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partitions_change_with_the_seed(scheme: PartitionScheme) -> None:
    assert not np.array_equal(_parts(scheme, 5, seed=1)[0], _parts(scheme, 5, seed=2)[0])


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("k", [1, 3, 7, 12])
def test_every_partition_has_train_and_validation_rows(scheme: PartitionScheme, k: int) -> None:
    blocks = _rows()["blocks"]
    for part in _parts(scheme, k, alpha=0.1):
        assert set(blocks[part].tolist()) == {0, 1}


def test_capture_keeps_whole_captures_together() -> None:
    groups = _rows()["groups"]
    owners = [{g for g in groups[p]} for p in _parts("capture", 4)]
    assert sum(len(o) for o in owners) == 7  # no capture appears in two partitions


def test_capture_assignment_is_greedy_by_row_count() -> None:
    groups = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 25 + ["d"] * 10)
    parts = partition_indices("capture", 2, labels=np.zeros(115), groups=groups)
    assert [sorted(set(groups[p])) for p in parts] == [["a", "d"], ["b", "c"]]


def test_capture_splits_large_captures_when_clients_outnumber_them() -> None:
    groups = np.array(["a"] * 40 + ["b"] * 10)
    parts = partition_indices("capture", 4, labels=np.zeros(50), groups=groups)
    assert sorted(len(p) for p in parts) == [10, 10, 10, 20]


def test_iid_parts_are_balanced() -> None:
    sizes = [len(p) for p in _parts("iid", 4)]
    assert max(sizes) - min(sizes) <= 2


def _label_spread(parts: list[np.ndarray]) -> float:
    labels = _rows()["labels"]
    shares = np.array([np.bincount(labels[p], minlength=4) / len(p) for p in parts])
    return float(shares.std(axis=0).mean())


def test_small_dirichlet_alpha_skews_labels_more_than_iid() -> None:
    assert _label_spread(_parts("dirichlet", 5, alpha=0.1)) > 3 * _label_spread(_parts("iid", 5))


def test_large_dirichlet_alpha_approaches_iid() -> None:
    skewed = _label_spread(_parts("dirichlet", 5, alpha=0.1))
    assert _label_spread(_parts("dirichlet", 5, alpha=1000.0)) < skewed / 3


def test_dirichlet_gives_a_client_the_same_label_mix_in_train_and_validation() -> None:
    rows = _rows()
    part = _parts("dirichlet", 3, alpha=0.3)[0]
    mix = [
        np.bincount(rows["labels"][part][rows["blocks"][part] == b], minlength=4) for b in (0, 1)
    ]
    assert mix[0] / mix[0].sum() == pytest.approx(mix[1] / mix[1].sum(), abs=0.05)


def test_too_many_partitions_is_a_data_error() -> None:
    with pytest.raises(DataError):
        partition_indices("iid", 5, labels=np.zeros(3))


def test_unknown_scheme_is_a_data_error() -> None:
    with pytest.raises(DataError):
        partition_indices("by-moon", 2, labels=np.zeros(10))  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(0, 1000), st.sampled_from(SCHEMES))
def test_any_partition_is_exact_cover(k: int, seed: int, scheme: PartitionScheme) -> None:
    rows = _rows(n=200, seed=seed)
    parts = partition_indices(scheme, k, seed=seed, **rows)  # type: ignore[arg-type]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(200))


def test_client_left_without_validation_gets_one_row_moved() -> None:
    # capture "b" has only train rows: its client would have an empty validation set.
    groups = np.array(["a"] * 10 + ["b"] * 3)
    blocks = np.array([0, 1] * 5 + [0, 0, 0])
    parts = partition_indices("capture", 2, labels=np.zeros(13), groups=groups, blocks=blocks)
    assert ([int(np.count_nonzero(blocks[p] == 1)) for p in parts], len(parts[1])) == ([4, 1], 4)
