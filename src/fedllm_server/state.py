"""Loop-side state every server task shares: the sessions, the schedule, the engine thread,
the encoded current model, the metrics file, the stop request.

Rules: only code on the event loop touches a `ServerState` (the engine thread runs engine
methods and nothing else; the evaluation thread runs `CentralModel.evaluate`). It is built
once, after the restore, complete: no field is filled in later by a side effect. This module
imports neither the lifecycle (daemon) nor the connections, so both can import it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from fedllm_proto.messages import ByeCode
from fedllm_proto.transport import PreparedMessage
from fedllm_server.broadcast import FanOut
from fedllm_server.engine import Committed, Engine
from fedllm_server.evaluation import CentralModel
from fedllm_server.feedback.loop import FeedbackLoop
from fedllm_server.metrics_log import MetricsLog
from fedllm_server.schedule.base import Schedule
from fedllm_server.session import ClientSession, bulk_gate
from fedllm_server.settings import ServerSettings
from fedllm_server.tensors import TensorDict

log = structlog.get_logger("fedllm.server")
T = TypeVar("T")


class EngineThread:
    """The one worker thread every engine method runs in (it serialises all engine state)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="engine")

    def call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `fn(*args)` in the engine thread. Submitted now, in call order: what one task
        submits before it next awaits runs before anything another task submits later."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown()


@dataclass(frozen=True)
class Published:
    """One new global version, queued for the reporter."""

    committed: Committed
    fan: FanOut
    trigger: str  # complete | deadline | dropouts | quorum | timeout
    time_to_quorum_s: float
    aggregation_s: float
    published_time: float  # wall clock when it was queued to the clients
    broadcast_s: float  # encoding it once + queueing it to every session


class ServerState:
    """What the connections, the scheduler and the reporter share on the loop."""

    def __init__(
        self,
        settings: ServerSettings,
        central: CentralModel,
        engine: EngineThread,
        schedule: Schedule,
        prepared: PreparedMessage,
        metrics: MetricsLog,
        feedback: FeedbackLoop | None = None,
    ) -> None:
        self.settings = settings
        self.central = central
        self.fingerprint = central.identity.fingerprint
        self.fingerprint_parts = dict(central.identity.parts)  # to name a mismatch's part
        self.engine = engine.engine  # read `version` here; call its methods via `engine_call`
        self.engine_call = engine.call
        self.engine_thread = engine
        self.schedule = schedule
        self.prepared = prepared  # the current global model, encoded once
        # ... and lossy, for the clients that decode it, when [broadcast] chose a lossy encoding
        self.prepared_lossy: PreparedMessage | None = None
        self.metrics = metrics
        self.feedback = feedback  # GSFS with [feedback] enabled: the trigger-tuning bandit
        self.sessions: dict[str, ClientSession] = {}
        self.bulk_gate = bulk_gate()  # every session's broadcast sends share it
        self.reports: asyncio.Queue[Published | None] = asyncio.Queue()
        self.wake = asyncio.Event()  # something changed: the scheduler polls again
        self.stopping = asyncio.Event()
        self.stop_reason = ""
        self.stop_code = ByeCode.RESTARTING  # what the Bye tells clients: come back, or not
        self.failed = False
        self._eval_thread = ThreadPoolExecutor(1, thread_name_prefix="evaluation")

    async def evaluate(self, tensors: TensorDict, version: int) -> dict[str, float]:
        loop = asyncio.get_running_loop()
        evaluate = self.central.evaluate
        return await loop.run_in_executor(self._eval_thread, evaluate, tensors, version)

    def request_stop(self, reason: str, code: ByeCode = ByeCode.RESTARTING) -> None:
        """Stop serving; ``code`` is what every client's Bye says (``finished``: do not return)."""
        if not self.stopping.is_set():
            self.stop_reason, self.stop_code = reason, code
            self.stopping.set()  # before logging: a broken log pipe must not block the stop
            self.wake.set()
            log.info(
                "server_stopping", reason=reason, bye=code.value, model_version=self.engine.version
            )

    def task_done(self, task: asyncio.Task[Any]) -> None:
        """A scheduler/reporter task must never end on its own: if it died, stop (exit 1)."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("server_task_failed", task=task.get_name(), error=repr(exc), exc_info=exc)
        self.failed = True
        self.request_stop(f"{task.get_name()} failed")

    def close_threads(self) -> None:
        self.engine_thread.shutdown()
        self._eval_thread.shutdown()
