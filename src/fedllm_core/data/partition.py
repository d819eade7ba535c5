"""Partitioning rows over federated clients: by capture (natural non-IID), IID, Dirichlet skew.

Rules:
- ``partition_indices`` returns one sorted int64 index array per partition; together they cover
  every row exactly once. Pure function of its arguments and ``seed``: every host computes the
  same partition and keeps its own share (``partition_index``).
- ``blocks`` (optional, e.g. 0 = train row, 1 = validation row) are partitioned consistently:
  a capture goes to one client with its train and its validation rows, and a Dirichlet client
  gets the same label mix in both. Every partition receives at least one row of every block
  value (every client has a non-empty train and validation set); if a scheme leaves one empty,
  one row is moved from the partition that has the most rows of that block (a documented
  fallback, logged nowhere because it is deterministic and rare). Too few rows is a DataError.
- ``capture``: whole captures are assigned greedily, largest first, to the client with the
  fewest rows so far (ties: lower index), i.e. balanced by row count (LPT scheduling). With
  more clients than captures, the largest unit is split in two (a seeded random half of each
  block) until there are as many units as clients.
- ``iid``: a seeded shuffle per block dealt into near-equal chunks.
- ``dirichlet``: per class c, proportions p_c ~ Dir(alpha) over the clients (Hsu et al. 2019);
  the class's rows are dealt by p_c (largest remainder). Small alpha = strong label skew. The
  draw is repeated (same generator, up to 50 times) until no client is empty in any block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from fedllm_core.data.table import IndexArray
from fedllm_core.errors import DataError

PartitionScheme = Literal["capture", "iid", "dirichlet"]
DIRICHLET_TRIES = 50


def partition_indices(
    scheme: PartitionScheme,
    num_partitions: int,
    *,
    labels: npt.ArrayLike,
    groups: npt.ArrayLike | None = None,
    blocks: npt.ArrayLike | None = None,
    seed: int = 0,
    alpha: float = 0.5,
) -> list[IndexArray]:
    """Split ``range(len(labels))`` into ``num_partitions`` disjoint, covering index arrays."""
    y = np.asarray(labels)
    n = len(y)
    b = np.zeros(n, np.int64) if blocks is None else np.unique(blocks, return_inverse=True)[1]
    if num_partitions < 1:
        raise DataError(f"num_partitions must be >= 1, got {num_partitions}")
    rng = np.random.default_rng(seed)
    if scheme == "capture":
        if groups is None:
            raise DataError("partition 'capture' needs the capture of every row")
        owner = _by_group(np.asarray(groups).astype(str), b, num_partitions, rng)
    elif scheme == "iid":
        owner = _iid(b, num_partitions, rng)
    elif scheme == "dirichlet":
        if alpha <= 0:
            raise DataError(f"dirichlet_alpha must be > 0, got {alpha}")
        owner = _dirichlet(y, b, num_partitions, alpha, rng)
    else:
        raise DataError(f"unknown partition scheme {scheme!r} (capture, iid or dirichlet)")
    _fill_empty(owner, b, num_partitions, rng)
    return [np.flatnonzero(owner == p).astype(np.int64) for p in range(num_partitions)]


def _block_rows(b: IndexArray) -> list[IndexArray]:
    return [np.flatnonzero(b == v) for v in range(int(b.max()) + 1)] if len(b) else []


def _iid(b: IndexArray, k: int, rng: np.random.Generator) -> IndexArray:
    owner = np.zeros(len(b), np.int64)
    for rows in _block_rows(b):
        for p, chunk in enumerate(np.array_split(rng.permutation(rows), k)):
            owner[chunk] = p
    return owner


def _proportional(total: int, weights: npt.NDArray[np.float64]) -> IndexArray:
    share = weights / weights.sum() * total
    floor = np.floor(share).astype(np.int64)
    extra = total - int(floor.sum())
    floor[np.argsort(-(share - floor), kind="stable")[:extra]] += 1
    return floor


def _dirichlet_once(
    y: npt.NDArray[np.generic], b: IndexArray, k: int, alpha: float, rng: np.random.Generator
) -> IndexArray:
    owner = np.zeros(len(y), np.int64)
    for cls in np.unique(y):
        weights = rng.dirichlet(np.full(k, alpha))
        for rows in _block_rows(b):
            cls_rows = rng.permutation(rows[y[rows] == cls])
            counts = _proportional(len(cls_rows), weights)
            owner[cls_rows] = np.repeat(np.arange(k), counts)
    return owner


def _dirichlet(
    y: npt.NDArray[np.generic], b: IndexArray, k: int, alpha: float, rng: np.random.Generator
) -> IndexArray:
    owner = _dirichlet_once(y, b, k, alpha, rng)
    for _ in range(DIRICHLET_TRIES - 1):
        if not _empty_cells(owner, b, k):
            break
        owner = _dirichlet_once(y, b, k, alpha, rng)
    return owner


def _empty_cells(owner: IndexArray, b: IndexArray, k: int) -> list[tuple[int, int]]:
    """(block, partition) pairs with no row."""
    cells = np.zeros((int(b.max()) + 1 if len(b) else 0, k), np.int64)
    np.add.at(cells, (b, owner), 1)
    return [(int(v), int(p)) for v, p in zip(*np.nonzero(cells == 0), strict=True)]


def _split_unit(rows: IndexArray, b: IndexArray, rng: np.random.Generator) -> list[IndexArray]:
    halves: list[list[IndexArray]] = [[], []]
    for v in np.unique(b[rows]):
        shuffled = rng.permutation(rows[b[rows] == v])
        cut = (len(shuffled) + 1) // 2
        halves[0].append(shuffled[:cut])
        halves[1].append(shuffled[cut:])
    return [np.sort(np.concatenate(h)) for h in halves]


def _by_group(
    g: npt.NDArray[np.str_], b: IndexArray, k: int, rng: np.random.Generator
) -> IndexArray:
    names = sorted(set(g.tolist()))
    units: list[IndexArray] = [np.flatnonzero(g == name) for name in names]
    while len(units) < k:
        largest = max(range(len(units)), key=lambda i: (len(units[i]), -i))
        if len(units[largest]) < 2:
            raise DataError(f"cannot make {k} partitions from {len(g)} rows")
        unit = units.pop(largest)
        units[largest:largest] = _split_unit(unit, b, rng)
    return _assign_lpt(units, len(g), k)


def _assign_lpt(units: Sequence[IndexArray], n: int, k: int) -> IndexArray:
    """Largest unit first, each to the currently lightest partition (ties: lowest index)."""
    owner = np.zeros(n, np.int64)
    load = np.zeros(k, np.int64)
    for i in sorted(range(len(units)), key=lambda i: (-len(units[i]), i)):
        target = int(np.argmin(load))
        owner[units[i]] = target
        load[target] += len(units[i])
    return owner


def _fill_empty(owner: IndexArray, b: IndexArray, k: int, rng: np.random.Generator) -> None:
    """Give every (block, partition) cell a row, taken from the fullest partition of that block."""
    for v, p in _empty_cells(owner, b, k):
        in_block = b == v
        counts = np.bincount(owner[in_block], minlength=k)
        donor = int(np.argmax(counts))
        if counts[donor] < 2:
            raise DataError(f"too few rows ({int(in_block.sum())}) in a split for {k} partitions")
        candidates = np.flatnonzero(in_block & (owner == donor))
        owner[int(rng.choice(candidates))] = p
