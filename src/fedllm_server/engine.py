"""The aggregation engine: θ^v and its version, the door, the held updates, durability.

Rules: every method is synchronous numpy + file I/O, called from ONE worker thread (the
daemon's engine thread) or from a test, so no locks are needed and an accept never interleaves
with an aggregation. The engine decides nothing about *when*: it validates and logs what
arrives, and folds, drops and aggregates the updates a schedule names (by update id) when told.
It is the one owner of the current global version. An accepted update is appended (fsynced) to
the pool log and held until it is folded; the caller Acks only after `accept` returns, so
nothing acknowledged is lost. After each aggregation a checkpoint generation is written, then
the log is reset and every update still held (accepted, not part of this aggregation) is
appended again: the log always holds exactly what a restart must bring back, and a crash
between checkpoint and reset replays the same updates into the same version.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fedllm_proto.messages import Update
from fedllm_server.accepted import AcceptedUpdate
from fedllm_server.durable.checkpoint import Checkpoint, CheckpointStore
from fedllm_server.durable.poollog import PoolLog
from fedllm_server.strategies.base import Strategy, StrategyResult, Weighing
from fedllm_server.strategies.settings import ValidationSettings
from fedllm_server.strategies.weighted_sum import WeightedSum
from fedllm_server.tensors import TensorDict
from fedllm_server.validation import DoorRules, DoorState, GlobalRef, Sender, Verdict, check_update


@dataclass(frozen=True)
class Loaded:
    """What start-up found: the version resumed and the checkpoint's metadata."""

    version: int
    from_checkpoint: bool
    skipped: list[tuple[int, str]]  # corrupted generations passed over
    meta: Mapping[str, Any]  # the checkpoint's strategy_meta ({} on a first start)


@dataclass(frozen=True)
class Replayed:
    """The pool log's records, held again (the schedule hears of them through `replayed`)."""

    updates: list[AcceptedUpdate]
    torn_bytes: int


@dataclass(frozen=True)
class Committed:
    """One applied aggregation, durable."""

    version: int
    result: StrategyResult[Any]
    bytes_in: int  # update bytes accepted since the previous aggregation
    checkpoint_s: float


class Engine:
    """Owns θ^v and everything needed to produce θ^{v+1} and survive a crash."""

    def __init__(
        self,
        strategy: Strategy,
        validation: ValidationSettings,
        fingerprint: str,
        store: CheckpointStore,
        log: PoolLog,
    ) -> None:
        self.strategy = strategy
        self.validation = validation
        self.fingerprint = fingerprint
        self.rules = DoorRules(
            validation, strategy.max_lag(validation), not strategy.partial_updates
        )
        self.door = DoorState()
        self.store = store
        self.log = log
        self._version = 0
        self.global_tensors: TensorDict = {}
        self._ref = GlobalRef(fingerprint, 0, {})
        self.strategy_state: Any = strategy.initial_state()
        # One accumulator for the daemon's life, so every aggregation reuses the same (already
        # touched) float64 sums.
        self.acc = WeightedSum(keep_buffers=True)
        self.held: dict[str, AcceptedUpdate] = {}  # update_id -> accepted, not yet folded
        self._bytes_in = 0

    @property
    def version(self) -> int:
        """The current global version (the event loop may read it; only this thread sets it)."""
        return self._version

    def _set_global(self, version: int, tensors: TensorDict) -> None:
        self.global_tensors = tensors
        self._ref = GlobalRef.from_tensors(self.fingerprint, version, tensors)
        self._version = version  # last: a reader never sees a version ahead of its tensors

    # ------------------------------------------------------------------ start-up

    def load(self, initial: TensorDict, now: float) -> Loaded:
        """Resume from the newest good checkpoint, or start from `initial` as version 0."""
        loaded = self.store.load_latest()
        ckpt = loaded.checkpoint
        if ckpt is None:
            self._set_global(0, initial)
            return Loaded(0, False, loaded.skipped, {})
        self._set_global(ckpt.version, ckpt.global_state)
        meta = ckpt.strategy_meta
        if "door" in meta:
            self.door = DoorState.from_dict(meta["door"], now)
        self.strategy_state = self.strategy.state_from_arrays(ckpt.strategy_arrays, meta)
        return Loaded(ckpt.version, True, loaded.skipped, meta)

    def replay(self) -> Replayed:
        """Open the pool log for the current version and hold what it already holds."""
        replay = self.log.open(self._version)
        for update in replay.records:
            self.door.remember(update.client_id, update.update_id, self.validation.replay_memory)
            self._hold(update)
        return Replayed(list(replay.records), replay.torn_bytes)

    # ------------------------------------------------------------------ arrivals

    def accept(self, sender: Sender, update: Update, now: float, wall: float) -> Verdict:
        """Judge `update` at the door; when accepted, durably log and hold it."""
        verdict = check_update(update, sender, self._ref, self.rules, self.door, now, wall)
        if verdict.update is not None:
            self.log.append(verdict.update)
            self._hold(verdict.update)
        return verdict

    def _hold(self, update: AcceptedUpdate) -> None:
        self.held[update.update_id] = update
        self._bytes_in += update.nbytes

    def fold(self, weights: Mapping[str, int]) -> None:
        """Fold the held updates named (update_id -> f_i) into the running sum; drop them."""
        for update_id, frequency in weights.items():
            update = self.held.pop(update_id)  # a schedule names only what was accepted
            self.strategy.fold(self.acc, update, Weighing(self._version, frequency))

    def drop(self, update_ids: Iterable[str]) -> None:
        """Forget superseded updates (their log records stay until the next reset)."""
        for update_id in update_ids:
            self.held.pop(update_id, None)

    # ------------------------------------------------------------------ aggregating

    def aggregate(
        self, fold: Mapping[str, int], durable: Mapping[str, Any], now: float
    ) -> Committed:
        """Fold `fold`, apply the sum (raises EmptyAggregationError), checkpoint with the
        schedule's `durable` state, reset the log."""
        try:
            self.fold(fold)
            result = self.strategy.finish(
                self.global_tensors, self.acc, self.strategy_state, self._version + 1
            )
        finally:
            self.acc.reset()  # aggregated or empty: the next one starts from no sums
        self.strategy_state = result.state
        self._set_global(result.metrics.version, result.global_tensors)
        bytes_in, self._bytes_in = self._bytes_in, 0
        started = time.perf_counter()
        self.checkpoint(durable, now, result.metrics.to_dict())
        return Committed(self._version, result, bytes_in, time.perf_counter() - started)

    def checkpoint(
        self, durable: Mapping[str, Any], now: float, metrics: dict[str, Any] | None = None
    ) -> None:
        """Write the current version's generation, then start its log (held updates again)."""
        arrays, strategy_meta = self.strategy.state_to_arrays(self.strategy_state)
        meta: dict[str, Any] = {
            "strategy": self.strategy.name,
            "door": self.door.to_dict(now),
            **durable,
            **strategy_meta,
        }
        self.store.save(Checkpoint(self._version, self.global_tensors, arrays, meta, metrics or {}))
        self.log.reset(self._version)  # only now: the checkpoint is durable
        for update in self.held.values():
            self.log.append(update)

    def close(self) -> None:
        self.log.close()
