"""The adaptive feedback loop (paper III-A 5): a sliding-window UCB bandit over GSFS triggers.

Rules: pure (no clock, I/O, threads or tensors; time comes in as `now`). An arm is one pair of
client trigger thresholds (perf_delta, kappa): together they decide how often a client
uploads. After each central evaluation of version v the arm that was in force while v's
uploads were made is credited with

    r_v = (F1_val(v) − F1_val(v−1)) − cost_weight · bytes_v / (N · model_bytes)

and the next arm is the argmax of  mean_a + c·sqrt(2·ln t / n_a)  (UCB1, Auer et al. 2002),
every untried arm first in the configured order. Means and counts are over each arm's last
`window` rewards (sliding-window UCB, Garivier and Moulines 2011), because ΔF1 shrinks as the
model converges and old rewards stop describing an arm. Ties go to the earlier arm. A version
without a validation figure (no evaluation) credits nothing and keeps the arm. Decisions are
plain dicts (logged and written to the metrics file); `snapshot`/`restore` carry the state
across a server restart.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedllm_server.feedback.settings import FeedbackSettings


@dataclass(frozen=True)
class Arm:
    perf_delta: float
    kappa: float

    def as_dict(self) -> dict[str, float]:
        return {"perf_delta": self.perf_delta, "kappa": self.kappa}


def arms_of(settings: FeedbackSettings) -> list[Arm]:
    return [Arm(d, k) for d in settings.perf_deltas for k in settings.kappas]


class FeedbackController:
    """Chooses the trigger thresholds the clients use, one aggregation period at a time."""

    def __init__(self, settings: FeedbackSettings, model_bytes: int) -> None:
        if model_bytes < 1:
            raise ValueError("model_bytes must be >= 1")
        self.settings = settings
        self.arms = arms_of(settings)
        self.model_bytes = model_bytes
        self.rewards: list[deque[float]] = [deque(maxlen=settings.window) for _ in self.arms]
        self.current = 0  # index of the arm in force
        self.last_f1: float | None = None  # F1_val of the previous evaluated version
        self.last_at: float | None = None
        self.decisions = 0

    @property
    def arm(self) -> Arm:
        return self.arms[self.current]

    def observe(
        self, version: int, val_f1: float | None, bytes_up: int, clients: int, now: float
    ) -> dict[str, Any] | None:
        """Credit the arm in force with version `version`'s reward; choose the next arm.
        `clients` is N, the federation size the upload cost is shared by.

        Returns the decision record, or None when there was nothing to learn from (no
        validation figure yet, or the first one: ΔF1 needs two)."""
        if val_f1 is None or not math.isfinite(val_f1):
            return None
        previous, self.last_f1 = self.last_f1, val_f1
        elapsed = None if self.last_at is None else now - self.last_at
        self.last_at = now
        if previous is None:
            return None
        cost = self.settings.cost_weight * bytes_up / (max(1, clients) * self.model_bytes)
        reward = (val_f1 - previous) - cost
        credited = self.current
        self.rewards[credited].append(reward)
        scores = self.scores()
        self.current = max(range(len(self.arms)), key=lambda i: (scores[i], -i))
        self.decisions += 1
        return {
            "version": version,
            "credited": self.arms[credited].as_dict(),
            "reward": reward,
            "delta_f1": val_f1 - previous,
            "cost": cost,
            "bytes_up": bytes_up,
            "period_s": elapsed,
            "chosen": self.arm.as_dict(),
            "scores": [None if math.isinf(s) else s for s in scores],
        }

    def scores(self) -> list[float]:
        """mean + c·sqrt(2 ln t / n) per arm over its window; +inf for an untried arm."""
        total = sum(len(r) for r in self.rewards)
        out = []
        for rewards in self.rewards:
            if not rewards:
                out.append(math.inf)
                continue
            mean = sum(rewards) / len(rewards)
            bonus = math.sqrt(2.0 * math.log(total) / len(rewards)) if total > 1 else 0.0
            out.append(mean + self.settings.exploration * bonus)
        return out

    # --- checkpoint -----------------------------------------------------------------------
    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "arms": [a.as_dict() for a in self.arms],
            "rewards": [list(r) for r in self.rewards],
            "current": self.current,
            "last_f1": self.last_f1,
            "last_age_s": None if self.last_at is None else now - self.last_at,
            "decisions": self.decisions,
        }

    def restore(self, data: Mapping[str, Any], now: float) -> None:
        """Resume a snapshot taken with the same arms (other arms: start afresh). Times are
        stored as ages: the restarted process's monotonic clock means something else."""
        if [Arm(**a) for a in data.get("arms", [])] != self.arms:
            return
        for mine, saved in zip(self.rewards, data["rewards"], strict=True):
            mine.extend(float(r) for r in saved)
        self.current = int(data["current"])
        self.last_f1 = None if data["last_f1"] is None else float(data["last_f1"])
        self.decisions = int(data["decisions"])
        age = data.get("last_age_s")
        self.last_at = None if age is None else now - float(age)
