"""`train --weights SOURCE`: load pretrained detection weights into a freshly built model, say what happened and
record it in OUT/weights.json (loaded, skipped and re-initialised tensors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from torch import nn

from sfdeploy.models.pretrained import WeightsReport, load_pretrained

from .config import TrainConfig


def apply_weights(model: nn.Module, cfg: TrainConfig, out: Path, say: Callable[[str], None], main: bool,
                  progress: bool = True) -> WeightsReport:
    """Load cfg.weights into ``model``; rank 0 prints the summary and writes OUT/weights.json (atomically)."""
    assert cfg.weights is not None
    report = load_pretrained(model, cfg.model, cfg.weights, progress=progress and main)
    if main:
        say(report.summary())
        _write_json(out / "weights.json", report.to_dict())
    return report


def _write_json(path: Path, data: dict) -> None:
    from sfdeploy.io import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1))
