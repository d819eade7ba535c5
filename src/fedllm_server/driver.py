"""The coordinator loop: start/close rounds or watch the GSFS pool, aggregate, publish, report.

Rules: one driver task per server. It polls the round state machine (sync strategies) or the
pool's quorum/timeout (GSFS) with the loop's monotonic `now`, sleeping until the next deadline
or until a session wakes it (an accepted update, a join or a leave). Aggregation and the
checkpoint run in the engine thread; the new global model is encoded once and fanned out to
every connected client. Central evaluation and the metrics record run in a separate reporter
task (evaluation in its own thread), so the next round never waits for an evaluation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from fedllm_proto.messages import ByeCode, TrainRequest
from fedllm_server.broadcast import FanOut, encode_global, fan_out
from fedllm_server.coordinator import CloseRound, StartRound
from fedllm_server.engine import Aggregated
from fedllm_server.strategies.base import EmptyAggregationError

if TYPE_CHECKING:
    from fedllm_server.daemon import Server

log = structlog.get_logger("fedllm.server")
MAX_SLEEP_S = 1.0


@dataclass(frozen=True)
class Published:
    """One new global version, queued for the reporter."""

    agg: Aggregated
    fan: FanOut
    trigger: str  # complete | deadline | dropouts | quorum | timeout
    time_to_quorum_s: float
    aggregation_s: float
    published_time: float  # wall clock when it was queued to the clients


async def drive(server: Server) -> None:
    """Run until the server stops; an aggregation in flight is always finished first."""
    while not server.stopping.is_set():
        now = time.monotonic()
        if server.rounds is not None:
            if await _step_rounds(server, now):
                continue  # closing a round may make the next one startable now: don't sleep
            deadline = server.rounds.next_deadline()
        else:
            await _step_pool(server, now)
            deadline = await server.engine_call(server.engine.pool_deadline, now)
        await _sleep(server, deadline)


async def _sleep(server: Server, deadline: float | None) -> None:
    timeout = MAX_SLEEP_S
    if deadline is not None:
        timeout = min(timeout, max(0.0, deadline - time.monotonic()))
    server.wake.clear()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.wake.wait(), timeout)


async def _step_rounds(server: Server, now: float) -> bool:
    """Carry out what the round state machine asks for; True if it closed a round."""
    assert server.rounds is not None
    closed = False
    for action in server.rounds.poll(now):
        if isinstance(action, StartRound):
            start_round(server, action)
        elif isinstance(action, CloseRound):
            await _close_round(server, action)
            closed = True
    return closed


def start_round(server: Server, action: StartRound) -> None:
    """Send the train request to every selected client (also used for a reconnect)."""
    request = TrainRequest(action.round, action.base_version, action.local_steps, action.deadline_s)
    for cid in action.clients:
        session = server.sessions.get(cid)
        if session is not None:
            session.offer(request)
    log.info(
        "round_started",
        round=action.round,
        model_version=action.base_version,
        clients=list(action.clients),
        deadline_s=action.deadline_s,
    )


async def _close_round(server: Server, action: CloseRound) -> None:
    assert server.rounds is not None
    log.info(
        "round_closed",
        round=action.round,
        reason=action.reason,
        contributed=list(action.contributed),
        stragglers=list(action.stragglers),
        dropouts=list(action.dropouts),
        model_version=server.engine.version,
    )
    server.metrics.write(
        "round",
        round=action.round,
        reason=action.reason,
        base_version=server.engine.version,
        contributed=list(action.contributed),
        stragglers=list(action.stragglers),
        dropouts=list(action.dropouts),
        duration_s=action.closed_at - action.started_at,
    )
    if not action.contributed:
        log.warning("round_abandoned", round=action.round, model_version=server.engine.version)
        return
    started = time.perf_counter()
    try:
        agg = await server.engine_call(
            server.engine.aggregate_round, action.reason, server.rounds.next_round, time.monotonic()
        )
    except EmptyAggregationError:  # every reserved contribution was rejected at the door
        server.rounds.aggregated(server.engine.version)
        log.warning("round_abandoned", round=action.round, model_version=server.engine.version)
        return
    await publish(
        server,
        agg,
        action.reason,
        action.closed_at - action.started_at,
        time.perf_counter() - started,
    )


async def _step_pool(server: Server, now: float) -> None:
    reason = await server.engine_call(server.engine.pool_due, now)
    if reason is None:
        return
    started = time.perf_counter()
    try:
        agg = await server.engine_call(server.engine.aggregate_pool, reason, time.monotonic())
    except EmptyAggregationError as exc:  # every pooled entry was excluded (too stale)
        log.warning("pool_aggregation_empty", detail=str(exc))
        return
    await publish(server, agg, reason, agg.waited_s, time.perf_counter() - started)


async def publish(
    server: Server, agg: Aggregated, trigger: str, to_quorum_s: float, aggregation_s: float
) -> None:
    """Encode the new global model once, fan it out, queue the report, maybe stop."""
    tensors = agg.result.global_tensors
    server.prepared = await encode_global(agg.version, tensors)
    fan = fan_out(server.sessions.values(), server.prepared)
    if server.rounds is not None:
        server.rounds.aggregated(agg.version)
    m = agg.result.metrics
    log.info(
        "global_model_published",
        model_version=agg.version,
        trigger=trigger,
        clients=list(m.clients),
        sent_to=len(fan.queued),
        dropped=fan.dropped,
        aggregation_s=round(aggregation_s, 4),
    )
    server.reports.put_nowait(Published(agg, fan, trigger, to_quorum_s, aggregation_s, time.time()))
    stop_at = server.settings.stop_after_versions
    if stop_at is not None and agg.version >= stop_at:
        server.request_stop("stop_after_versions", ByeCode.FINISHED)  # clients exit


async def report(server: Server) -> None:
    """Evaluate (when the cadence asks) and write one metrics record per published version."""
    while True:
        item = await server.reports.get()
        if item is None:
            return
        evaluation = None
        if server.central.wants(item.agg.version):
            evaluation = await server.evaluate(item.agg.result.global_tensors, item.agg.version)
            log.info("global_model_evaluated", model_version=item.agg.version, **evaluation)
        server.metrics.write("aggregation", **aggregation_record(item, evaluation))


def aggregation_record(item: Published, evaluation: dict[str, float] | None) -> dict[str, Any]:
    m = item.agg.result.metrics
    return {
        "version": item.agg.version,
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
        "bytes_in": item.agg.bytes_in,
        "bytes_out": item.fan.bytes_out,
        "sent_to": item.fan.queued,
        "dropped": item.fan.dropped,
        "time_to_quorum_s": item.time_to_quorum_s,
        "aggregation_s": item.aggregation_s,
        "checkpoint_s": item.agg.checkpoint_s,
        "evaluation": evaluation,
    }
