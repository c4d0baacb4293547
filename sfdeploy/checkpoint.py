"""The checkpoint format: weights + ModelConfig + training metadata, safe to load with weights_only=True.

Layout (a plain dict of tensors and primitives):
    {"format": "sfdeploy.checkpoint", "format_version": 1, "sfdeploy_version": str,
     "config": ModelConfig.to_dict(), "model": state_dict, "meta": {...},
     # resumable training state, optional:
     "optimizer": ..., "scheduler": ..., "train_state": {...}}
`meta` holds what downstream tools show: step, epoch, priors, metrics (e.g. {"bbox": {"AP": ..}}), timings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ConfigError, ModelConfig
from .io import atomic_write

FORMAT = "sfdeploy.checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, or not an sfdeploy checkpoint; the message names the file."""


@dataclass
class Checkpoint:
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # optimizer / scheduler / train_state when present


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a killed run never leaves half a file."""
    with atomic_write(path, "wb") as fh:
        torch.save(obj, fh)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    config: ModelConfig,
    meta: dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Save `model` with its config; `extra` (optimizer=..., scheduler=..., train_state=...) makes it resumable."""
    from . import __version__

    model = getattr(model, "module", model)  # unwrap DDP
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sfdeploy_version": __version__,
        "config": config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    payload.update({k: v for k, v in extra.items() if v is not None})
    atomic_torch_save(payload, path)
    return Path(path)


# torch's advice to re-run with weights_only=False (or to allow-list globals) would execute whatever the file
# holds: a checkpoint never needs it, so the message never passes it on.
_UNSAFE_ADVICE = re.compile(r"weights[_ ]only|safe_globals|trusted source|documentation|arbitrary code", re.I)


def load_failure_reason(exc: BaseException) -> str:
    """One line saying why torch.load(weights_only=True) refused a file, without torch's unsafe advice."""
    text = str(exc).strip()
    sentences = [s.strip() for line in text.splitlines() for s in re.split(r"(?<=[.!?])\s+", line) if s.strip()]
    kept = [s for s in sentences if not _UNSAFE_ADVICE.search(s)]
    if text.startswith("Weights only load failed") or "Unsupported global" in text or "GLOBAL" in text:
        detail = kept[0].rstrip(".") if kept else "objects other than tensors and plain data"
        return (f"it holds Python objects that a checkpoint never contains ({detail}); refused without running "
                "them (load only checkpoints written by sfdeploy)")
    detail = kept[0] if kept else type(exc).__name__
    return f"truncated or foreign file ({detail})"


def _read_payload(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict, checked to be ours and readable by this version (weights_only=True)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p} is empty (an interrupted copy?); use another checkpoint")
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, random bytes
        raise CheckpointError(f"{p} is not a readable sfdeploy checkpoint: {load_failure_reason(exc)}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{p} is not an sfdeploy checkpoint (no '{FORMAT}' marker); "
            "train one with `sfdeploy train` or export weights with sfdeploy.checkpoint.save_checkpoint"
        )
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{p} uses checkpoint format {payload['format_version']}; upgrade sfdeploy to read it")
    return payload


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and validate a checkpoint (never unpickles arbitrary objects)."""
    p = Path(path)
    payload = _read_payload(p, map_location)
    try:
        config = ModelConfig.from_artefact(payload["config"])
    except (ConfigError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{p} has an invalid model config: {exc}") from exc
    extra = {k: v for k, v in payload.items() if k not in {"format", "format_version", "sfdeploy_version",
                                                           "config", "model", "meta"}}
    return Checkpoint(config=config, state_dict=payload["model"], meta=payload.get("meta", {}), extra=extra)


def update_checkpoint_meta(path: str | Path, **changes: Any) -> dict[str, Any]:
    """Merge `changes` into a checkpoint's meta, everything else kept byte for byte in content (atomic rewrite):
    e.g. marking the last good checkpoint of a diverged run without touching its weights or training state.
    Returns the new meta."""
    payload = _read_payload(path)
    payload["meta"] = {**payload.get("meta", {}), **changes}
    atomic_torch_save(payload, path)
    return payload["meta"]


def model_from_checkpoint(ckpt: Checkpoint) -> nn.Module:
    """Rebuild the exact model of a checkpoint (eval mode). Backbone weight files are not needed any more."""
    from .models import build_model

    model = build_model(ckpt.config, load_backbone_weights=False)
    try:
        missing, unexpected = model.load_state_dict(ckpt.state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise CheckpointError(f"checkpoint weights do not fit its config: {str(exc).splitlines()[0]}") from exc
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint weights do not fit a {ckpt.config.detector}/{ckpt.config.method}/{ckpt.config.backbone} "
            f"model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model.eval()


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Checkpoint file -> (model on `device` in eval mode, the checkpoint's config/meta)."""
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt).to(device), ckpt
