"""The Sampling-Free losses: optimal bias initialisation (eq. 17-18) and guided loss scaling (eq. 19-24).

Chen et al., "Is Heuristic Sampling Necessary in Training Deep Object Detectors?", IEEE TIP 2021.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def prior_to_bias(pi: float) -> float:
    """Eq. 18: the bias whose sigmoid is the foreground rate pi, b = -log((1 - pi) / pi)."""
    if not 0.0 < pi < 1.0:
        raise ValueError(f"prior must be in (0, 1), got {pi}")
    return -math.log((1.0 - pi) / pi)


def init_prior_bias(layer: nn.Conv2d | nn.Linear, pi: float) -> None:
    """Set a sigmoid classifier's bias so every initial score equals pi (the CE-optimal constant)."""
    if layer.bias is None:
        raise ValueError("the classifier layer has no bias to initialise")
    with torch.no_grad():
        layer.bias.fill_(prior_to_bias(pi))


def initial_focal_loss(neg_per_pos: float, pi: float = 0.01, alpha: float = 0.25, gamma: float = 2.0) -> float:
    """Eq. 16, focal side: the loss per foreground sample when every score is pi at the start."""
    pos = -alpha * (1 - pi) ** gamma * math.log(pi)
    neg = -(1 - alpha) * pi**gamma * math.log(1 - pi)
    return pos + neg_per_pos * neg


def initial_ce_loss(neg_per_pos: float, pi: float, scale: float = 1.0) -> float:
    """Eq. 16, CE side: the scaled CE loss per foreground sample when every score is pi at the start."""
    return scale * (-math.log(pi) - neg_per_pos * math.log(1 - pi))


class GuidedLossScaling(nn.Module):
    """L = L_loc + g * delta * L_cls - log(delta), with g = ratio * L_loc / L_cls taken without gradient.

    g makes the classification loss as large as the localisation loss at every step (eq. 20-21), so the
    classification gradient can no longer swamp training however many background samples there are. delta (eq. 24)
    is learnable, stored as d**2 with d initialised to 1 as in the authors' code so that it stays positive.
    `ratio` is 1 for the RetinaNet/FCOS/RPN heads and 2 for the RoI box head (the authors' setting).
    """

    def __init__(self, ratio: float = 1.0) -> None:
        super().__init__()
        self.ratio = float(ratio)
        self.d = nn.Parameter(torch.ones(()))
        # Last step's values, detached, for logging (trainer reads them; no effect on the computation).
        self.last: dict[str, Tensor] = {}

    @property
    def delta(self) -> Tensor:
        return self.d * self.d

    def forward(self, loss_cls: Tensor, loss_loc: Tensor) -> tuple[Tensor, Tensor]:
        """Return (scaled classification loss, -log(delta) term); add both to the total loss."""
        loc = loss_loc.detach()
        g = self.ratio * loc / loss_cls.detach().clamp_min(1e-12)
        delta = self.delta
        scaled = g * delta * loss_cls
        # A batch with no positives has L_loc = 0, so g = 0: no guide this step. Its delta term is switched
        # off too, else -log(delta) alone would push delta up on every empty batch.
        has_guide = (loc > 0).to(loss_cls.dtype)
        delta_term = -torch.log(delta) * has_guide
        self.last = {"g": g, "delta": delta.detach(), "loss_cls_raw": loss_cls.detach(), "loss_loc": loc}
        return scaled, delta_term
