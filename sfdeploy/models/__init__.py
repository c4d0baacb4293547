"""Detector construction: backbones with FPN and the detector x method builder."""

from .backbones import BackboneError, build_fpn_backbone, input_normalisation
from .builder import FIXED_PRIORS, build_model, resolved_prior

__all__ = ["BackboneError", "FIXED_PRIORS", "build_fpn_backbone", "build_model", "input_normalisation", "resolved_prior"]
