"""Adaptive upload compression: the choice within the error budget, and error feedback."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedllm_client.compression import Compressor, LinkThroughput, relative_error, round_trip
from fedllm_proto.codec import Encoding


def _delta(seed: int = 0, n: int = 4096) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"a.lora_A": rng.standard_normal(n).astype(np.float32), "step": np.array([3])}


def test_relative_error_by_hand() -> None:
    sent = {"x": np.array([3.0, 4.0], np.float32)}  # norm 5
    rebuilt = {"x": np.array([3.0, 3.0], np.float32)}  # error norm 1
    assert relative_error(sent, rebuilt) == pytest.approx(0.2)
    assert relative_error({"x": np.zeros(2)}, {"x": np.zeros(2)}) == 0.0
    assert relative_error(sent, {"x": np.array([np.inf, 0.0])}) == math.inf


def test_adaptive_sends_the_fewest_bytes_within_the_budget() -> None:
    delta = _delta()
    # int8 with 256-element block scales: error ~0.5-1 % on Gaussian data, 1/4 of the bytes
    loose = Compressor("adaptive", error_budget=0.05, raw_below_s=0.0, error_feedback=True)
    choice = loose.choose(delta, base_version=1)
    assert choice.encoding is Encoding.INT8
    assert choice.body_bytes < 0.3 * choice.raw_bytes
    assert 0 < choice.relative_error <= 0.05
    # fp16 only (error ~1e-4) fits a budget of 0.001
    tight = Compressor("adaptive", error_budget=0.001, raw_below_s=0.0, error_feedback=True)
    assert tight.choose(delta, 1).encoding is Encoding.FP16
    # nothing lossy fits 1e-9: raw, exact
    exact = Compressor("adaptive", error_budget=1e-9, raw_below_s=0.0, error_feedback=True)
    chosen = exact.choose(delta, 1)
    assert (chosen.encoding, chosen.relative_error, chosen.residual) == (Encoding.RAW, 0.0, None)


def test_top_k_wins_for_a_sparse_delta() -> None:
    delta = {"w": np.zeros(10_000, np.float32)}
    delta["w"][[5, 500, 9000]] = [1.0, -2.0, 3.0]  # 3 of 10,000 non-zero: top 1 % keeps all
    choice = Compressor("adaptive", 0.05, 0.0, True).choose(delta, 1)
    assert choice.encoding is Encoding.TOPK
    assert choice.relative_error == 0.0


def test_a_fast_measured_link_sends_raw() -> None:
    comp = Compressor("adaptive", error_budget=0.05, raw_below_s=1.0, error_feedback=True)
    first = comp.choose(_delta(), 1)
    assert first.encoding is Encoding.INT8  # no upload timed yet: the link is unknown
    comp.commit(first, nbytes_on_wire=first.body_bytes, seconds=0.001)  # ~4 MB/s
    second = comp.choose(_delta(1), 2)
    assert (second.encoding, second.reason) == (Encoding.RAW, "fast_link")


def test_error_feedback_adds_what_the_last_upload_dropped() -> None:
    comp = Compressor("int8", error_budget=0.05, raw_below_s=0.0, error_feedback=True)
    d1 = _delta(0)
    first = comp.choose(d1, base_version=1)
    rebuilt, _ = round_trip(first.tensors, first.encoding)
    assert first.residual is not None
    np.testing.assert_allclose(first.residual["a.lora_A"], d1["a.lora_A"] - rebuilt["a.lora_A"])
    # not sent yet: building again carries nothing
    assert comp.choose(d1, 1).tensors["a.lora_A"] is d1["a.lora_A"]
    comp.commit(first, first.body_bytes, 0.01)
    d2 = _delta(1)
    second = comp.choose(d2, base_version=2)  # a new global model: the residual is carried
    np.testing.assert_allclose(
        second.tensors["a.lora_A"], d2["a.lora_A"] + first.residual["a.lora_A"], rtol=1e-6
    )
    np.testing.assert_array_equal(second.tensors["step"], d2["step"])  # integers untouched
    # over two uploads the server got d1 + d2 minus only the second rounding
    got = rebuilt["a.lora_A"] + round_trip(second.tensors, second.encoding)[0]["a.lora_A"]
    total = d1["a.lora_A"] + d2["a.lora_A"]
    assert relative_error({"t": total}, {"t": got}) < relative_error(
        {"t": total}, {"t": rebuilt["a.lora_A"] + round_trip(d2, Encoding.INT8)[0]["a.lora_A"]}
    )


def test_a_second_upload_from_the_same_base_drops_the_residual() -> None:
    comp = Compressor("int8", 0.05, 0.0, error_feedback=True)
    first = comp.choose(_delta(0), base_version=4)
    comp.commit(first, first.body_bytes, 0.01)
    again = _delta(1)
    # measured from the same base, it already holds what the first one dropped
    assert comp.choose(again, base_version=4).tensors["a.lora_A"] is again["a.lora_A"]


def test_raw_costs_no_round_trip_and_no_feedback_without_it() -> None:
    delta = _delta()
    raw = Compressor("raw", 0.05, 0.0, True).choose(delta, 1)
    assert raw.tensors is delta and raw.residual is None
    off = Compressor("fp16", 0.05, 0.0, error_feedback=False).choose(delta, 1)
    assert off.encoding is Encoding.FP16 and off.residual is None


def test_link_throughput_is_an_ema_and_ignores_untimed_uploads() -> None:
    link = LinkThroughput()
    assert link.seconds_for(100) is None
    link.observe(1000, 1.0)
    link.observe(3000, 1.0)
    assert link.bytes_per_s == pytest.approx(2000.0)  # 0.5 * 3000 + 0.5 * 1000
    link.observe(0, 1.0)
    link.observe(10, 0.0)
    assert link.seconds_for(4000) == pytest.approx(2.0)
