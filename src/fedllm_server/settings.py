"""The server's one settings model: `[server]`-level fields plus shared sections.

Loaded by `fedllm_core.settings.load_settings` from a TOML file with `FEDLLM_SERVER__...`
environment overrides (e.g. `FEDLLM_SERVER__ROUNDS__MIN_CLIENTS=4`). Frozen, unknown keys
rejected, every bound checked here so a bad value stops start-up (exit 78) naming the field.
Every field is documented in configs/server.toml and docs/server.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from fedllm_core.data import DataSettings
from fedllm_core.model_settings import ModelSettings
from fedllm_core.observe_http import MetricsEndpointSettings
from fedllm_core.settings import FrozenSettings
from fedllm_proto.timeouts import Timeouts
from fedllm_server.broadcast_encoding import BroadcastSettings
from fedllm_server.distill.settings import DistillSettings
from fedllm_server.durable.retry import RetrySettings
from fedllm_server.feedback.settings import FeedbackSettings
from fedllm_server.privacy.settings import PrivacySettings
from fedllm_server.strategies.registry import StrategySettings
from fedllm_server.strategies.settings import FedAvgSettings, RobustSettings, ValidationSettings
from fedllm_server.validation import NormBoundSettings

ENV_PREFIX = "FEDLLM_SERVER"


class TlsSettings(FrozenSettings):
    """Mutual TLS: the federation CA, the server's pair, the client deny-list."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    # `fedllm certs revoke` writes it; re-read on change and on SIGHUP. None = nothing revoked.
    revocation_list: Path | None = None


class RoundSettings(FrozenSettings):
    """Synchronous rounds (FedAvg / FedOpt); ignored by GSFS."""

    fraction: float = Field(
        default=1.0, gt=0, le=1, description="share of connected clients selected"
    )
    min_clients: int = Field(
        default=2, ge=1, description="connected clients needed to start a round"
    )
    local_steps: int = Field(
        default=20, ge=1, description="optimizer steps each client runs per round"
    )
    deadline_s: float = Field(default=300.0, gt=0, description="stragglers are left out after this")


class EvaluationSettings(FrozenSettings):
    """Central evaluation of each new global model on the held-out test split."""

    every_versions: int = Field(
        default=1, ge=0, description="evaluate every k-th version; 0 = never"
    )
    max_samples: int | None = Field(
        default=2000, ge=1, description="stratified sample of the test split"
    )
    batch_size: int = Field(default=64, ge=1)
    evaluate_initial: bool = False  # also evaluate the starting model (version 0)


class LoggingSettings(FrozenSettings):
    level: Literal["debug", "info", "warning", "error"] = "info"
    json_lines: bool | None = None  # None: JSON under systemd / when not a terminal


class ServerSettings(FrozenSettings):
    """Everything `fedllm server` needs; sections mirror configs/server.toml."""

    host: str = "0.0.0.0"
    port: int = Field(default=8443, ge=0, le=65535, description="0 = any free port (tests)")
    # Plain TCP, no client authentication: for benchmarks on loopback only. Logged loudly.
    insecure: bool = False
    tls: TlsSettings = Field(default_factory=TlsSettings)
    state_dir: Path = Path("/var/lib/fedllm-server")
    metrics_file: Path | None = None  # None: <state_dir>/metrics.jsonl
    # A failing checkpoint write (disk full, I/O error) is retried so; then serving goes on.
    checkpoint_retry: RetrySettings = Field(default_factory=RetrySettings)
    seed: int = 0  # initial global model and client selection
    strategy: StrategySettings = Field(default_factory=FedAvgSettings)
    # The rule every strategy aggregates deltas with (docs/robust.md); "none" by default.
    robust: RobustSettings = Field(default_factory=RobustSettings)
    # Central DP-FedAvg with an accountant (docs/privacy.md); off by default.
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    # The adaptive feedback loop over the GSFS client triggers (docs/feedback.md); off by default.
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    # How new versions travel to clients that decode lossy models (docs/server.md, "Broadcast
    # encoding"): raw by default; lossy makes θ^v itself the decoded tensors.
    broadcast: BroadcastSettings = Field(default_factory=BroadcastSettings)
    # Hybrid edge-cloud: a cloud teacher distilled into every k-th global model (docs/distill.md).
    distill: DistillSettings = Field(default_factory=DistillSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    # The door's ‖Δ‖₂ bound from the accepted norms (on by default; docs/server.md).
    norm_bound: NormBoundSettings = Field(default_factory=NormBoundSettings)
    rounds: RoundSettings = Field(default_factory=RoundSettings)
    model: ModelSettings = Field(default_factory=lambda: ModelSettings.model_validate({}))
    data: DataSettings = Field(default_factory=lambda: DataSettings.model_validate({}))
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    idle_timeout_s: float = Field(
        default=30.0, gt=0, description="drop a peer silent for this long"
    )
    handshake_timeout_s: float = Field(default=15.0, gt=0, description="time allowed for Hello")
    tls_handshake_timeout_s: float = Field(
        default=10.0, gt=0, description="time allowed for the TLS handshake (silent peers)"
    )
    # Sockets held at once (any phase, silent ones too) and per remote address; a peer past a
    # cap is closed before TLS. None: derived from RLIMIT_NOFILE (fedllm_server.door).
    max_connections: int | None = Field(default=None, ge=1)
    max_connections_per_address: int | None = Field(default=None, ge=1)
    # Insecure mode only: distinct client names one address may hold at once (Sybil names).
    insecure_names_per_address: int = Field(default=1, ge=1)
    send_queue: int = Field(
        default=4, ge=1, description="messages queued per client before dropping it"
    )
    max_rejects: int = Field(
        default=10, ge=1, description="consecutive rejects before disconnecting"
    )
    stop_after_versions: int | None = Field(
        default=None, ge=1, description="exit 0 at this version"
    )
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    # Local HTTP endpoint: Prometheus /metrics, /status, the dashboard (docs/metrics.md).
    metrics: MetricsEndpointSettings = Field(default_factory=MetricsEndpointSettings)

    @property
    def timeouts(self) -> Timeouts:
        """Every deadline of a client link, from these settings (fedllm_proto.timeouts)."""
        return Timeouts(
            tls_handshake_s=self.tls_handshake_timeout_s,
            hello_s=self.handshake_timeout_s,
            heartbeat_s=self.heartbeat_interval_s,
            idle_s=self.idle_timeout_s,
        )

    @model_validator(mode="after")
    def _tls_complete(self) -> ServerSettings:
        if not self.insecure and None in (self.tls.ca, self.tls.cert, self.tls.key):
            raise ValueError("tls.ca, tls.cert and tls.key are required unless insecure = true")
        if self.idle_timeout_s <= self.heartbeat_interval_s:
            raise ValueError("idle_timeout_s must be longer than heartbeat_interval_s")
        if self.feedback.enabled and self.strategy.name != "gsfs":
            raise ValueError("feedback.enabled tunes the GSFS triggers: it needs strategy gsfs")
        if self.privacy.central and self.robust.rule != "none":
            # the DP accounting covers clipping plus the noised mean only (docs/privacy.md)
            raise ValueError("privacy.mode = 'central' needs robust.rule = 'none'")
        return self

    @property
    def metrics_path(self) -> Path:
        return self.metrics_file or self.state_dir / "metrics.jsonl"
