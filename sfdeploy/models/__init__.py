"""Detector construction: backbones with FPN, the detector table and the detector x method builder.

Imported lazily (PEP 562): `sfdeploy.config` reads the light `sfdeploy.models.table` without pulling in torch.
"""

from __future__ import annotations

from typing import Any

from .table import DETECTOR_TABLE, DETECTORS, DetectorSpec, detector_spec

__all__ = ["BackboneError", "DETECTORS", "DETECTOR_TABLE", "DetectorSpec", "FIXED_PRIORS", "build_fpn_backbone",
           "build_model", "detector_spec", "input_normalisation", "resolved_prior"]


def __getattr__(name: str) -> Any:
    if name in ("BackboneError", "build_fpn_backbone", "input_normalisation"):
        from . import backbones

        return getattr(backbones, name)
    if name in ("FIXED_PRIORS", "build_model", "resolved_prior"):
        from . import builder

        return getattr(builder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
