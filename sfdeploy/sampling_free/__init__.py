"""The paper in one place: optimal prior (prior.py), losses and guided scaling (losses.py), heads (heads.py)."""

from .losses import GuidedLossScaling, init_prior_bias, initial_ce_loss, initial_focal_loss, prior_to_bias

__all__ = ["GuidedLossScaling", "init_prior_bias", "initial_ce_loss", "initial_focal_loss", "prior_to_bias"]
