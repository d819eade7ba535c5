"""The scheduler task: poll the schedule, carry out its actions, publish, report.

Rules: one scheduler task per server. It polls the schedule with the loop's monotonic `now`,
carries out the actions it returns, and sleeps until `next_deadline` or until a connection
wakes it (a verdict, a join or a leave). It knows action types, never strategies: what is
synchronous or asynchronous is the schedule's business. Engine work (fold, drop, aggregate +
checkpoint) runs in the engine thread; the new global model is encoded once per encoding (raw,
plus the lossy one `[broadcast]` chose, for clients that decode it) and fanned out to
every connected client. Central evaluation and the metrics record run in the reporter task
(evaluation in its own thread), so the next round never waits for an evaluation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import structlog

from fedllm_proto.codec import Encoding
from fedllm_proto.messages import ByeCode, TrainRequest
from fedllm_server.broadcast import encode_global, fan_out
from fedllm_server.engine import Committed
from fedllm_server.schedule.actions import (
    Action,
    Aggregate,
    CloseRound,
    Drop,
    Fold,
    StartRound,
)
from fedllm_server.state import Published, ServerState
from fedllm_server.strategies.base import EmptyAggregationError

log = structlog.get_logger("fedllm.server")
MAX_SLEEP_S = 1.0


async def run(state: ServerState) -> None:
    """Run until the server stops; an aggregation in flight is always finished first."""
    while not state.stopping.is_set():
        now = time.monotonic()
        actions = state.schedule.poll(now)
        if actions:
            await carry_out(state, actions)
            continue  # acting may make the next action due now: poll again before sleeping
        await _sleep(state, state.schedule.next_deadline(now))


async def _sleep(state: ServerState, deadline: float | None) -> None:
    timeout = MAX_SLEEP_S
    if deadline is not None:
        timeout = min(timeout, max(0.0, deadline - time.monotonic()))
    state.wake.clear()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(state.wake.wait(), timeout)


async def carry_out(state: ServerState, actions: Sequence[Action]) -> None:
    """Do what a schedule asked, in order (connections call this too, for their verdicts and
    joins: a `Fold` or `Drop` is submitted to the engine thread before this first awaits)."""
    for action in actions:
        match action:
            case StartRound():
                send_train_requests(state, action)
            case CloseRound():
                _round_closed(state, action)
            case Fold(weights=weights):
                await state.engine_call(state.engine.fold, weights)
            case Drop(update_ids=update_ids):
                await state.engine_call(state.engine.drop, update_ids)
            case Aggregate():
                await _aggregate(state, action)


def send_train_requests(state: ServerState, action: StartRound) -> None:
    """Send the train request to every client named (a new round, or a reconnect)."""
    version = state.engine.version  # a round is based on the version current when it runs
    request = TrainRequest(action.round, version, action.local_steps, action.deadline_s)
    for cid in action.clients:
        session = state.sessions.get(cid)
        if session is not None:
            session.offer(request)
    log.info(
        "round_started",
        round=action.round,
        model_version=version,
        clients=list(action.clients),
        deadline_s=action.deadline_s,
    )


def _round_closed(state: ServerState, action: CloseRound) -> None:
    version = state.engine.version
    log.info(
        "round_closed",
        round=action.round,
        reason=action.reason,
        contributed=list(action.contributed),
        stragglers=list(action.stragglers),
        dropouts=list(action.dropouts),
        model_version=version,
    )
    state.metrics.write(
        "round",
        round=action.round,
        reason=action.reason,
        base_version=version,
        contributed=list(action.contributed),
        stragglers=list(action.stragglers),
        dropouts=list(action.dropouts),
        duration_s=action.closed_at - action.started_at,
    )
    if not action.contributed:
        log.warning("round_abandoned", round=action.round, model_version=version)


async def _aggregate(state: ServerState, order: Aggregate) -> None:
    started = time.perf_counter()
    try:
        committed = await state.engine_call(
            state.engine.aggregate, order.fold, order.durable, time.monotonic()
        )
    except EmptyAggregationError as exc:  # every update was left out (e.g. too stale)
        state.schedule.aggregated(time.monotonic())
        log.warning("pool_aggregation_empty", detail=str(exc))
        return
    await publish(state, committed, order, time.perf_counter() - started)


async def publish(
    state: ServerState, committed: Committed, order: Aggregate, aggregation_s: float
) -> None:
    """Encode the new global model once per encoding, fan it out, queue the report, maybe
    stop."""
    version, tensors = committed.version, committed.result.global_tensors
    started = time.perf_counter()
    state.prepared = await encode_global(version, tensors)
    state.prepared_lossy = None
    if committed.encoding is not Encoding.RAW:  # the same tensors, smaller, to capable clients
        state.prepared_lossy = await encode_global(version, tensors, committed.encoding)
    fan = await fan_out(state.sessions.values(), state.prepared, state.prepared_lossy)
    broadcast_s = time.perf_counter() - started  # encoded + queued to every session
    state.schedule.aggregated(time.monotonic())
    log.info(
        "global_model_published",
        model_version=version,
        trigger=order.reason,
        clients=list(committed.result.metrics.clients),
        sent_to=len(fan.queued),
        dropped=fan.dropped,
        aggregation_s=round(aggregation_s, 4),
        broadcast_s=round(broadcast_s, 4),
    )
    item = Published(
        committed, fan, order.reason, order.waited_s, aggregation_s, time.time(), broadcast_s
    )
    state.reports.put_nowait(item)
    stop_at = state.settings.stop_after_versions
    if stop_at is not None and version >= stop_at:
        state.request_stop("stop_after_versions", ByeCode.FINISHED)  # clients exit


async def report(state: ServerState) -> None:
    """Evaluate (when the cadence asks) and write one metrics record per published version."""
    while True:
        item = await state.reports.get()
        if item is None:
            return
        evaluation = None
        version = item.committed.version
        if state.central.wants(version):
            tensors = item.committed.result.global_tensors
            evaluation = await state.evaluate(tensors, version)
            log.info("global_model_evaluated", model_version=version, **evaluation)
        state.metrics.write("aggregation", **aggregation_record(item, evaluation))
        if state.feedback is not None:
            state.feedback.after_evaluation(
                version,
                evaluation,
                item.committed.bytes_in,
                state.sessions.values(),
                time.monotonic(),
            )


def aggregation_record(item: Published, evaluation: dict[str, float] | None) -> dict[str, Any]:
    m = item.committed.result.metrics
    return {
        "version": item.committed.version,
        "published_time": item.published_time,
        "strategy": m.strategy,
        "trigger": item.trigger,
        "clients": list(m.clients),
        "weights": m.weights,
        "update_norms": m.update_norms,
        "step_norm": m.step_norm,
        "excluded": m.excluded,
        "tensor_clients": m.tensor_clients,
        "extra": m.extra,
        "robust": m.robust,  # the [robust] rule's record ({} for rule "none")
        "privacy": m.privacy,  # central DP: the noised mean and ε spent ({} when off)
        "bytes_in": item.committed.bytes_in,
        "bytes_out": item.fan.bytes_out,
        "sent_to": item.fan.queued,
        "dropped": item.fan.dropped,
        "time_to_quorum_s": item.time_to_quorum_s,
        "aggregation_s": item.aggregation_s,
        "broadcast_s": item.broadcast_s,
        "broadcast_encoding": item.committed.encoding.value,
        "broadcast_error": item.committed.encoding_error,
        "distill": item.committed.distill,  # [distill]: the KD report (None: not distilled)
        "checkpoint_s": item.committed.checkpoint_s,
        "durable": item.committed.durable,  # False: its checkpoint failed every retry
        "checkpoint_failures": item.committed.checkpoint_failures,  # since the start
        "evaluation": evaluation,
    }
