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
A checkpoint write that fails with an I/O error is retried with backoff (`durable.retry`); if
it still fails the new version is served from memory and the log is left as it was (a crash
then resumes from the last durable version and aggregates the logged updates again), and new
updates are refused (`unexpected`, not the client's fault) until a retry (`flush_checkpoint`,
which the daemon calls periodically, or the next arrival) has made the state durable: nothing
is Acked that a restart could not bring back. The failures are counted for the metrics.
Distillation (`[distill]`, off by default): an optional `Refiner` turns the strategy's θ^{v+1}
into the distilled student before it is encoded, checkpointed and broadcast (distill/hook.py);
it runs here, in the engine thread, like the aggregation it follows.
Central DP (`[privacy] mode = "central"`): the engine owns the accountant. Before an
aggregation it records one event (σ, q = 1) for every client that could have contributed:
every client enrolled (the schedule's `durable["enrolled"]`) plus those in the aggregation. An
event that would pass the ε budget refuses the aggregation (`PrivacyBudgetRefused`, logged as
`privacy_budget_exhausted`): nothing is applied, the updates named are dropped and the server
keeps serving the last version. The new accountant is kept only once the aggregation is
applied (an empty one releases nothing); its ledgers go into every checkpoint.
Local DP (`mode = "local"`: the clients privatise, the server only accounts): each accepted
upload records one (σ, q = 1) event for its client before it is logged; one that would pass
the budget is refused (`unexpected`, not the client's fault). Each checkpoint also names the
updates held at that moment (`privacy_held`): they are in its ledgers and in the log again, so
a replay records only the others, and a restart counts every accepted upload exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import structlog

from fedllm_proto.codec import Encoding
from fedllm_proto.messages import RejectCode, Update
from fedllm_server.accepted import AcceptedUpdate
from fedllm_server.broadcast_encoding import BroadcastSettings, choose
from fedllm_server.distill.hook import Refiner
from fedllm_server.durable.checkpoint import Checkpoint, CheckpointStore
from fedllm_server.durable.poollog import PoolLog
from fedllm_server.durable.retry import Attempts, RetrySettings, retry_io
from fedllm_server.privacy import PrivacyAccountant, PrivacyBudgetExceededError, PrivacySettings
from fedllm_server.strategies.base import EmptyAggregationError, Strategy, StrategyResult, Weighing
from fedllm_server.strategies.settings import ValidationSettings
from fedllm_server.strategies.weighted_sum import WeightedSum
from fedllm_server.tensors import TensorDict
from fedllm_server.validation import (
    DoorRules,
    DoorState,
    GlobalRef,
    NormBoundSettings,
    Sender,
    Verdict,
    check_update,
)

log = structlog.get_logger("fedllm.server.engine")
NOT_DURABLE = "the server cannot write its checkpoint now; retry later"


class PrivacyBudgetRefused(EmptyAggregationError):
    """The aggregation would take the federation past its ε budget: nothing was applied."""


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
    durable: bool = True  # False: its checkpoint failed every retry (served from memory)
    checkpoint_failures: int = 0  # failed checkpoint writes since the engine started
    encoding: Encoding = Encoding.RAW  # how this version is broadcast (broadcast_encoding.py)
    encoding_error: float = 0.0  # its relative error against the version's step
    distill: Mapping[str, float | int] | None = None  # the refiner's report (None: not refined)


class Engine:
    """Owns θ^v and everything needed to produce θ^{v+1} and survive a crash."""

    def __init__(
        self,
        strategy: Strategy,
        validation: ValidationSettings,
        fingerprint: str,
        store: CheckpointStore,
        log: PoolLog,
        retry: RetrySettings | None = None,
        norm_bound: NormBoundSettings | None = None,
        privacy: PrivacySettings | None = None,
        broadcast: BroadcastSettings | None = None,
        refiner: Refiner | None = None,
    ) -> None:
        self.strategy = strategy
        self.refiner = refiner  # [distill]: θ^{v+1} distilled before it is published
        self.broadcast = broadcast or BroadcastSettings()
        self.privacy = privacy or PrivacySettings()
        self.accountant: PrivacyAccountant | None = None
        if self.privacy.mode != "off":
            self.accountant = PrivacyAccountant(self.privacy.accountant_config())
        self._privacy_held: frozenset[str] = frozenset()  # local: held at the last checkpoint
        self.validation = validation
        self.fingerprint = fingerprint
        self.rules = DoorRules(
            validation,
            strategy.max_lag(validation),
            not strategy.partial_updates,
            norm_bound or NormBoundSettings(),
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
        self.retry = retry or RetrySettings()
        self.checkpoint_attempts = Attempts()
        self._unsaved: Checkpoint | None = None  # a generation whose write kept failing

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
        if self.accountant is not None and "privacy" in meta:
            config = self.privacy.accountant_config()  # δ and budget from today's settings
            self.accountant = PrivacyAccountant.from_dict(meta["privacy"], config)
            self._privacy_held = frozenset(str(u) for u in meta.get("privacy_held", []))
        return Loaded(ckpt.version, True, loaded.skipped, meta)

    def replay(self) -> Replayed:
        """Open the pool log for the current version and hold what it already holds."""
        replay = self.log.open(self._version)
        for update in replay.records:
            self.door.remember(update.client_id, update.update_id, self.validation.replay_memory)
            if update.update_id not in self._privacy_held:
                self._account_upload(update.client_id, checked=False)
            self._hold(update)
        return Replayed(list(replay.records), replay.torn_bytes)

    # ------------------------------------------------------------------ arrivals

    def accept(self, sender: Sender, update: Update, now: float, wall: float) -> Verdict:
        """Judge `update` at the door; when accepted, durably log and hold it."""
        if self._unsaved is not None and not self.flush_checkpoint():
            return Verdict(RejectCode.UNEXPECTED, NOT_DURABLE, blame=False)
        verdict = check_update(update, sender, self._ref, self.rules, self.door, now, wall)
        if verdict.update is not None:
            try:
                self._account_upload(sender.client_id)
            except PrivacyBudgetExceededError as exc:
                _log_budget_exhausted(exc, "local-mode upload refused", client_id=sender.client_id)
                return Verdict(RejectCode.UNEXPECTED, str(exc), verdict.norm, blame=False)
            self.log.append(verdict.update)
            self._hold(verdict.update)
        return verdict

    def _account_upload(self, client_id: str, checked: bool = True) -> None:
        """Local DP: one (σ, 1) event for this client's upload (a no-op in other modes)."""
        if self.accountant is not None and self.privacy.local:
            sigma = self.privacy.noise_multiplier
            self.accountant = self.accountant.record_local_upload(client_id, sigma, checked)

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
            accountant = self._account(fold, durable)
            self.fold(fold)
            result = self.strategy.finish(
                self.global_tensors, self.acc, self.strategy_state, self._version + 1
            )
        finally:
            self.acc.reset()  # aggregated or empty: the next one starts from no sums
        if accountant is not None:
            self.accountant = accountant
        if self.accountant is not None:
            privacy = {
                **result.metrics.privacy,
                "mode": self.privacy.mode,
                "accountant": self.accountant.report(),
            }
            result = replace(result, metrics=replace(result.metrics, privacy=privacy))
        self.strategy_state = result.state
        result, distilled = self._refine(result)
        # θ^{v+1} becomes what the clients will decode, so both sides hold the same model
        choice = choose(self.broadcast, result.global_tensors, self.global_tensors)
        result = replace(result, global_tensors=choice.tensors)
        self._set_global(result.metrics.version, result.global_tensors)
        bytes_in, self._bytes_in = self._bytes_in, 0
        started = time.perf_counter()
        saved = self.checkpoint(durable, now, result.metrics.to_dict())
        elapsed = time.perf_counter() - started
        failures = self.checkpoint_attempts.failures
        return Committed(
            self._version,
            result,
            bytes_in,
            elapsed,
            saved,
            failures,
            choice.encoding,
            choice.error,
            distilled,
        )

    def _refine(
        self, result: StrategyResult[Any]
    ) -> tuple[StrategyResult[Any], Mapping[str, float | int] | None]:
        """θ^{v+1} through the refiner (distillation), before it is encoded and checkpointed,
        so what is saved and broadcast is the distilled student; its report, or None."""
        if self.refiner is None:
            return result, None
        refined = self.refiner.refine(result.global_tensors, result.metrics.version)
        if refined is None:
            return result, None
        return replace(result, global_tensors=refined.tensors), refined.report

    def _account(
        self, fold: Mapping[str, int], durable: Mapping[str, Any]
    ) -> PrivacyAccountant | None:
        """The accountant with this aggregation recorded (None when DP is off); raises
        `PrivacyBudgetRefused`, dropping the updates named, past the budget."""
        if self.accountant is None or not self.privacy.central:
            return None
        eligible = {str(cid): 1.0 for cid in durable.get("enrolled", [])}
        eligible.update({self.held[uid].client_id: 1.0 for uid in fold if uid in self.held})
        try:
            return self.accountant.record_aggregation(self.privacy.noise_multiplier, eligible)
        except PrivacyBudgetExceededError as exc:
            self.drop(fold)  # the schedule has already let them go
            _log_budget_exhausted(
                exc, "aggregation refused; serving the last version", model_version=self._version
            )
            raise PrivacyBudgetRefused(str(exc)) from exc

    def checkpoint(
        self, durable: Mapping[str, Any], now: float, metrics: dict[str, Any] | None = None
    ) -> bool:
        """Write the current version's generation, then start its log (held updates again);
        False when every retry failed (the generation stays pending, see the module rules)."""
        arrays, strategy_meta = self.strategy.state_to_arrays(self.strategy_state)
        meta: dict[str, Any] = {
            "strategy": self.strategy.name,
            "door": self.door.to_dict(now),
            **durable,
            **strategy_meta,
        }
        if self.accountant is not None:
            meta["privacy"] = self.accountant.to_dict()  # ledgers, not ε (docs/privacy.md)
            meta["privacy_held"] = sorted(self.held)  # local: in the ledgers and logged again
        ckpt = Checkpoint(self._version, self.global_tensors, arrays, meta, metrics or {})
        self._unsaved = ckpt  # a newer generation supersedes one still pending
        try:
            retry_io(lambda: self._commit(ckpt), self.retry, self.checkpoint_attempts, "checkpoint")
        except OSError as exc:
            log.error(
                "checkpoint_unsaved",
                model_version=ckpt.version,
                error=str(exc),
                failures=self.checkpoint_attempts.failures,
                detail="serving from memory; updates are refused until a retry succeeds",
            )
            return False
        return True

    def _commit(self, ckpt: Checkpoint) -> None:
        """Save `ckpt`, then reset the log to it (the whole step is safe to repeat)."""
        self.store.save(ckpt)
        self.log.reset(ckpt.version)  # only now: the checkpoint is durable
        for update in self.held.values():
            self.log.append(update)
        self._unsaved = None

    @property
    def checkpoint_pending(self) -> bool:
        """A generation is in memory only (the event loop may read this)."""
        return self._unsaved is not None

    def flush_checkpoint(self) -> bool:
        """One more try at a pending generation; True when nothing is pending any more."""
        ckpt = self._unsaved
        if ckpt is None:
            return True
        try:
            self._commit(ckpt)
        except OSError as exc:
            self.checkpoint_attempts.failures += 1
            log.warning(
                "checkpoint_write_failed",
                what="checkpoint",
                attempt="later",
                error=str(exc),
                failures=self.checkpoint_attempts.failures,
            )
            return False
        log.info("checkpoint_recovered", model_version=ckpt.version)
        return True

    def close(self) -> None:
        self.log.close()


def _log_budget_exhausted(exc: PrivacyBudgetExceededError, detail: str, **where: Any) -> None:
    log.error(
        "privacy_budget_exhausted",
        **where,
        epsilon_spent=exc.spent,
        epsilon_next=exc.would_be,
        epsilon_budget=exc.budget,
        detail=detail,
    )
