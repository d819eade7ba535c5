"""Seeded train / validation / test splits (stratified 70/20/10, or by whole capture).

Rules:
- Everything is a pure function of (strata, seed): the same inputs give the same indices on
  every host, so the server and every client derive identical splits without talking.
- A stratum is any hashable key per row. The data loader stratifies on (fine class, capture):
  each class keeps its 70/20/10 proportions and each capture appears in every split, which the
  by-capture partitioner needs for a non-empty local validation set.
- Per stratum of n rows: train = floor(0.7 n + 0.5), val = floor(0.2 n + 0.5) (capped to what is
  left), test = the rest. So a stratum of 1 row goes to train, of 3 rows to train 2 / val 1.
- ``capture_split`` keeps every capture whole in one split (the honest test of detection on
  traffic never seen: a random split of IoT-23 mostly measures memory of each capture).
- Subsampling (``max_rows``) keeps exactly ``k`` rows, at least one per stratum when k allows,
  the rest in proportion to stratum size (largest remainder). Rare classes thus survive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedllm_core.data.table import IndexArray

DEFAULT_FRACTIONS = (0.7, 0.2, 0.1)
# By capture the unit is a whole capture: 10 % of 19 would test on two captures, too few for
# a figure that means anything, so a fifth of each kind's captures is tested on (5 folds).
CAPTURE_FOLDS = 5


@dataclass(frozen=True, eq=False)
class Splits:
    """Row indices (sorted, int64, pairwise disjoint) of the three splits."""

    train: IndexArray
    val: IndexArray
    test: IndexArray

    def sizes(self) -> tuple[int, int, int]:
        return len(self.train), len(self.val), len(self.test)


def strata_ids(*keys: npt.ArrayLike) -> IndexArray:
    """One int id per row for the combination of the given per-row keys (sorted key order)."""
    joined = np.asarray(keys[0]).astype(str).astype(object)
    for key in keys[1:]:
        joined = joined + "\x1f" + np.asarray(key).astype(str).astype(object)
    _, ids = np.unique(joined, return_inverse=True)
    return ids.astype(np.int64)


def _groups(strata: npt.ArrayLike) -> list[IndexArray]:
    """Row indices per stratum, strata in sorted order, rows ascending."""
    ids = np.unique(np.asarray(strata), return_inverse=True)[1]
    order = np.argsort(ids, kind="stable")
    bounds = np.flatnonzero(np.diff(ids[order])) + 1
    return [g.astype(np.int64) for g in np.split(order, bounds)] if len(order) else []


def allocate(counts: Sequence[int], total: int) -> IndexArray:
    """Split ``total`` over bins of capacity ``counts``: one each first, then proportionally.

    Largest-remainder rounding (ties to the lower index), never above a bin's capacity.
    """
    cap = np.asarray(counts, dtype=np.int64)
    total = int(min(total, cap.sum()))
    base = np.minimum(cap, 1) if total >= np.count_nonzero(cap) else np.zeros_like(cap)
    rest, room = total - int(base.sum()), cap - base
    if rest == 0 or room.sum() == 0:
        return base
    share = room * (rest / room.sum())
    floor = np.floor(share).astype(np.int64)
    extra = rest - int(floor.sum())
    order = np.argsort(-(share - floor), kind="stable")[:extra]
    floor[order] += 1
    return base + floor


def stratified_subsample(strata: npt.ArrayLike, k: int, seed: int) -> IndexArray:
    """Sorted indices of ``k`` rows drawn per stratum in proportion (at least one per stratum)."""
    groups = _groups(strata)
    quota = allocate([len(g) for g in groups], k)
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(g)[:q] for g, q in zip(groups, quota, strict=True)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def split_indices(
    strata: npt.ArrayLike,
    seed: int,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> Splits:
    """Seeded stratified train/val/test split of ``len(strata)`` rows."""
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1: {fractions}")
    rng = np.random.default_rng(seed)
    parts: tuple[list[IndexArray], list[IndexArray], list[IndexArray]] = ([], [], [])
    for group in _groups(strata):
        rows = rng.permutation(group)
        n = len(rows)
        n_train = int(np.floor(fractions[0] * n + 0.5))
        n_val = min(int(np.floor(fractions[1] * n + 0.5)), n - n_train)
        parts[0].append(rows[:n_train])
        parts[1].append(rows[n_train : n_train + n_val])
        parts[2].append(rows[n_train + n_val :])
    train, val, test = (
        np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts
    )
    return Splits(train=train, val=val, test=test)


def capture_kinds(groups: npt.ArrayLike, malicious: npt.ArrayLike) -> dict[str, bool]:
    """Per capture: whether most of its rows are malicious (its kind, for a balanced split)."""
    g = np.asarray(groups).astype(str)
    bad = np.asarray(malicious, dtype=bool)
    return {name: bool(bad[g == name].mean() >= 0.5) for name in sorted(set(g.tolist()))}


def _fold_of(names: Sequence[str], folds: int, rng: np.random.Generator) -> dict[str, int]:
    """One kind's captures, shuffled, dealt round-robin into ``folds`` folds."""
    order = [names[i] for i in rng.permutation(len(names))]
    return {name: i % folds for i, name in enumerate(order)}


def capture_split(
    groups: npt.ArrayLike,
    malicious: npt.ArrayLike,
    seed: int,
    *,
    holdout: Sequence[str] = (),
    folds: int = CAPTURE_FOLDS,
) -> Splits:
    """Whole captures to train / validation / test, so a test flow's capture is never trained on.

    Within each kind (mostly benign, mostly malicious) the captures are shuffled and dealt into
    ``folds`` folds; seed s tests on fold s mod folds, validates on the next fold and trains on
    the rest, so both kinds are tested and seeds 0..folds-1 test every capture exactly once
    (together they score every flow). ``seed // folds`` picks the shuffle. ``holdout`` names
    the test captures instead; the rest are folded the same way into validation and training.
    """
    g = np.asarray(groups).astype(str)
    kinds = capture_kinds(g, malicious)
    unknown = sorted(set(holdout) - set(kinds))
    if unknown:
        raise ValueError(f"holdout captures {unknown} are not in the data; known: {sorted(kinds)}")
    rng = np.random.default_rng([seed // folds, 23])
    fold = seed % folds
    parts: tuple[list[str], list[str], list[str]] = ([], [], list(holdout))
    for kind in (False, True):
        names = [name for name, bad in kinds.items() if bad is kind and name not in holdout]
        for name, f in _fold_of(names, folds, rng).items():
            if not holdout and f == fold:
                parts[2].append(name)
            elif f == (fold + (0 if holdout else 1)) % folds:
                parts[1].append(name)
            else:
                parts[0].append(name)
    train, val, test = (np.flatnonzero(np.isin(g, part)).astype(np.int64) for part in parts)
    return Splits(train=train, val=val, test=test)
