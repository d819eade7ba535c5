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


def test_a_reused_accumulator_gives_the_same_bits_as_a_fresh_one() -> None:
    rng = np.random.default_rng(11)
    rounds = [[rng.standard_normal(300_000).astype(np.float32) for _ in range(3)] for _ in range(3)]
    reused = WeightedSum(keep_buffers=True)
    for deltas in rounds:
        fresh = WeightedSum()
        for i, delta in enumerate(deltas):
            reused.add(f"c{i}", {"w": delta}, i + 1.0)
            fresh.add(f"c{i}", {"w": delta}, i + 1.0)
        assert np.array_equal(reused.take_mean()["w"], fresh.take_mean()["w"])
        reused.reset()


def test_reset_forgets_the_clients_so_they_can_report_again() -> None:
    acc = WeightedSum(keep_buffers=True)
    acc.add("c1", {"w": np.ones(4, np.float32)}, 1.0)
    acc.reset()  # e.g. a round that ended without aggregating
    acc.add("c1", {"w": np.full(4, 2.0, np.float32)}, 1.0)
    assert acc.clients == ["c1"] and acc.take_mean()["w"].tolist() == [2.0] * 4


def test_a_spare_buffer_of_another_shape_is_not_reused() -> None:
    acc = WeightedSum(keep_buffers=True)
    acc.add("c1", {"w": np.ones(4, np.float32)}, 1.0)
    acc.take_mean()
    acc.reset()
    acc.add("c1", {"w": np.full((2, 3), 5.0, np.float32)}, 2.0)
    assert acc.take_mean()["w"].tolist() == [[5.0] * 3] * 2
