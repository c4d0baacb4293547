"""Evaluation during training: the model in eval mode on the val split, then back to training mode."""

from __future__ import annotations

import math
from typing import Any

import torch

from . import distributed as D
from .config import TrainConfig


def evaluate_model(model: torch.nn.Module, dataset, cfg: TrainConfig, device: torch.device, progress: bool):  # type: ignore[no-untyped-def]
    """COCO metrics of `model` on `dataset` (rank 0 only; the caller holds the other ranks at a barrier)."""
    try:
        from sfdeploy.training.evaluate import evaluate
    except ImportError as exc:
        from sfdeploy.errors import UserError

        raise UserError(f"evaluation is not available ({exc}); train without --val-data/--eval-every") from exc
    m = D.unwrap(model)
    m.eval()
    try:
        with torch.no_grad():
            return evaluate(m, dataset, device=str(device), batch_size=cfg.eval_batch_size, progress=progress,
                            workers=cfg.workers)
    finally:
        m.train()


def bbox_ap(metrics: dict[str, Any] | None) -> float | None:
    """The bbox AP of an evaluation, None when it has none (or it is not finite)."""
    try:
        ap = float(metrics["bbox"]["AP"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None
    return ap if math.isfinite(ap) else None
