"""Typed configuration of a model: everything needed to rebuild it, travels inside every artefact."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .models.table import DETECTOR_TABLE, DETECTORS, ONE_STAGE, TWO_STAGE  # noqa: F401  (re-exported)

METHODS = ("baseline", "ce", "sampling_free")
BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_large", "efficientnet_lite0")

# Sampling-Free scores are calibrated to the true foreground rate, so they are small (paper sec. 3):
# a baseline threshold of 0.05 would throw away most correct detections.
DEFAULT_SCORE_THRESH = {"baseline": 0.05, "ce": 0.05, "sampling_free": 1e-3}
# The prior used by the baselines (focal loss init, Lin et al.) and by `ce` ("baseline's initialisation").
FOCAL_PRIOR = 0.01
# Forms of guided loss scaling for the one-stage heads (see ModelConfig.guided_form).
GUIDED_FORMS = ("paper", "frozen")


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and what is allowed."""


@dataclass
class ModelConfig:
    """One detector x training method x backbone, with its classes, input size, priors and thresholds."""

    detector: str = "retinanet"
    method: str = "sampling_free"
    backbone: str = "resnet18"
    class_names: list[str] = field(default_factory=lambda: ["object"])
    min_size: int = 320
    max_size: int = 320
    # None: random init; "imagenet": offline ImageNet weights where available (EfficientNet-Lite0);
    # or a path to a local torchvision/timm state dict.
    backbone_weights: str | None = None
    trainable_backbone_layers: int = 5
    fpn_channels: int = 256
    # Optimal priors pi per head, e.g. {"cls": 1e-5} (RetinaNet/FCOS) or {"rpn": 2e-4} (R-CNNs).
    # Empty: estimated from the training data before training (sampling_free) or the baseline's 0.01.
    priors: dict[str, float] = field(default_factory=dict)
    # Ablation switches (paper Table III) for `ce`/`sampling_free`; None = the method's default.
    optimal_init: bool | None = None
    guided_scaling: bool | None = None
    # Smallest anchor side (RetinaNet at P3, RPN at P2); doubles per pyramid level. 32 is torchvision's.
    anchor_base_size: int = 32
    score_thresh: float | None = None
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    # R-CNN training cost knobs (sampling-free.md sec. 3: ~1000 proposals per image, mask head on every positive).
    # Fewer proposals make the un-sampled RoI head cheaper; a cap on mask positives (a uniform random subset, as the
    # baseline's sampler caps them at 128/image) makes Mask R-CNN's mask head cost what the baseline's does.
    # Both change what the heads train on: see docs/BENCHMARKS.md (cost) before using them.
    rpn_post_nms_top_n_train: int = 1000
    mask_positives_per_image: int | None = None
    # Width of Mask R-CNN's four mask-head convolutions (torchvision: 256). With a narrow FPN on CPU a 256-wide mask
    # head costs more than the rest of the model (~0.37 GMAC per positive RoI); the benchmarks scale it with the FPN.
    mask_head_channels: int = 256
    # Guided loss scaling as the authors ran it (sampling-free.md sec. 3), for the one-stage heads (the R-CNN heads
    # always use the authors' plain per-step guide): "frozen" = the authors' 2021 release (g measured over the first
    # `guide_freeze_steps` steps with positives, then frozen; learnable sigma on every term), the default since it was
    # ahead of "paper" on the validation splits (docs/BENCHMARKS.md 1f); "paper" = eq. 20-24 (per-step g, learnable
    # delta on the classification term). Artefacts written before this option hold the paper form (from_artefact).
    guided_form: str = "frozen"
    guide_freeze_steps: int = 100
    # The R-CNN heads' guide has no learnable delta in either release of the authors' code; True restores this
    # project's earlier deviation (a delta on the RPN and RoI box head) for ablations and old checkpoints.
    rcnn_guide_delta: bool = False
    # RPN anchors reaching more than this many px outside the image are ignored by the RPN loss (every method).
    # None: torchvision (all anchors labelled); 0: the authors' protocol (maskrcnn-benchmark's straddle_thresh).
    rpn_straddle_thresh: float | None = None
    # The training annotations' own category id of each class (COCO `category_id`, e.g. [3, 7, 12]): label k
    # is category_ids[k-1] in every output (predictions, COCO results, eval). None: the ids are the labels 1..C.
    category_ids: list[int] | None = None

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_artefact(cls, data: dict[str, Any]) -> "ModelConfig":
        """The config stored in a checkpoint or exported artefact, with what older releases trained with.

        Configs written before `rcnn_guide_delta` existed were trained with a learnable delta on the R-CNN heads
        (their weights hold it) and with the paper's one-stage form; a config file a user writes is read with
        `from_dict` and gets today's defaults instead.
        """
        data = dict(data) if isinstance(data, dict) else data
        if isinstance(data, dict) and "rcnn_guide_delta" not in data:
            data.setdefault("guided_form", "paper")
            data["rcnn_guide_delta"] = data.get("method") != "baseline" and data.get("detector") in TWO_STAGE
        return cls.from_dict(data)

    # -- derived ---------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Foreground classes (torchvision R-CNNs add one for background internally)."""
        return len(self.class_names)

    def category_id(self, label: int) -> int:
        """The source data's category id of model label ``label`` (1..C)."""
        if self.category_ids is None:
            return int(label)
        return int(self.category_ids[int(label) - 1])

    @property
    def effective_score_thresh(self) -> float:
        return self.score_thresh if self.score_thresh is not None else DEFAULT_SCORE_THRESH[self.method]

    @property
    def uses_optimal_init(self) -> bool:
        if self.method == "baseline":
            return False
        return self.optimal_init if self.optimal_init is not None else self.method == "sampling_free"

    @property
    def uses_guided_scaling(self) -> bool:
        if self.method == "baseline":
            return False
        return self.guided_scaling if self.guided_scaling is not None else self.method == "sampling_free"

    @property
    def is_two_stage(self) -> bool:
        return DETECTOR_TABLE[self.detector].two_stage

    @property
    def has_masks(self) -> bool:
        return DETECTOR_TABLE[self.detector].has_masks

    @property
    def prior_heads(self) -> tuple[str, ...]:
        """Heads whose classifier bias gets the optimal prior (sigmoid classifiers only)."""
        return DETECTOR_TABLE[self.detector].prior_heads

    # -- validation ------------------------------------------------------------------------------
    def validate(self) -> None:
        _choice("detector", self.detector, DETECTORS)
        _choice("method", self.method, METHODS)
        _choice("backbone", self.backbone, BACKBONES)
        if not self.class_names or not all(isinstance(c, str) and c for c in self.class_names):
            raise ConfigError("class_names must be a non-empty list of non-empty strings")
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError(f"class_names has duplicates: {self.class_names}")
        if not (16 <= self.min_size <= self.max_size):
            raise ConfigError(f"need 16 <= min_size <= max_size, got {self.min_size}, {self.max_size}")
        if self.fpn_channels < 8:
            raise ConfigError(f"fpn_channels must be >= 8, got {self.fpn_channels}")
        if self.detector in ONE_STAGE and self.fpn_channels % 32:
            # the RetinaNet and FCOS heads use GroupNorm(32, fpn_channels)
            raise ConfigError(
                f"{self.detector} needs fpn_channels divisible by 32 (GroupNorm with 32 groups), got {self.fpn_channels}"
            )
        if not 0 <= self.trainable_backbone_layers <= 5:
            raise ConfigError("trainable_backbone_layers must be in 0..5")
        for head, pi in self.priors.items():
            if head not in ("cls", "rpn"):
                raise ConfigError(f"unknown prior head {head!r}: use 'cls' (RetinaNet/FCOS) or 'rpn' (R-CNNs)")
            if not 0.0 < float(pi) < 1.0:
                raise ConfigError(f"prior {head}={pi} must be in (0, 1)")
        if self.method == "baseline" and (self.optimal_init is not None or self.guided_scaling is not None):
            raise ConfigError("optimal_init/guided_scaling are ablation switches of 'ce'/'sampling_free', not 'baseline'")
        if self.anchor_base_size < 4:
            raise ConfigError(f"anchor_base_size must be >= 4, got {self.anchor_base_size}")
        if self.score_thresh is not None and not 0.0 <= self.score_thresh < 1.0:
            raise ConfigError(f"score_thresh must be in [0, 1), got {self.score_thresh}")
        if self.mask_head_channels < 8:
            raise ConfigError(f"mask_head_channels must be >= 8, got {self.mask_head_channels}")
        _choice("guided_form", self.guided_form, GUIDED_FORMS)
        if not isinstance(self.guide_freeze_steps, int) or self.guide_freeze_steps < 1:
            raise ConfigError(f"guide_freeze_steps must be an integer >= 1, got {self.guide_freeze_steps!r}")
        if self.rpn_straddle_thresh is not None and not self.rpn_straddle_thresh >= 0:
            raise ConfigError(f"rpn_straddle_thresh must be >= 0 (px) or null, got {self.rpn_straddle_thresh}")
        if self.rpn_straddle_thresh is not None and not self.is_two_stage:
            raise ConfigError("rpn_straddle_thresh applies to faster_rcnn / mask_rcnn (the RPN's anchors)")
        if self.rpn_post_nms_top_n_train < 1:
            raise ConfigError(f"rpn_post_nms_top_n_train must be >= 1, got {self.rpn_post_nms_top_n_train}")
        if self.category_ids is not None:
            ids = self.category_ids
            if not isinstance(ids, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
                raise ConfigError(f"category_ids must be a list of integers, got {ids!r}")
            if len(ids) != len(self.class_names) or len(set(ids)) != len(ids):
                raise ConfigError(f"category_ids must hold one distinct id per class ({len(self.class_names)} "
                                  f"classes), got {ids}")
        if self.mask_positives_per_image is not None:
            if self.mask_positives_per_image < 1:
                raise ConfigError(f"mask_positives_per_image must be >= 1, got {self.mask_positives_per_image}")
            if not self.has_masks or self.method == "baseline":
                raise ConfigError("mask_positives_per_image applies to mask_rcnn trained with 'ce'/'sampling_free' "
                                  "(the baseline's sampler already caps positives at 128 per image)")

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return _from_dict(cls, data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "ModelConfig":
        data = yaml.safe_load(text) or {}
        if "model" in data and isinstance(data["model"], dict):
            data = data["model"]
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}: choose one of {', '.join(allowed)}")


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping for {cls.__name__}, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(names)}")
    data = dict(data)
    if "priors" in data and data["priors"] is not None:
        data["priors"] = {str(k): float(v) for k, v in data["priors"].items()}
    if isinstance(data.get("category_ids"), tuple):
        data["category_ids"] = list(data["category_ids"])
    return cls(**data)


def load_yaml_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file with a clear error for a missing or malformed one."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}".splitlines()[0]) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data
