"""The paper in one place: optimal prior (prior.py), losses and guided scaling (losses.py), heads (heads.py).

Names are imported lazily so that light modules of this package (prior_cli, imported by `sfdeploy --help`) do
not pull in torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FrozenGuidedLoss", "GUIDED_FORMS", "GuidedLossScaling", "guide_ratio", "init_prior_bias", "initial_ce_loss", "initial_focal_loss", "prior_to_bias"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import losses

        return getattr(losses, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
