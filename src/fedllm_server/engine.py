"""The aggregation engine: global model, strategy state, round sum / GSFS pool, durability.

Rules: every method here is synchronous numpy + file I/O and is only ever called from ONE
worker thread (the daemon's engine executor), so no locks are needed and an accept can never
interleave with an aggregation. An update is appended (fsynced) to the pool log before it is
folded or pooled, and the caller Acks only after `accept` returns: nothing acknowledged is lost.
After each aggregation a checkpoint generation is written and only then the log is reset, so a
crash between the two replays the same updates into the same version and aggregates again.
Synchronous rounds fold each update into one running weighted sum (O(model) memory); GSFS keeps
one entry per client in the pool (that is the algorithm).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedllm_proto.messages import Update
from fedllm_server import pool as gsfs_pool
from fedllm_server.durable.checkpoint import Checkpoint, CheckpointStore
from fedllm_server.durable.poollog import LoggedUpdate, PoolLog
from fedllm_server.strategies import fedavg, fedopt, gsfs
from fedllm_server.strategies.base import ClientUpdate, StrategyResult, TensorDict
from fedllm_server.strategies.fedopt import FedOptState
from fedllm_server.strategies.settings import (
    FedAvgSettings,
    FedOptSettings,
    GsfsServerSettings,
    StrategySettings,
    ValidationSettings,
)
from fedllm_server.strategies.weighted_sum import WeightedSum
from fedllm_server.validation import DoorState, GlobalRef, UpdateView, Verdict, check_update


@dataclass(frozen=True)
class RestoreReport:
    version: int
    from_checkpoint: bool
    skipped: list[tuple[int, str]]  # corrupted generations passed over
    replayed: int  # pool-log records brought back
    torn_bytes: int
    resumed_round: int | None  # sync: the round the replayed updates belong to
    resumed_clients: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Aggregated:
    version: int
    result: StrategyResult[Any]
    reason: str
    waited_s: float  # GSFS: time from the wait start to quorum/timeout
    bytes_in: int
    checkpoint_s: float


class Engine:
    """Owns θ^v and everything needed to produce θ^{v+1} and survive a crash."""

    def __init__(
        self,
        strategy: StrategySettings,
        validation: ValidationSettings,
        fingerprint: str,
        store: CheckpointStore,
        log: PoolLog,
        now: float,
    ) -> None:
        self.strategy = strategy
        self.validation = validation
        self.fingerprint = fingerprint
        self.door = DoorState()
        self.enrolled: set[str] = set()  # every client admitted so far (GSFS N)
        self.store = store
        self.log = log
        self.version = 0
        self.global_tensors: TensorDict = {}
        self.next_round = 0
        self.fedopt_state = FedOptState()
        # sync rounds fold into this; GSFS aggregates in it. One instance for the daemon's life,
        # so every aggregation reuses the same (already touched) float64 sums.
        self.acc = WeightedSum(keep_buffers=True)
        self.round_bytes = 0
        self.pool = (
            gsfs_pool.GsfsPool(strategy, now) if isinstance(strategy, GsfsServerSettings) else None
        )

    # ------------------------------------------------------------------ start-up

    def restore(self, initial: TensorDict, now: float) -> RestoreReport:
        """Resume from the newest good checkpoint (or `initial` as version 0) plus the log."""
        loaded = self.store.load_latest()
        ckpt = loaded.checkpoint
        if ckpt is None:
            self.global_tensors = initial
            self._checkpoint(now)  # version 0 is durable too: a restart reuses the same θ^0
        else:
            self._load(ckpt, now)
        replay = self.log.open(self.version)
        resumed = self._replay(replay.records, now)
        return RestoreReport(
            version=self.version,
            from_checkpoint=ckpt is not None,
            skipped=loaded.skipped,
            replayed=len(replay.records),
            torn_bytes=replay.torn_bytes,
            resumed_round=replay.records[0].round if resumed else None,
            resumed_clients=resumed,
        )

    def _load(self, ckpt: Checkpoint, now: float) -> None:
        self.version = ckpt.version
        self.global_tensors = ckpt.global_state
        meta = ckpt.strategy_meta
        self.next_round = int(meta.get("next_round", 0))
        self.enrolled = set(meta.get("enrolled", []))
        if "door" in meta:
            self.door = DoorState.from_dict(meta["door"], now)
        if isinstance(self.strategy, FedOptSettings) and "fedopt_step" in meta:
            self.fedopt_state = _fedopt_from_arrays(ckpt.strategy_arrays, meta["fedopt_step"])
        if isinstance(self.strategy, GsfsServerSettings) and "pool" in meta:
            self.pool = gsfs_pool.GsfsPool.from_dict(self.strategy, meta["pool"], now)

    def _replay(self, records: list[LoggedUpdate], now: float) -> list[str]:
        for rec in records:
            self.door.remember(rec.client_id, rec.update_id, self.validation.replay_memory)
            self._admit(rec, now)
        return [rec.client_id for rec in records] if self.pool is None else []

    # ------------------------------------------------------------------ accepting updates

    def judge(self, client_id: str, fingerprint: str, update: Update, now: float) -> Verdict:
        """The door's verdict on `update` against the current global model."""
        ref = GlobalRef.from_tensors(self.fingerprint, self.version, self.global_tensors)
        view = UpdateView(
            client_id,
            update.update_id,
            fingerprint,
            update.base_version,
            update.tensors,
            update.sample_count,
        )
        sync = self.pool is None
        return check_update(view, ref, self.validation, self.door, now, sync=sync)

    def judge_and_accept(
        self, client_id: str, fingerprint: str, update: Update, now: float
    ) -> Verdict:
        """Validate, then (when accepted) durably log and fold/pool the update."""
        verdict = self.judge(client_id, fingerprint, update, now)
        if verdict.accepted:
            self.accept(_logged(client_id, update, time.time()), now)
        return verdict

    def accept(self, rec: LoggedUpdate, now: float) -> int:
        """Durably log and then fold/pool one validated update; returns bytes logged."""
        size = self.log.append(rec)
        self._admit(rec, now)
        return size

    def _admit(self, rec: LoggedUpdate, now: float) -> None:
        nbytes = sum(int(t.nbytes) for t in rec.tensors.values())
        self.round_bytes += nbytes
        if self.pool is not None:
            self.pool.add(_pool_entry(rec, now))
            return
        update = ClientUpdate(rec.client_id, rec.tensors, rec.sample_count, rec.base_version)
        self.acc.add(rec.client_id, rec.tensors, self._sync_weight(update))

    def _sync_weight(self, update: ClientUpdate) -> float:
        if isinstance(self.strategy, FedOptSettings):
            return fedopt.weight(update, self.strategy)
        assert isinstance(self.strategy, FedAvgSettings)
        return fedavg.weight(update, self.strategy)

    # ------------------------------------------------------------------ aggregating

    def enroll(self, client_id: str) -> None:
        self.enrolled.add(client_id)

    def pool_due(self, now: float) -> gsfs_pool.AggregationReason | None:
        """GSFS: quorum | timeout when the pool should be aggregated now, else None."""
        return None if self.pool is None else self.pool.due(now, len(self.enrolled))

    def pool_deadline(self, now: float) -> float | None:
        return None if self.pool is None else self.pool.next_deadline(now, len(self.enrolled))

    def aggregate_round(self, reason: str, next_round: int, now: float) -> Aggregated:
        """Apply the running sum of the closed round; checkpoint; reset the log."""
        new_version = self.version + 1
        result: StrategyResult[Any]
        try:
            if isinstance(self.strategy, FedOptSettings):
                result = fedopt.finish(
                    self.global_tensors, self.acc, self.fedopt_state, self.strategy, new_version
                )
                self.fedopt_state = result.state
            else:
                result = fedavg.finish(self.global_tensors, self.acc, new_version)
        finally:
            self.acc.reset()  # aggregated or empty: the next round starts from no sums
        self.next_round = next_round
        return self._commit(result, reason, 0.0, now)

    def aggregate_pool(self, reason: gsfs_pool.AggregationReason, now: float) -> Aggregated:
        """Take the GSFS pool and apply it (paper eq. 13-14); checkpoint; reset the log."""
        assert self.pool is not None and isinstance(self.strategy, GsfsServerSettings)
        batch = self.pool.take(now, reason)
        try:
            result = gsfs.aggregate(
                self.global_tensors, batch.updates, self.version, self.strategy, self.acc
            )
        finally:
            self.acc.reset()
        return self._commit(result, reason, batch.waited_s, now)

    def _commit(
        self, result: StrategyResult[Any], reason: str, waited: float, now: float
    ) -> Aggregated:
        self.global_tensors = result.global_tensors
        self.version = result.metrics.version
        bytes_in, self.round_bytes = self.round_bytes, 0
        started = time.perf_counter()
        self._checkpoint(now, result.metrics.to_dict())
        elapsed = time.perf_counter() - started
        return Aggregated(self.version, result, reason, waited, bytes_in, elapsed)

    def _checkpoint(self, now: float, metrics: dict[str, Any] | None = None) -> None:
        meta: dict[str, Any] = {
            "strategy": self.strategy.name,
            "next_round": self.next_round,
            "enrolled": sorted(self.enrolled),
            "door": self.door.to_dict(now),
        }
        arrays: TensorDict = {}
        if isinstance(self.strategy, FedOptSettings):
            meta["fedopt_step"] = self.fedopt_state.step
            arrays = _fedopt_to_arrays(self.fedopt_state)
        if self.pool is not None:
            pool_state = self.pool.to_dict(now)
            pool_state["entries"] = []  # pooled updates live in the log, not the checkpoint
            meta["pool"] = pool_state
        self.store.save(Checkpoint(self.version, self.global_tensors, arrays, meta, metrics or {}))
        self.log.reset(self.version)  # only now: the checkpoint is durable

    def close(self) -> None:
        self.log.close()


def _logged(client_id: str, update: Update, wall: float) -> LoggedUpdate:
    return LoggedUpdate(
        client_id=client_id,
        update_id=update.update_id,
        base_version=update.base_version,
        round=update.round,
        sample_count=update.sample_count,
        trigger=str(update.trigger),
        accepted_at=wall,
        metrics=dict(update.metrics),
        tensors=dict(update.tensors),
    )


def _pool_entry(rec: LoggedUpdate, now: float) -> gsfs_pool.PoolEntry:
    # A replayed entry arrives "now": the previous process's monotonic clock means nothing here.
    return gsfs_pool.PoolEntry(
        client_id=rec.client_id,
        update_id=rec.update_id,
        base_version=rec.base_version,
        arrival=now,
        sample_count=rec.sample_count,
        trigger=rec.trigger,
        tensors=rec.tensors,
    )


def _fedopt_to_arrays(state: FedOptState) -> TensorDict:
    arrays = {f"m/{k}": v for k, v in state.m.items()}
    arrays.update({f"u/{k}": v for k, v in state.u.items()})
    return arrays


def _fedopt_from_arrays(arrays: TensorDict, step: int) -> FedOptState:
    m = {k[2:]: np.ascontiguousarray(v) for k, v in arrays.items() if k.startswith("m/")}
    u = {k[2:]: np.ascontiguousarray(v) for k, v in arrays.items() if k.startswith("u/")}
    return FedOptState(m=m, u=u, step=int(step))
