"""Divergence detection, on its own: a run whose loss is not finite or explodes stops cleanly as "diverged".

Checked on the rank-averaged loss terms of each read step, before the update (so the weights stay those of the
last good step): a non-finite term; or the main loss (all terms except the learnable guide's `*delta*` terms)
above `factor` x the median of the first `window` main losses (once 3 are known); or a non-finite gradient norm
(not under fp16 AMP, whose scaler skips such steps by design). Non-finite values seen on the device between read
steps (training.step_sync.DeferredChecks) are reported with `late`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Divergence:
    """Where and why a run diverged (`step`: the optimiser step that failed, 1-based)."""

    step: int
    term: str
    message: str


class DivergenceMonitor:
    """Keeps the early main losses (saved in checkpoints for resume) and judges each read step's losses."""

    MIN_EARLY = 3  # early losses needed before the explosion test applies

    def __init__(self, factor: float, window: int, early: Iterable[float] = ()) -> None:
        self.factor = float(factor)
        self.window = int(window)
        self.early = [float(x) for x in early]

    @property
    def filling(self) -> bool:
        """True while early losses are still being collected (those steps must be read on the host)."""
        return len(self.early) < self.window

    def check_losses(self, losses: Mapping[str, float], step: int) -> Divergence | None:
        """Judge one step's loss terms; a healthy step's main loss joins the early window while it fills."""
        bad = next((k for k in sorted(losses) if not math.isfinite(losses[k])), None)
        main_loss = sum(v for k, v in losses.items() if "delta" not in k)
        message = ""
        if bad is None and len(self.early) >= self.MIN_EARLY:
            med = statistics.median(self.early)
            if med > 0 and main_loss > self.factor * med:
                bad = max((k for k in losses if "delta" not in k), key=lambda k: losses[k])
                message = (f"loss exploded: {main_loss:.4g} > {self.factor:g} x early median "
                           f"{med:.4g} (largest term {bad!r} = {losses[bad]:.4g})")
        if bad is not None:
            return Divergence(step, bad, message or f"loss term {bad!r} is {losses[bad]}")
        if self.filling:
            self.early.append(main_loss)
        return None

    @staticmethod
    def check_grad_norm(norm: float, step: int, loss_scaling: bool) -> Divergence | None:
        """A non-finite gradient norm diverges, except under loss scaling (the scaler skips that step)."""
        if math.isfinite(norm) or loss_scaling:
            return None
        return Divergence(step, "grad_norm", f"gradient norm is {norm}")

    @staticmethod
    def late(step: int, term: str, read_at: int | None = None) -> Divergence:
        """A non-finite value found on the device after the fact (read at step `read_at`, if still running)."""
        where = f" (read at step {read_at})" if read_at is not None else ""
        return Divergence(step, term, f"loss term {term!r} was not finite at step {step}{where}")
