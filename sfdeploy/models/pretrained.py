"""Start a detector from pretrained detection weights (`sfdeploy train --weights SOURCE`).

SOURCE is a torchvision detection weights name (downloaded through torchvision's weights API, which caches it),
a local `.pth` state dict of such a model, or an sfdeploy checkpoint (fine-tune one of ours on new classes).
Every tensor whose name and shape fit is loaded; the class-count layers (found by building the same model with
one more class and comparing shapes, so custom heads need no list of names) keep their fresh initialisation,
which for Sampling-Free is the prior bias. The report says which tensors were loaded, skipped and re-initialised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import UserError

SFDEPLOY_FORMAT = "sfdeploy.checkpoint"


@dataclass
class WeightsReport:
    """What `load_pretrained` did with each tensor of the model's state dict."""

    source: str
    kind: str  # "torchvision" | "state_dict" | "sfdeploy"
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # model key -> why it keeps its initialisation
    reinitialised: list[str] = field(default_factory=list)  # keys set to a fresh value after loading (prior bias)
    unused: list[str] = field(default_factory=list)  # source keys the model has no place for

    @property
    def total(self) -> int:
        return len(self.loaded) + len(self.skipped)

    def summary(self) -> str:
        parts = [f"weights {self.source}: loaded {len(self.loaded)}/{self.total} tensors"]
        if self.skipped:
            parts.append(f"kept the initialisation of {len(self.skipped)} ({', '.join(sorted(self.skipped)[:4])}"
                         + (", ..." if len(self.skipped) > 4 else "") + ")")
        if self.reinitialised:
            parts.append(f"re-initialised {', '.join(self.reinitialised)} with the Sampling-Free prior")
        if self.unused:
            parts.append(f"{len(self.unused)} source tensors unused")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "loaded": list(self.loaded), "skipped": dict(self.skipped),
                "reinitialised": list(self.reinitialised), "unused": list(self.unused)}


# -- reading a source ---------------------------------------------------------------------------------------------
def _tensors_only(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        return obj
    return None


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], str, ModelConfig | None]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a torch pickle
        raise UserError(f"--weights {path}: cannot read it as a state dict or checkpoint "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(obj, dict) and obj.get("format") == SFDEPLOY_FORMAT:
        from ..checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        return dict(ckpt.state_dict), "sfdeploy", ckpt.config
    state = _tensors_only(obj)
    if state is None and isinstance(obj, dict):  # {"model": sd} / {"state_dict": sd}, as other toolkits save
        state = next((s for k in ("model", "state_dict") if (s := _tensors_only(obj.get(k))) is not None), None)
    if state is None:
        raise UserError(f"--weights {path}: holds no state dict (expected tensors by name, an sfdeploy checkpoint, "
                        "or a dict with a 'model'/'state_dict' entry)")
    return state, "state_dict", None


def torchvision_weights(name: str) -> Any | None:
    """The torchvision weights enum for ``name`` ("FasterRCNN_ResNet50_FPN_Weights.COCO_V1" or a model name such
    as "fasterrcnn_resnet50_fpn" for its default weights), or None when torchvision knows no such name."""
    from torchvision import models

    try:
        return models.get_weight(name)
    except (ValueError, KeyError, AttributeError, TypeError):
        pass
    try:
        return models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError, TypeError):
        return None


def _download(weights: Any, progress: bool) -> dict[str, torch.Tensor]:
    try:
        return weights.get_state_dict(progress=progress, check_hash=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; hash mismatch is a RuntimeError
        reason = str(getattr(exc, "reason", exc)).splitlines()[0]
        raise UserError(f"--weights {weights}: cannot download {weights.url} ({reason}). Offline? Download that "
                        "file on a machine with internet and pass its path: --weights FILE.pth") from None


def read_weights(source: str, progress: bool = True) -> tuple[dict[str, torch.Tensor], str, ModelConfig | None]:
    """(state dict, kind, the source's ModelConfig for sfdeploy checkpoints) of SOURCE; UserError otherwise."""
    path = Path(source).expanduser()
    if path.is_file():
        return _read_file(path)
    weights = torchvision_weights(source)
    if weights is not None:
        return _download(weights, progress), "torchvision", None
    if path.suffix or "/" in source:
        raise UserError(f"--weights {source}: file not found")
    raise UserError(f"--weights {source}: not a file and not a torchvision weights name (e.g. "
                    "FasterRCNN_ResNet50_FPN_Weights.COCO_V1, retinanet_resnet50_fpn_v2, fcos_resnet50_fpn)")


# -- loading ------------------------------------------------------------------------------------------------------
def class_count_keys(cfg: ModelConfig, own: dict[str, torch.Tensor]) -> set[str]:
    """Keys of ``own`` (the state dict of a model built from ``cfg``) whose shape depends on the number of
    classes (classifiers, box/mask predictors)."""
    from .builder import build_model

    probe_cfg = cfg.replace(class_names=[*cfg.class_names, "__probe__"], category_ids=None, backbone_weights=None)
    with torch.random.fork_rng():  # the caller's random stream stays as if the probe were never built
        probe = build_model(probe_cfg, load_backbone_weights=False).state_dict()
    return {k for k, v in own.items() if k in probe and probe[k].shape != v.shape}


def _same_classes(cfg: ModelConfig, other: ModelConfig | None) -> bool:
    return (other is not None and list(other.class_names) == list(cfg.class_names)
            and other.category_ids == cfg.category_ids and other.detector == cfg.detector)


def load_pretrained(model: nn.Module, cfg: ModelConfig, source: str, progress: bool = True) -> WeightsReport:
    """Load what fits of SOURCE into ``model`` (built from ``cfg``); see the module docstring."""
    state, kind, source_cfg = read_weights(source, progress)
    report = WeightsReport(source=source, kind=kind)
    own = model.state_dict()
    class_keys = set() if _same_classes(cfg, source_cfg) else class_count_keys(cfg, own)
    usable: dict[str, torch.Tensor] = {}
    for key, value in own.items():
        theirs = state.get(key)
        if key in class_keys:
            report.skipped[key] = "class-count layer: re-initialised for this data's classes"
        elif theirs is None:
            report.skipped[key] = "not in the source"
        elif tuple(theirs.shape) != tuple(value.shape):
            report.skipped[key] = f"shape {tuple(theirs.shape)} in the source, {tuple(value.shape)} here"
        else:
            usable[key] = theirs
            report.loaded.append(key)
    report.unused = sorted(set(state) - set(own))
    if not usable:
        raise UserError(f"--weights {source}: none of its {len(state)} tensors fits this {cfg.detector}/"
                        f"{cfg.backbone} model (weights of another detector or backbone?)")
    model.load_state_dict(usable, strict=False)
    _reapply_prior(model, cfg, source_cfg, report)
    return report


def _reapply_prior(model: nn.Module, cfg: ModelConfig, source_cfg: ModelConfig | None, report: WeightsReport) -> None:
    """A loaded RPN objectness layer was trained with sampled anchors (its bias says pi = 0.5); Sampling-Free
    starts it at the data's prior instead. One-stage classifiers are class-count layers: already at the prior."""
    if not (cfg.uses_optimal_init and cfg.is_two_stage) or (source_cfg is not None and source_cfg.uses_optimal_init):
        return
    from ..sampling_free.heads import set_rpn_prior
    from .builder import resolved_prior

    key = "rpn.head.cls_logits.bias"
    if key in report.loaded:
        set_rpn_prior(model.rpn, resolved_prior(cfg))  # type: ignore[arg-type]
        report.reinitialised.append(key)
