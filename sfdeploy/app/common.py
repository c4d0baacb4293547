"""Names and small helpers every part of the demo shares (labels, roles, one-line error text)."""

from __future__ import annotations

import json
from typing import Any

from sfdeploy.models.table import LABELS

ENV_MODELS = "SFDEPLOY_MODELS"
DEFAULT_MODELS_DIR = "runs/quickstart"
BACKEND_LABELS = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT"}
FAMILY_LABELS = dict(LABELS)  # display names from the detector table
FAMILY_ORDER = tuple(FAMILY_LABELS)
ROLES = ("baseline", "sampling_free")
ROLE_LABELS = {"baseline": "Baseline", "sampling_free": "Sampling-Free"}


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def as_dict(value: Any) -> dict[str, Any]:
    """A dict, or a JSON object string parsed; {} for anything else (metadata may come in either form)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {}
    return value if isinstance(value, dict) else {}
