"""The optimal prior pi for the bias initialisation of a new run: estimated from the training data's annotations
(cached), or the configured fixed prior when estimation is not available."""

from __future__ import annotations

from typing import Callable

from sfdeploy.models.builder import resolved_prior

from .config import TrainConfig
from .data import train_dataset


def estimate_run_priors(cfg: TrainConfig, progress: bool, say: Callable[[str], None]) -> dict[str, float]:
    """{prior head: pi} for `cfg` (rank 0 calls this; the trainer broadcasts the result)."""
    head = cfg.model.prior_heads[0]
    try:
        from sfdeploy.sampling_free.prior import estimate_priors
    except ImportError:
        pi = resolved_prior(cfg.model)
        say(f"warning: prior estimation is not available here; using the fixed prior {head}={pi:.3g}")
        return {head: pi}
    raw = train_dataset(cfg, with_masks=False)
    result = estimate_priors(cfg.model, raw, cache_dir=cfg.prior_cache_dir, progress=progress)
    pis = {k: float(v) for k, v in result.pi.items()}
    detail = ", ".join(f"{k}={v:.3g} (fg {result.fg.get(k, '?')}, bg {result.bg.get(k, '?')})" for k, v in pis.items())
    src = "cached" if result.cached else f"{result.images} images, {result.seconds:.1f} s"
    say(f"optimal prior pi: {detail} [{src}]")
    return pis
