"""The distillation loss (Hinton et al. 2015) and how far two models agree.

kd_loss = T² · mean over the batch of KL(softmax(z_t / T) ‖ softmax(z_s / T)): the T² keeps
the gradient's size independent of T (the soft targets' gradients scale as 1/T²). The teacher
term carries no gradient. No labels: the transfer flows have none.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T²·KL(p_teacher ‖ p_student) on temperature-softened logits, batch mean; (B, C) each."""
    log_p_s = F.log_softmax(student.float() / temperature, dim=-1)  # (B, C)
    log_p_t = F.log_softmax(teacher.detach().float() / temperature, dim=-1)  # (B, C)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


def agreement(student: np.ndarray, teacher: np.ndarray) -> float:
    """Share of items whose top class is the same for both (N, C) logit arrays."""
    return float(np.mean(student.argmax(axis=1) == teacher.argmax(axis=1)))
