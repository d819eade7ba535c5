"""Aggregation must not depend on the order updates arrive in (reproducible FedAvg on CPU)."""

import itertools

import numpy as np

from fedllm_server.strategies.weighted_sum import WeightedSum


def _mean_in_order(order: tuple[int, ...], deltas: list[np.ndarray], weights: list[float]):
    acc = WeightedSum()
    for i in order:
        acc.add(f"c{i}", {"w": deltas[i]}, weights[i])
    return acc.take_mean()["w"]


def test_every_arrival_order_gives_the_same_bits() -> None:
    rng = np.random.default_rng(7)
    deltas = [rng.standard_normal(20_000).astype(np.float32) * 10.0**k for k in range(-2, 3)]
    weights = [1234.0, 777.0, 3001.0, 15.0, 402.0]
    results = [_mean_in_order(p, deltas, weights) for p in itertools.permutations(range(5))]
    assert all(np.array_equal(results[0], r) for r in results[1:])


def test_the_mean_is_float32_and_matches_the_formula() -> None:
    deltas = [np.array([1.0, 2.0], np.float32), np.array([3.0, 6.0], np.float32)]
    mean = _mean_in_order((0, 1), deltas, [1.0, 3.0])
    assert mean.dtype == np.float32 and mean.tolist() == [2.5, 5.0]  # (1·Δ0 + 3·Δ1) / 4
