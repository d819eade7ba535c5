"""``Learner``: the client's learning state machine, independent of the network: what happens to
the local model and its persisted state when a global model arrives, when steps run, when a
trigger fires, when an update is sent.

Rules: every method runs on the worker thread (worker_thread.py), one at a time, so model and
``ClientState`` are only ever touched by that thread; counters are updated inside the same call
that ran the steps, so a link cancelled mid-chunk never loses count. The server link
(server_link.py) decides *when*; this module decides *what*. A GSFS trigger decision's new state is
committed only after the upload was sent (trigger.py's contract).
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass

import numpy as np
import structlog

from fedllm_client import trigger as policy
from fedllm_client.attack import poison_delta
from fedllm_client.compression import Choice, Compressor
from fedllm_client.local_model import LocalModel, StepResult
from fedllm_client.metrics_log import MetricsLog
from fedllm_client.progress import Progress
from fedllm_client.settings import ClientSettings
from fedllm_client.state import ClientState, StateError, StateStore
from fedllm_client.synthetic_model import SyntheticModel
from fedllm_core.data import load_client_data
from fedllm_core.energy import EnergyMeter
from fedllm_core.model import fingerprint_parts, model_fingerprint
from fedllm_proto.codec import TensorDict
from fedllm_proto.messages import PROTOCOL_VERSIONS, Hello, TriggerReason, Update

log = structlog.get_logger("fedllm.client")
CAPABILITIES = ("fedavg", "fedopt", "gsfs", "partial_updates", "tuning", "global_encodings")


@dataclass(frozen=True)
class PendingUpload:
    """An update built for sending, with what to commit once it is on the wire."""

    update: Update
    decision: policy.Decision | None
    trigger_state: policy.TriggerState | None
    layers: list[str]
    final: bool = False  # the one upload after the budget is spent
    compression: Choice | None = None  # how it is encoded; its residual is kept once sent


class Learner:
    def __init__(
        self, settings: ClientSettings, model: LocalModel, store: StateStore, state: ClientState
    ) -> None:
        self.settings, self.model, self.store, self.state = settings, model, store, state
        self.metrics = MetricsLog(settings.metrics_path, settings.client_name or "")
        self.metrics.model_version = state.base_version
        self.trigger = (
            policy.TriggerState.from_dict(state.trigger)
            if state.trigger
            else policy.initial_state(state.steps_used)
        )
        self.energy = EnergyMeter(model.device)
        self._losses: list[float] = []  # since the last upload (Update.metrics["loss"])
        self._check_snapshot: TensorDict | None = None  # norm_source = parameter_change
        self._dirty = False  # model trained since state.local was last copied out
        self._since_persist = 0
        self._last_validation: dict[str, float] = {}
        self.progress = Progress(settings.max_total_steps)  # STATUS= and training_progress
        # The GSFS trigger thresholds in force: [trigger] until the server's feedback loop sends a
        # Tuning. Replaced whole (one reference assignment) from the loop thread; the worker
        # reads it at its next check, so a check never sees half of an update.
        self.trigger_settings = settings.trigger
        up = settings.upload
        self.compressor = Compressor(
            up.encoding,
            up.error_budget,
            up.raw_below_s,
            up.error_feedback,
            settings.privacy.local_dp(),
        )

    @classmethod
    def open(cls, settings: ClientSettings) -> Learner:
        """Build the model and restore the persisted state (slow: call on the worker)."""
        model = build_local_model(settings)
        store = StateStore(settings.state_dir)
        try:
            state = store.load()
        except StateError as exc:
            log.error("state_unusable", error=str(exc), action="starting_fresh")
            state = None
        if state is not None and state.fingerprint not in ("", model.fingerprint):
            # another model, labels or template: its tensors do not fit this one
            log.warning("state_unusable", error="saved for another model fingerprint")
            state = None
        state = state or ClientState(fingerprint=model.fingerprint)
        learner = cls(settings, model, store, state)
        learner._restore()
        return learner

    def _restore(self) -> None:
        s = self.state
        if s.base is not None:  # the proximal anchor is the global model, not our progress
            self.model.set_state(s.base)
            self.model.anchor()
        if s.local is not None:
            self.model.set_state(s.local)
        if s.optimizer is not None:
            self.model.load_optimizer_state(s.optimizer)
        resumed = s.steps_used > 0 or s.base_version >= 0
        self.metrics.write(
            "start",
            resumed=resumed,
            steps_used=s.steps_used,
            base_version=s.base_version,
            max_total_steps=self.settings.max_total_steps,
            trainer=self.settings.trainer,
            sample_count=self.model.sample_count,
            fingerprint=self.model.fingerprint,
            device=self.model.device,
        )

    # ------------------------------------------------------------------ handshake, globals
    @property
    def budget_left(self) -> int:
        return max(0, self.settings.max_total_steps - self.state.steps_used)

    def hello(self) -> Hello:
        return Hello(
            protocol_versions=PROTOCOL_VERSIONS,
            model_fingerprint=self.model.fingerprint,
            fingerprint_parts=self.model.fingerprint_parts,
            capabilities=CAPABILITIES,
            sample_count=self.model.sample_count,
            last_global_version=self.state.base_version,
            client_name=self.settings.client_name or "" if self.settings.insecure else "",
        )

    def wants_global(self, version: int) -> bool:
        """A global model we already train from (a reconnect) must not discard our progress."""
        return self.state.local is None or version != self.state.base_version

    def apply_global(self, version: int, tensors: TensorDict, gsfs: bool) -> bool:
        """Swap the new global model in between steps and start a new reference point.

        Decided here, on the worker, so two queued applies of one version apply it once."""
        if not self.wants_global(version):
            log.info("global_kept", version=version, reason="already_based_on_it")
            return False
        s = self.state
        previous = s.base_version
        self.model.set_state(tensors)
        self.model.anchor()
        if self.settings.reset_optimizer_on_global:
            self.model.reset_optimizer()
        s.base, s.local, s.base_version = tensors, tensors, version
        s.changed_since_upload = s.trained_on_base = False
        self._dirty = False
        self.metrics.model_version = version
        m_ref = None
        if gsfs:
            m_ref = self._metric(self.validate("broadcast"))
            self.trigger = policy.on_broadcast(
                self.trigger, s.steps_used, m_ref, self.trigger_settings
            )
            self._check_snapshot = None
        self.metrics.write(
            "broadcast_applied",
            version=version,
            previous_version=previous,
            step=s.steps_used,
            m_ref=m_ref,
        )
        log.info("global_applied", version=version, previous_version=previous)
        self.persist()
        return True

    def reset_to_base(self) -> None:
        """Sync strategies: every round trains from θ^v, not from last round's θ_i."""
        if self.state.trained_on_base and self.state.base is not None:
            self.model.set_state(self.state.base)
            self.model.anchor()
            if self.settings.reset_optimizer_on_global:
                self.model.reset_optimizer()
            self.state.local = self.state.base
            self.state.trained_on_base = self._dirty = False

    # ------------------------------------------------------------------ training
    def train_chunk(self, n: int) -> list[StepResult]:
        """Run ``n`` local steps (capped by the budget) and account for them."""
        results = []
        for _ in range(min(n, self.budget_left)):
            result = self.model.step()
            results.append(result)
            self._after_step(result)
        return results

    def _after_step(self, result: StepResult) -> None:
        s = self.state
        s.steps_used += 1
        s.steps_since_upload += 1
        s.changed_since_upload = s.trained_on_base = self._dirty = True
        self._since_persist += 1
        self._losses.append(result.loss)
        self.progress.step(s.steps_used, result.loss)
        if s.steps_used % self.settings.metrics_step_every == 0:
            window = self._losses[-self.settings.metrics_step_every :]
            self.metrics.write("step", step=s.steps_used, loss=result.loss, loss_avg=_mean(window))
        if s.steps_used % self.settings.energy_every_steps == 0:
            self.metrics.write("energy", step=s.steps_used, **self.energy.read().to_dict())
        if self.budget_left == 0:
            self.metrics.write("budget_exhausted", step=s.steps_used)
            log.info("budget_exhausted", steps_used=s.steps_used)

    def validate(self, why: str) -> dict[str, float]:
        result = self.model.validate()
        if result:
            self._last_validation = result
            self.metrics.write("validation", step=self.state.steps_used, why=why, **result)
        return result

    def retune(self, version: int, perf_delta: float, kappa: float) -> None:
        """The server's feedback loop chose new trigger thresholds (protocol TUNING)."""
        before = self.trigger_settings
        self.trigger_settings = before.model_copy(update={"perf_delta": perf_delta, "kappa": kappa})
        self.metrics.write(
            "tuning_applied",
            version=version,
            perf_delta=perf_delta,
            kappa=kappa,
            previous_perf_delta=before.perf_delta,
            previous_kappa=before.kappa,
        )
        log.info("tuning_applied", model_version=version, perf_delta=perf_delta, kappa=kappa)

    def _metric(self, result: dict[str, float]) -> float | None:
        return result.get(self.settings.trigger.metric)

    # ------------------------------------------------------------------ GSFS
    def gsfs_chunk(self) -> PendingUpload | None:
        """Train up to the next check; at a check evaluate the triggers (paper eq. 7-11)."""
        ts = self.trigger_settings
        to_check = ts.check_every - (self.state.steps_used - self.trigger.last_check_step)
        results = self.train_chunk(max(1, min(self.settings.steps_per_chunk, to_check)))
        step = self.state.steps_used
        if not results or not policy.is_check_step(self.trigger, step, ts):
            return None
        metric = self._metric(self.validate("check"))
        obs = policy.Observation(step, self._layer_norms(results[-1]), metric)
        decision, new_state = policy.decide(self.trigger, obs, ts)
        if decision.fire:
            return self.build_update(_REASONS[decision.reason], -1, decision, new_state)
        self.trigger = new_state
        if decision.suppressed:
            self.metrics.write("trigger_suppressed", step=step, **_decision_fields(decision))
        return None

    def _layer_norms(self, last: StepResult) -> dict[str, float]:
        if self.settings.trigger.norm_source == "gradient":
            return last.layer_grad_norms
        current = self.model.state()
        before, self._check_snapshot = self._check_snapshot or self.state.local or current, current
        return _layer_change_norms(self.model.layers(), current, before)

    def final_upload(self) -> PendingUpload | None:
        """Budget spent: one last upload if the model changed since the previous one.

        Recorded only once it is on the wire (``uploaded``): a built upload can still be
        dropped (a Bye or a lost connection before or while sending) and built again later."""
        if not self.state.changed_since_upload or self.state.base is None:
            return None
        pending = self.build_update(TriggerReason.MAX_SILENCE, -1, None, None)
        return dataclasses.replace(pending, final=True)

    # ------------------------------------------------------------------ updates
    def build_update(
        self,
        reason: TriggerReason,
        round_: int,
        decision: policy.Decision | None,
        trigger_state: policy.TriggerState | None,
    ) -> PendingUpload:
        """Δ = θ_i − θ^{base_version} (only significant layers for GSFS partial updates)."""
        assert self.state.base is not None, "update before any global model"
        delta = poison_delta(self.model.delta(self.state.base), self.settings.attack)
        layers = sorted(self.model.layers())
        if round_ < 0 and self.settings.trigger.partial_updates:
            layers = self._significant(delta)
            groups = self.model.layers()
            delta = {name: delta[name] for layer in layers for name in groups[layer]}
        choice = self.compressor.choose(delta, self.state.base_version)
        update = Update(
            update_id=uuid.uuid4().hex,
            base_version=self.state.base_version,
            round=round_,
            sample_count=self.model.sample_count,
            trigger=reason,
            metrics=self._update_metrics(),
            tensors=choice.tensors,
            encoding=choice.encoding,
        )
        return PendingUpload(update, decision, trigger_state, layers, compression=choice)

    def _significant(self, delta: TensorDict) -> list[str]:
        assert self.state.base is not None
        groups = self.model.layers()
        changes = _group_norms(groups, delta)
        magnitudes = _group_norms(groups, self.state.base)
        return policy.significant_layers(changes, magnitudes, self.settings.trigger)

    def _update_metrics(self) -> dict[str, float]:
        out = {f"val_{k}": float(v) for k, v in self._last_validation.items()}
        out["steps_used"] = float(self.state.steps_used)
        out["steps_since_upload"] = float(self.state.steps_since_upload)
        if self._losses:
            out["loss"] = _mean(self._losses)
        return out

    def uploaded(self, pending: PendingUpload, nbytes: int, seconds: float = 0.0) -> None:
        """The update is on the wire (``nbytes`` in ``seconds``): commit counters, the
        trigger's new reference point and the compressor's residual."""
        s, u = self.state, pending.update
        if pending.compression is not None:
            self.compressor.commit(pending.compression, nbytes, seconds)
        s.uploads += 1
        s.bytes_up += nbytes
        s.steps_since_upload = 0
        s.changed_since_upload = False
        s.last_round = max(s.last_round, u.round)
        if pending.trigger_state is not None:
            self.trigger = pending.trigger_state
        self._losses.clear()
        self.progress.waiting(s.base_version + 1)
        if pending.final:
            self.metrics.write("final_upload", step=s.steps_used)
        fields = _decision_fields(pending.decision) if pending.decision else {}
        self.metrics.write(
            "upload",
            update_id=u.update_id,
            step=s.steps_used,
            base_version=u.base_version,
            round=u.round,
            trigger=u.trigger.value,
            bytes=nbytes,
            tensors=len(u.tensors),
            layers=len(pending.layers),
            layers_total=len(self.model.layers()),
            encoding=u.encoding.value,
            **_compression_fields(pending.compression),
            **fields,
        )
        self.persist()

    # ------------------------------------------------------------------ persistence, end
    def persist_due(self) -> bool:
        return self._since_persist >= self.settings.persist_every_steps

    def persist(self) -> None:
        s = self.state
        if self._dirty:
            s.local = self.model.state()
            self._dirty = False
        if s.trained_on_base:
            s.trained = s.local
        s.optimizer = self.model.optimizer_state()
        s.trigger = self.trigger.to_dict()
        self.store.save(s, with_tensors=self.model.persists_tensors)
        self._since_persist = 0

    def final_eval(self) -> dict[str, float] | None:
        """The client's last LOCAL trained model on the test split ("client model (avg)")."""
        fe = self.settings.final_eval
        tensors = self.state.trained if self.state.trained is not None else self.state.local
        if not fe.enabled or tensors is None:
            return None
        self.model.set_state(tensors)
        result = self.model.evaluate_test(fe.max_samples)
        self.metrics.write("final_eval", steps_used=self.state.steps_used, **result)
        log.info("final_eval", **result)
        return result

    def close(self, reason: str) -> None:
        s = self.state
        self.metrics.write(
            "stop",
            reason=reason,
            steps_used=s.steps_used,
            uploads=s.uploads,
            bytes_up=s.bytes_up,
            bytes_down=s.bytes_down,
            energy=self.energy.read().to_dict(),
        )
        self.metrics.close()


def build_local_model(settings: ClientSettings) -> LocalModel:
    """The configured model (slow for LoRA: loads data and weights; call on the worker)."""
    if settings.trainer == "synthetic":
        data = load_client_data(settings.data)  # labels, template, n_i: no model is built
        fingerprint = model_fingerprint(settings.model, data.label_names, data.template)
        parts = fingerprint_parts(settings.model, data.label_names, data.template)
        return SyntheticModel(settings.synthetic, fingerprint, data.sample_count, parts)
    from fedllm_client.lora_model import LoraModel  # data + weights only when really training

    return LoraModel.build(settings)


_REASONS = {
    policy.FireReason.PERFORMANCE: TriggerReason.PERFORMANCE,
    policy.FireReason.GRADIENT_NORM: TriggerReason.GRADIENT_NORM,
    policy.FireReason.MAX_SILENCE: TriggerReason.MAX_SILENCE,
    None: TriggerReason.MAX_SILENCE,
}


def _decision_fields(decision: policy.Decision) -> dict[str, object]:
    reason = decision.reason.value if decision.reason else None
    return {
        "reason": reason,
        "layer": decision.layer,
        "suppressed": decision.suppressed,
        **decision.values,
    }


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _group_norms(groups: dict[str, list[str]], tensors: TensorDict) -> dict[str, float]:
    return {
        layer: float(np.sqrt(sum(float(np.vdot(tensors[n], tensors[n])) for n in names)))
        for layer, names in groups.items()
    }


def _layer_change_norms(
    groups: dict[str, list[str]], current: TensorDict, before: TensorDict
) -> dict[str, float]:
    diff = {name: current[name] - before[name] for name in current}
    return _group_norms(groups, diff)


def _compression_fields(choice: Choice | None) -> dict[str, object]:
    if choice is None:
        return {}
    return {
        "raw_bytes": choice.raw_bytes,
        "encoding_error": round(choice.relative_error, 6),
        "encoding_reason": choice.reason,
    }
