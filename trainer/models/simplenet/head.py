"""SimpleNet's trainable head: the feature adaptor and the discriminator, and the truncated L1 loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.2  # the paper's discriminator activation


class Head(nn.Module):
    """Per-patch layers over the last dimension, so they run on N x D patch rows in training and in the graph."""

    def __init__(self, feature_dim: int, adaptor_dim: int, hidden: int) -> None:
        super().__init__()
        self.adaptor = nn.Linear(feature_dim, adaptor_dim)
        self.discriminator = nn.Sequential(
            nn.Linear(adaptor_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Linear(hidden, 1, bias=False),
        )

    def reset(self, generator: torch.Generator) -> None:
        """The paper's initialization (Xavier-normal weights), drawn from `generator` so a fit depends only on
        its recipe's seed, not on whatever used the global random state before."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight, generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm1d):
                module.reset_parameters()

    def discriminate(self, adapted: torch.Tensor) -> torch.Tensor:
        """P x A adapted features -> P normality scores (high means normal)."""
        out: torch.Tensor = self.discriminator(adapted)
        return out.squeeze(-1)

    def anomaly(self, patches: torch.Tensor) -> torch.Tensor:
        """P x D patch features -> P anomaly scores. The paper scores -D; softplus(-D) ranks patches the same way
        but stays positive, near 0 for confidently normal patches and close to -D for anomalies, which the
        agent's map overlay (map / threshold) and the converters' relative parity checks rely on."""
        return F.softplus(-self.discriminate(self.adaptor(patches)))


def truncated_l1(normal: torch.Tensor, anomalous: torch.Tensor, margin_normal: float, margin_anomalous: float) -> torch.Tensor:
    """The paper's loss: mean(max(0, th+ - D(normal))) + mean(max(0, D(anomalous) - th-))."""
    return (margin_normal - normal).clamp_min(0).mean() + (anomalous - margin_anomalous).clamp_min(0).mean()
