"""The ``[train]`` section, apart from the trainer so that reading settings imports no torch.

``fedllm_core.training`` re-exports it; the client's settings import it from here, so a bad
settings file fails before torch loads (issue 11: start-up failures in < 2 s).
"""

from __future__ import annotations

from pydantic import Field

from fedllm_core.settings import FrozenSettings


class TrainSettings(FrozenSettings):
    """The ``[train]`` section: local optimisation of the trainable state."""

    lr: float = Field(1e-3, gt=0)  # AdamW; LoRA + a fresh head tolerate a high rate
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0)  # max global L2 norm; 0 disables clipping
    betas: tuple[float, float] = (0.9, 0.999)
    seed: int = 0  # data order (used when LocalTrainer gets no explicit seed)
    # τ of the logit adjustment against the local label prior (Menon et al. 2021; FedLC, Zhang
    # et al. 2022): the loss sees logits + τ·log π_local, inference the plain logits. A client
    # whose captures are 92 % malicious (or all benign) then learns features, not its own class
    # prior, so its update stops dragging the global head's bias toward its majority class
    # (issue 8: the GSFS global model flipped between all-benign and all-malicious versions).
    # 0 = plain cross-entropy. π is smoothed by one pseudo-sample per class.
    logit_adjustment: float = Field(0.0, ge=0)
    # μ of FedProx (Li et al. 2020): the loss adds μ/2·‖θ − θ_anchor‖² with θ_anchor the global
    # model this client trains from (``LocalTrainer.set_anchor``), so local training cannot
    # wander far from it. Needed beside the logit adjustment: AdamW normalises the step, so a
    # one-class client's small adjusted gradient still moves every parameter at full speed
    # toward its class; the proximal pull gives that walk a finite end. 0 = off.
    prox_mu: float = Field(0.0, ge=0)
