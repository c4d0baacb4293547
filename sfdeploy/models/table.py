"""The detector table: every fact about a detector family in one row (config, builder, prior counter, CLIs, app).

Light on purpose (no torch): `sfdeploy.config` derives DETECTORS / ONE_STAGE / TWO_STAGE from it, and builders are
held by name and resolved in `sfdeploy.models.builder` only when a model is built.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DetectorSpec:
    name: str  # the config's `detector` value
    label: str  # display name (demo, reports)
    two_stage: bool  # RPN + RoI heads (R-CNNs) or a dense one-stage head
    prior_heads: tuple[str, ...]  # heads whose classifier bias gets the optimal prior ("cls" | "rpn")
    has_masks: bool  # instance masks (a `masks` output)
    builder: str  # function name in sfdeploy.models.builder: (cfg, backbone, spec, **common) -> nn.Module
    matching: str  # how the prior counter matches anchors: "retinanet" (IoU), "fcos" (points), "rpn" (IoU, C=1)
    fixed_prior: float  # the authors' fixed prior (their later release) when none was estimated from data

    @property
    def stage(self) -> str:
        return "two-stage" if self.two_stage else "one-stage"


_ROWS = (
    DetectorSpec("retinanet", "RetinaNet", False, ("cls",), False, "build_retinanet", "retinanet", 1e-5),
    DetectorSpec("fcos", "FCOS", False, ("cls",), False, "build_fcos", "fcos", 1e-4),
    DetectorSpec("faster_rcnn", "Faster R-CNN", True, ("rpn",), False, "build_rcnn", "rpn", 2e-4),
    DetectorSpec("mask_rcnn", "Mask R-CNN", True, ("rpn",), True, "build_rcnn", "rpn", 2e-4),
)
DETECTOR_TABLE: dict[str, DetectorSpec] = {row.name: row for row in _ROWS}
DETECTORS: tuple[str, ...] = tuple(DETECTOR_TABLE)
ONE_STAGE: tuple[str, ...] = tuple(n for n, s in DETECTOR_TABLE.items() if not s.two_stage)
TWO_STAGE: tuple[str, ...] = tuple(n for n, s in DETECTOR_TABLE.items() if s.two_stage)
LABELS: dict[str, str] = {n: s.label for n, s in DETECTOR_TABLE.items()}


def detector_spec(name: str) -> DetectorSpec:
    """The row of `name` (KeyError names the known detectors)."""
    try:
        return DETECTOR_TABLE[name]
    except KeyError:
        raise KeyError(f"unknown detector {name!r}; known: {', '.join(DETECTORS)}") from None
