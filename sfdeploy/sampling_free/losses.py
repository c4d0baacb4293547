"""The Sampling-Free losses: optimal bias initialisation (eq. 17-18) and guided loss scaling (eq. 19-24).

Chen et al., "Is Heuristic Sampling Necessary in Training Deep Object Detectors?", IEEE TIP 2021, and the
authors' two public releases (sampling-free.md sec. 3). Three guides, each a module owned by one head:

- `GuidedLossScaling(learn_delta=True)`  the paper's eq. 24 (one-stage heads, `guided_form="paper"`):
  L = L_loc + g * delta * L_cls - log(delta), g = L_loc / L_cls every step.
- `GuidedLossScaling(learn_delta=False)` both releases' RPN and RoI box head: L_cls -> ratio * g * L_cls, no delta.
- `FrozenGuidedLoss`                     the 2021 release's one-stage form (`guided_form="frozen"`): g measured
  over the first steps then frozen, every term weighted L_i / (2 sigma_i^2) + log sigma_i.

g is always computed in float32 and without gradient; under torch.distributed the detached losses are summed over
ranks first, so N ranks x B images get the g of one process on N*B images (and a rank whose batch has no boxes is
not left without a guide).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import GUIDED_FORMS  # noqa: F401  (re-exported: the forms a head accepts)


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


def _rank_summed(*values: Tensor) -> tuple[Tensor, ...]:
    """Detached float32 copies of `values`, summed over ranks when torch.distributed runs with more than one."""
    stacked = torch.stack([v.detach().float() for v in values])
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(stacked)
    return tuple(stacked.unbind(0))


def guide_ratio(loss_cls: Tensor, loss_loc: Tensor, ratio: float = 1.0) -> Tensor:
    """g = ratio * L_loc / L_cls in float32, no gradient, over all ranks (0 when no rank has a positive)."""
    loc, cls = _rank_summed(loss_loc, loss_cls)
    return ratio * loc / cls.clamp_min(1e-12)


class GuidedLossScaling(nn.Module):
    """Per-step guide: L_cls -> g * delta * L_cls (- log delta), g = ratio * L_loc / L_cls taken without gradient.

    g makes the classification loss as large as the localisation loss at every step (eq. 20-21), so the
    classification gradient can no longer swamp training however many background samples there are.
    `learn_delta=True` adds the paper's eq. 24 learnable delta (stored as d**2, d initialised to 1, so it stays
    positive); the authors' R-CNN heads have none (`learn_delta=False`). `ratio` is 1 for the RetinaNet/FCOS/RPN
    heads and 2 for the RoI box head (the authors' setting).
    """

    def __init__(self, ratio: float = 1.0, learn_delta: bool = True) -> None:
        super().__init__()
        self.ratio = float(ratio)
        self.d = nn.Parameter(torch.ones(())) if learn_delta else None
        # Last step's values, detached, for logging (trainer reads them; no effect on the computation).
        self.last: dict[str, Tensor] = {}

    @property
    def delta(self) -> Tensor | None:
        return None if self.d is None else self.d * self.d

    def forward(self, loss_cls: Tensor, loss_loc: Tensor) -> tuple[Tensor, Tensor | None]:
        """Return (scaled classification loss, -log(delta) term or None); add both to the total loss."""
        g = guide_ratio(loss_cls, loss_loc, self.ratio)
        self.last = {"g": g, "loss_cls_raw": loss_cls.detach().float(), "loss_loc": loss_loc.detach().float()}
        if self.d is None:
            return g * loss_cls.float(), None  # float32: g alone may exceed fp16's range
        delta = self.delta
        scaled = g * delta * loss_cls.float()
        # A batch with no positives anywhere has L_loc = 0, so g = 0: no guide this step. Its delta term is switched
        # off too, else -log(delta) alone would push delta up on every empty batch.
        has_guide = (g > 0).to(delta.dtype)
        self.last["delta"] = delta.detach()
        return scaled, -torch.log(delta) * has_guide


class FrozenGuidedLoss(nn.Module):
    """The authors' 2021 one-stage guide: g frozen after `freeze_after` guided steps, learnable sigma per term.

    losses = {cls: L_cls, loc_1: .., loc_k: ..} (classification first). While fewer than `freeze_after` steps with
    positives have been seen, g = mean(L_loc_i) / L_cls of the current step (as the authors' `GuidedLoss`); then it
    stays at the last value (summed over ranks, so equal on all). Every term becomes L_i / (2 sigma_i^2), plus
    sum_i log sigma_i, sigma_i initialised to 1. g and the step count are buffers, so resume keeps them.
    """

    def __init__(self, names: tuple[str, ...], freeze_after: int = 100) -> None:
        super().__init__()
        if len(names) < 2:
            raise ValueError("need a classification term and at least one localisation term")
        if freeze_after < 1:
            raise ValueError(f"freeze_after must be >= 1, got {freeze_after}")
        self.names = tuple(names)
        self.freeze_after = int(freeze_after)
        self.sigma = nn.Parameter(torch.ones(len(names)))
        self.register_buffer("g", torch.zeros(()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.last: dict[str, Tensor] = {}

    @property
    def frozen(self) -> bool:
        return int(self.steps) >= self.freeze_after

    def forward(self, losses: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """Return ({name: weighted term}, sum log sigma); add all of them to the total loss."""
        if list(losses) != list(self.names):
            raise ValueError(f"expected the losses {self.names}, got {tuple(losses)}")
        terms = list(losses.values())
        loss_cls, locs = terms[0], terms[1:]
        if self.training and not self.frozen:
            g = guide_ratio(loss_cls, sum(locs) / len(locs))
            if bool(g > 0):  # a step without positives measures nothing: neither counted nor stored
                self.g.copy_(g)
                self.steps += 1
        guided = [self.g * loss_cls.float(), *locs]
        weighted = {name: term / (2 * s * s) for name, term, s in zip(self.names, guided, self.sigma)}
        self.last = {"g": self.g.detach().clone(), "loss_cls_raw": loss_cls.detach().float(),
                     "loss_loc": (sum(locs) / len(locs)).detach().float(),
                     **{f"sigma_{n}": s.detach() for n, s in zip(self.names, self.sigma)}}
        return weighted, torch.log(self.sigma).sum()
