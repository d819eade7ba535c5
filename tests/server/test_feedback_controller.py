"""The feedback bandit against hand-computed UCB1 choices, its window, its checkpoint, and the
loop-side wrapper's state file."""

import math

import pytest
from pydantic import ValidationError

from fedllm_server.feedback.controller import Arm, FeedbackController
from fedllm_server.feedback.loop import FeedbackLoop
from fedllm_server.feedback.settings import FeedbackSettings
from fedllm_server.metrics_log import MetricsLog, read_metrics

N, MODEL = 4, 1000  # clients, model bytes: one full upload by everyone is N * MODEL bytes


def controller(**kw) -> FeedbackController:
    settings = FeedbackSettings(
        enabled=True, perf_deltas=(0.01, 0.05), kappas=(2.0,), cost_weight=0.1, exploration=0.5
    ).model_copy(update=kw)
    return FeedbackController(settings, MODEL)


def test_ucb1_choices_by_hand():
    c = controller()
    assert c.observe(1, 0.50, N * MODEL, N, now=0.0) is None  # ΔF1 needs two figures
    assert c.arm == Arm(0.01, 2.0)
    # r = 0.10 - 0.1 * 1.0 = 0 for arm 0; arm 1 untried (+inf): chosen
    d = c.observe(2, 0.60, N * MODEL, N, now=10.0)
    assert d is not None
    assert d["reward"] == pytest.approx(0.0)
    assert d["credited"] == {"perf_delta": 0.01, "kappa": 2.0}
    assert d["chosen"] == {"perf_delta": 0.05, "kappa": 2.0}
    assert d["period_s"] == pytest.approx(10.0)
    # r = 0.05 - 0.1 * 0.5 = 0 for arm 1; t = 2: both 0 + 0.5 sqrt(2 ln 2) = 0.5887: tie -> arm 0
    d = c.observe(3, 0.65, N * MODEL // 2, N, now=20.0)
    assert d["scores"] == pytest.approx([0.5 * math.sqrt(2 * math.log(2))] * 2)
    assert c.arm == Arm(0.01, 2.0)
    # r = 0.05 for arm 0; t = 3: arm 0 0.025 + 0.5 sqrt(2 ln 3 / 2) = 0.5491,
    # arm 1 0 + 0.5 sqrt(2 ln 3) = 0.7412 -> arm 1
    d = c.observe(4, 0.70, 0, N, now=30.0)
    assert d["scores"] == pytest.approx([0.54908, 0.74115], abs=1e-5)
    assert c.arm == Arm(0.05, 2.0)


def test_a_version_without_validation_figure_credits_nothing_and_keeps_the_arm():
    c = controller()
    c.observe(1, 0.5, 0, N, now=0.0)
    c.observe(2, 0.6, 0, N, now=1.0)  # arm 0 credited, arm 1 chosen
    assert c.observe(3, None, 10**9, N, now=2.0) is None
    assert c.observe(4, float("nan"), 0, N, now=3.0) is None
    assert c.arm == Arm(0.05, 2.0)
    assert [len(r) for r in c.rewards] == [1, 0]


def test_means_are_over_the_last_window_rewards():
    c = controller(window=2, exploration=0.0, perf_deltas=(0.01,))
    for version, f1 in enumerate([0.1, 0.5, 0.5, 0.6, 0.7], start=1):
        c.observe(version, f1, 0, N, now=float(version))
    # rewards 0.4, 0.0, 0.1, 0.1: the window keeps the last two
    assert list(c.rewards[0]) == pytest.approx([0.1, 0.1])
    assert c.scores() == pytest.approx([0.1])


def test_cost_counts_upload_bytes_per_client_and_model():
    c = controller(cost_weight=0.2)
    c.observe(1, 0.5, 0, N, now=0.0)
    d = c.observe(2, 0.5, 2 * N * MODEL, N, now=1.0)  # everyone uploaded twice, F1 unchanged
    assert d["cost"] == pytest.approx(0.4)
    assert d["reward"] == pytest.approx(-0.4)


def test_snapshot_restores_the_same_choices():
    a = controller()
    for version, f1 in enumerate([0.5, 0.6, 0.62, 0.7], start=1):
        a.observe(version, f1, MODEL, N, now=float(version))
    b = controller()
    b.restore(a.snapshot(now=5.0), now=5.0)
    assert (b.arm, b.scores(), b.last_f1) == (a.arm, a.scores(), a.last_f1)
    assert a.observe(5, 0.71, 0, N, now=6.0) == b.observe(5, 0.71, 0, N, now=6.0)


def test_a_snapshot_of_other_arms_is_ignored():
    a = controller()
    a.observe(1, 0.5, 0, N, now=0.0)
    a.observe(2, 0.9, 0, N, now=1.0)
    b = controller(kappas=(3.0,))
    b.restore(a.snapshot(now=2.0), now=2.0)
    assert b.current == 0 and all(len(r) == 0 for r in b.rewards)


@pytest.mark.parametrize(
    "bad",
    [{"perf_deltas": ()}, {"kappas": ()}, {"perf_deltas": (1.5,)}, {"kappas": (-1.0,)}],
)
def test_bad_arms_are_refused(bad):
    with pytest.raises(ValidationError):
        FeedbackSettings(**bad)


# --- the loop-side wrapper: its state file and records -------------------------------------


def _loop(state_dir, metrics_dir):
    settings = FeedbackSettings(enabled=True, perf_deltas=(0.01, 0.05), kappas=(2.0,))
    metrics = MetricsLog(metrics_dir / "metrics.jsonl")
    return FeedbackLoop.open(settings, "gsfs", state_dir, MODEL, metrics, now=0.0), metrics


def test_a_restarted_server_resumes_the_bandit_and_the_announced_arm(tmp_path):
    first, metrics = _loop(tmp_path / "state", tmp_path)
    first.after_evaluation(1, {"val_f1_macro": 0.5}, 0, [], now=1.0)
    decision = first.after_evaluation(2, {"val_f1_macro": 0.6}, 0, [], now=2.0)
    assert decision is not None and decision["chosen"] == {"perf_delta": 0.05, "kappa": 2.0}
    again, _ = _loop(tmp_path / "state", tmp_path)
    assert (again.announced, again.version) == (first.announced, 2)
    assert again.controller.scores() == first.controller.scores()
    assert [r["version"] for r in read_metrics(metrics.path) if r["kind"] == "feedback"] == [2]


def test_the_loop_is_off_unless_enabled_for_gsfs(tmp_path):
    metrics = MetricsLog(tmp_path / "m.jsonl")
    on = FeedbackSettings(enabled=True)
    assert FeedbackLoop.open(FeedbackSettings(), "gsfs", tmp_path, MODEL, metrics, 0.0) is None
    assert FeedbackLoop.open(on, "fedavg", tmp_path, MODEL, metrics, 0.0) is None


def test_an_unwritable_state_file_is_logged_not_fatal(tmp_path):
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    loop, _ = _loop(blocker, tmp_path)
    loop.after_evaluation(1, {"val_f1_macro": 0.5}, 0, [], now=1.0)
    assert loop.after_evaluation(2, {"val_f1_macro": 0.6}, 0, [], now=2.0) is not None
