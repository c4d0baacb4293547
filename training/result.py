"""What `train(cfg)` returns (also written to OUT/result.json)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTCOMES = ("completed", "diverged", "interrupted")


@dataclass
class TrainResult:
    out_dir: Path
    outcome: str
    steps: int  # optimiser steps finished
    total_steps: int
    final_metrics: dict[str, Any] = field(default_factory=dict)  # last evaluation ({} when none ran)
    best_metrics: dict[str, Any] = field(default_factory=dict)
    best_ap: float | None = None
    last_losses: dict[str, float] = field(default_factory=dict)
    median_step_time_s: float | None = None
    peak_memory_mb: float | None = None
    priors: dict[str, float] = field(default_factory=dict)
    message: str = ""
    diverged_step: int | None = None
    diverged_term: str | None = None
    world_size: int = 1
    train_images: int = 0
    rank_weight_digests: list[str] = field(default_factory=list)

    @property
    def last_checkpoint(self) -> Path:
        return Path(self.out_dir) / "last.pt"

    @property
    def best_checkpoint(self) -> Path | None:
        p = Path(self.out_dir) / "best.pt"
        return p if p.is_file() else None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d
