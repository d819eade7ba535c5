"""The feedback loop on the server's event loop: the controller, its state file, TUNING out.

Rules: built only for GSFS with `[feedback] enabled` (`FeedbackLoop.open` returns None
otherwise). The reporter task calls `after_evaluation` once per evaluated version; a decision
that changes the arm goes as TUNING to every session whose Hello listed the ``tuning``
capability, and `welcome` sends the arm in force to each capable client that (re)connects.
The controller's state lives in ``<state_dir>/feedback.json`` (atomic, 0600), written after
every decision, so a restarted server resumes its bandit. Only loop code touches it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog

from fedllm_core.files import atomic_write
from fedllm_proto.messages import Tuning
from fedllm_server.feedback.controller import Arm, FeedbackController
from fedllm_server.feedback.settings import FeedbackSettings
from fedllm_server.metrics_log import MetricsLog
from fedllm_server.session import ClientSession

STATE_FILE = "feedback.json"
CAPABILITY = "tuning"
log = structlog.get_logger("fedllm.server")


class FeedbackLoop:
    def __init__(
        self, controller: FeedbackController, path: Path, metrics: MetricsLog, now: float
    ) -> None:
        self.controller, self.path, self.metrics = controller, path, metrics
        self.announced: Arm | None = None  # the arm clients were last told (None: [trigger])
        self.version = 0  # the version it was decided at
        self.enrolled: set[str] = set()  # N for the upload cost: every client seen joining
        if path.exists():
            data = json.loads(path.read_text())
            controller.restore(data["controller"], now)
            if data.get("announced") is not None:
                self.announced, self.version = Arm(**data["announced"]), int(data["version"])

    @classmethod
    def open(
        cls,
        settings: FeedbackSettings,
        strategy: str,
        state_dir: Path,
        model_bytes: int,
        metrics: MetricsLog,
        now: float,
    ) -> FeedbackLoop | None:
        if not settings.enabled or strategy != "gsfs":
            return None
        controller = FeedbackController(settings, model_bytes)
        return cls(controller, state_dir / STATE_FILE, metrics, now)

    def welcome(self, session: ClientSession) -> None:
        """A client joined: tell it the thresholds in force, if the loop has chosen any."""
        self.enrolled.add(session.client_id)
        if self.announced is not None and CAPABILITY in session.capabilities:
            session.offer(self._message())

    def after_evaluation(
        self,
        version: int,
        evaluation: Mapping[str, float] | None,
        bytes_up: int,
        sessions: Iterable[ClientSession],
        now: float,
    ) -> dict[str, Any] | None:
        """Learn from version `version`'s validation macro-F1 and the bytes its uploads took;
        send the next thresholds when they change. Returns the decision record, if any."""
        val_f1 = None if evaluation is None else evaluation.get("val_f1_macro")
        clients = max(1, len(self.enrolled))
        decision = self.controller.observe(version, val_f1, bytes_up, clients, now)
        if decision is None:
            return None
        chosen = self.controller.arm
        changed = chosen != (self.announced or self.controller.arms[0])
        if changed or self.announced is None:
            self.announced, self.version = chosen, version
            sent = sum(
                session.offer(self._message())
                for session in sessions
                if CAPABILITY in session.capabilities
            )
            decision["sent_to"] = sent
        decision["changed"] = changed
        try:
            self._save(now)
        except OSError as exc:  # a full disk must not stop the server: the bandit restarts
            log.warning("feedback_state_unsaved", error=str(exc), path=str(self.path))
        self.metrics.write("feedback", **decision)
        log.info(
            "feedback_decision",
            model_version=version,
            reward=round(decision["reward"], 5),
            chosen=decision["chosen"],
            changed=changed,
        )
        return decision

    def _message(self) -> Tuning:
        assert self.announced is not None
        return Tuning(self.version, self.announced.perf_delta, self.announced.kappa)

    def _save(self, now: float) -> None:
        data = {
            "controller": self.controller.snapshot(now),
            "announced": None if self.announced is None else self.announced.as_dict(),
            "version": self.version,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(data).encode(), mode=0o600)
