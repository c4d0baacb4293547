"""Metrics of a run: one JSON object per line in OUT/metrics.jsonl, mirrored to TensorBoard when it is installed.

Record kinds (key "event"): "start" (config summary, priors), "train" (every log_every steps: step, epoch, every loss
term, total, lr, grad_norm, step_time, images_per_s, memory_mb, and "guide": {module name: {g, delta, loss_cls_raw,
loss_loc}} for guided heads), "eval" (step, metrics), "end" (outcome, steps, timings), "diverged" (step, term, value).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sfdeploy.io import atomic_write_text


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become strings so every line stays valid JSON."""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl ("nan"/"inf" strings back to floats); a torn last line is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        records.append(_unclean(rec))
    return records


def _unclean(value: Any) -> Any:
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    if isinstance(value, dict):
        return {k: _unclean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unclean(v) for v in value]
    return value


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


class MetricsLogger:
    """Append-only JSONL (+ optional TensorBoard). `truncate_after(step)` drops records of steps a resume redoes."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = True, enabled: bool = True) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:  # lazy and optional: skipped silently when tensorboard is not installed
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(out_dir) / "tb"))
            except Exception:
                self._tb = None

    @property
    def tensorboard_enabled(self) -> bool:
        return self._tb is not None

    def reset(self) -> None:
        if self.enabled and self.path.exists():
            self.path.unlink()

    def truncate_after(self, step: int) -> None:
        """Keep only records up to `step` (the resumed checkpoint's), so the file reads like one straight run."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("event") in ("train", "eval") and int(rec.get("step", 0)) > step:
                continue
            if rec.get("event") in ("end", "diverged"):
                continue
            kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(_clean(record)) + "\n")
        if self._tb is not None and "step" in record:
            event = record.get("event", "train")
            for key, value in flatten({k: v for k, v in record.items() if k not in ("step", "event")}).items():
                if math.isfinite(value):
                    self._tb.add_scalar(f"{event}/{key}", value, int(record["step"]))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
