"""The broadcast encoding choice against hand-made steps: the error is relative to the step."""

import math

import numpy as np
import pytest

from fedllm_proto.codec import Encoding
from fedllm_server.broadcast_encoding import BroadcastSettings, choose, relative_error, roundtrip

RNG = np.random.default_rng(0)
OLD = {"w": RNG.standard_normal(4096).astype(np.float32), "n": np.arange(4, dtype=np.int64)}


def step(scale: float) -> dict:
    return {
        "w": OLD["w"] + np.float32(scale) * RNG.standard_normal(4096).astype(np.float32),
        "n": OLD["n"],
    }


def test_raw_keeps_the_aggregate_as_it_is():
    new = step(0.1)
    choice = choose(BroadcastSettings(), new, OLD)
    assert (choice.encoding, choice.error) == (Encoding.RAW, 0.0) and choice.tensors is new


def test_adaptive_takes_int8_for_a_large_step():
    new = step(0.5)  # int8's error (block max / 254) is small against this step
    choice = choose(BroadcastSettings(encoding="adaptive", error_budget=0.05), new, OLD)
    assert choice.encoding is Encoding.INT8 and choice.error <= 0.05
    np.testing.assert_array_equal(choice.tensors["w"], roundtrip(new, Encoding.INT8)["w"])
    np.testing.assert_array_equal(choice.tensors["n"], OLD["n"])  # integers travel raw


def test_adaptive_falls_back_to_fp16_then_raw_as_the_step_shrinks():
    budget = BroadcastSettings(encoding="adaptive", error_budget=0.05)
    assert choose(budget, step(1e-2), OLD).encoding is Encoding.FP16  # int8: err 0.66
    assert choose(budget, step(1e-4), OLD).encoding is Encoding.RAW  # fp16: err 2.1


def test_a_fixed_encoding_is_used_whatever_its_error():
    choice = choose(BroadcastSettings(encoding="int8"), step(1e-6), OLD)
    assert choice.encoding is Encoding.INT8 and choice.error > 1


def test_the_error_is_the_reconstruction_error_over_the_step():
    new = {"w": np.array([1.0, 1.0], np.float32)}
    old = {"w": np.array([0.0, 1.0], np.float32)}
    decoded = {"w": np.array([1.5, 1.0], np.float32)}
    assert relative_error(decoded, new, old) == pytest.approx(0.5)
    assert relative_error(decoded, new, new) == math.inf
    assert relative_error(new, new, new) == 0.0
