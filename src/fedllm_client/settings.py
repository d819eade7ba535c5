"""``ClientSettings``: the client daemon's one frozen settings model (TOML + FEDLLM_CLIENT__ env).

Rules: every option an operator may touch lives here with its default and a comment; sections
shared with the server (data, model, train) come from fedllm_core, the GSFS trigger policy's
from ``fedllm_client.trigger``. Relative paths in the file are taken relative to the current
directory (systemd sets WorkingDirectory). A bad value raises ``SettingsError`` (exit 78)
naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, model_validator

from fedllm_client.attack import AttackSettings
from fedllm_client.backoff import BackoffSettings
from fedllm_client.trigger import TriggerSettings
from fedllm_core.data import DataSettings
from fedllm_core.model_settings import ModelSettings
from fedllm_core.observe_http import MetricsEndpointSettings
from fedllm_core.privacy import LocalPrivacySettings
from fedllm_core.settings import FrozenSettings, load_settings
from fedllm_core.train_settings import TrainSettings

ENV_PREFIX = "FEDLLM_CLIENT"
S = TypeVar("S", bound=FrozenSettings)


def _default(section: type[S]) -> Any:
    """A section's all-defaults instance as a field default (typed for mypy without a plugin)."""
    return Field(default_factory=lambda: section.model_validate({}))


class ServerAddress(FrozenSettings):
    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=1, le=65535)
    server_name: str = "localhost"  # TLS host name checked against the server certificate


class TlsSettings(FrozenSettings):
    ca: Path | None = None  # federation CA certificate
    cert: Path | None = None  # this client's certificate (its CN is the client id)
    key: Path | None = None


class UploadSettings(FrozenSettings):
    # raw is exact; fp16 halves, int8 quarters, topk sparsifies (all lossy). GSFS partial
    # updates (only significant layers) are set in [trigger] (partial_updates).
    # "adaptive": per upload, the fewest bytes within error_budget (fedllm_client/compression.py)
    encoding: Literal["raw", "fp16", "int8", "topk", "adaptive"] = "raw"
    # adaptive: largest relative reconstruction error ||rebuilt - delta|| / ||delta|| allowed
    error_budget: float = Field(default=0.05, gt=0, le=1)
    # adaptive: send raw when the measured link would take at most this long for it (0: never)
    raw_below_s: float = Field(default=0.0, ge=0)
    # lossy encodings: add what the last upload dropped to the next one (error feedback)
    error_feedback: bool = True


class SyntheticSettings(FrozenSettings):
    """``trainer = "synthetic"``: training replaced by a fixed random update (benchmarks of the
    federation's own cost, bench/round_overhead.py). No model is built: the update has the
    names and shapes of the global model the server sends (so its size is the server's model)."""

    seed: int = 0
    scale: float = Field(default=1e-3, gt=0)  # standard deviation of the update's entries
    step_time_s: float = Field(default=0.0, ge=0)  # simulated compute per step (0: none)


class InferenceSettings(FrozenSettings):
    """``fedllm client classify`` (docs/alerts.md)."""

    output: Path | None = None  # flow/alert documents (JSON lines, appended); None: stdout
    which: Literal["global", "local"] = "global"  # model from the state directory to use
    poll_interval_s: float = Field(default=0.5, gt=0)  # --follow: how often to look for new lines
    warmup: int = Field(default=5, ge=0)  # flows excluded from the latency figures
    threshold: float = Field(default=0.5, gt=0, lt=1)  # P(malicious) at which a flow is an alert
    alerts_only: bool = False  # write alert documents only (the summary still counts every flow)
    batch_size: int = Field(default=64, ge=1)  # most flows per forward pass
    max_wait_ms: float = Field(default=200.0, ge=0)  # --follow: longest a flow waits for a batch
    cache_size: int = Field(default=16384, ge=0)  # prompt texts remembered per model (0: none)


class FinalEvalSettings(FrozenSettings):
    enabled: bool = True
    max_samples: int = Field(default=2000, ge=0)  # cap on the test split sample (0: all)


class ClientSettings(FrozenSettings):
    """Everything ``fedllm client`` reads (see configs/client.toml)."""

    server: ServerAddress = _default(ServerAddress)
    tls: TlsSettings = _default(TlsSettings)
    insecure: bool = False  # plain TCP (lab only; logs a loud warning)
    client_name: str | None = None  # metrics/log name; the id the server uses is the cert CN
    state_dir: Path = Path("client-state")
    metrics_file: Path | None = None  # None: <state_dir>/metrics.jsonl
    log_level: str = "info"
    seed: int = 0  # LoRA init, data order
    data: DataSettings = _default(DataSettings)
    model: ModelSettings = _default(ModelSettings)
    train: TrainSettings = _default(TrainSettings)
    trigger: TriggerSettings = _default(TriggerSettings)
    upload: UploadSettings = _default(UploadSettings)
    backoff: BackoffSettings = _default(BackoffSettings)
    max_total_steps: int = Field(
        default=1000, ge=1
    )  # local optimizer steps budget (all strategies)
    # exit: a Bye `finished` ends the daemon (final_eval, persist, exit 0); reconnect: every Bye
    # is a lost link. Either way a restarting server is reconnected to, revoked/refused exit 78.
    on_server_bye: Literal["exit", "reconnect"] = "exit"
    trainer: Literal["lora", "synthetic"] = "lora"
    synthetic: SyntheticSettings = _default(SyntheticSettings)
    reset_optimizer_on_global: bool = True  # fresh optimizer moments from each global model
    validation_max_samples: int = Field(default=256, ge=0)  # V_i sample per GSFS check (0: all)
    steps_per_chunk: int = Field(
        default=10, ge=1
    )  # steps per worker-thread call (broadcast latency)
    persist_every_steps: int = Field(default=50, ge=1)  # GSFS: state saved at least this often
    metrics_step_every: int = Field(default=10, ge=1)  # one "step" record per this many steps
    energy_every_steps: int = Field(default=100, ge=1)
    inference: InferenceSettings = _default(InferenceSettings)
    final_eval: FinalEvalSettings = _default(FinalEvalSettings)
    # A poisoned client for defence experiments only (fedllm_client.attack); off by default.
    attack: AttackSettings = _default(AttackSettings)
    # Local HTTP endpoint: Prometheus /metrics (docs/metrics.md); off by default.
    metrics: MetricsEndpointSettings = _default(MetricsEndpointSettings)
    # Local DP: clip and noise every upload here (docs/privacy.md); the server's [privacy]
    # must say mode = "local" with the same clip_norm and noise_multiplier. Off by default.
    privacy: LocalPrivacySettings = _default(LocalPrivacySettings)

    @model_validator(mode="after")
    def _tls_complete(self) -> ClientSettings:
        missing = [n for n in ("ca", "cert", "key") if getattr(self.tls, n) is None]
        if not self.insecure and missing:
            raise ValueError(f"tls.{', tls.'.join(missing)} required unless insecure = true")
        return self

    @model_validator(mode="after")
    def _local_dp_sends_everything(self) -> ClientSettings:
        if self.privacy.mode == "local" and self.trigger.partial_updates:
            # which layers a partial update leaves out would be a release the noise misses
            raise ValueError("privacy.mode = 'local' needs trigger.partial_updates = false")
        return self

    @property
    def metrics_path(self) -> Path:
        return self.metrics_file or self.state_dir / "metrics.jsonl"


def load_client_settings(
    path: Path | None, overrides: dict[str, Any] | None = None
) -> ClientSettings:
    """TOML file (optional) + FEDLLM_CLIENT__... environment + explicit overrides."""
    return load_settings(ClientSettings, path, env_prefix=ENV_PREFIX, overrides=overrides)
