"""ONNX Runtime as an optional dependency: exactly one ORT wheel per install, chosen by an extra.

Why: `onnxruntime` and `onnxruntime-gpu` both install the `onnxruntime` module; installed together, whichever came
last wins and the CUDA provider silently disappears. The core therefore depends on neither; `sfdeploy[cpu]`
installs `onnxruntime`, `sfdeploy[gpu]` installs `onnxruntime-gpu` (pyproject.toml).
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

from .errors import UserError

INSTALL_HINT = "pip install 'sfdeploy[cpu]' (CPU) or 'sfdeploy[gpu]' (NVIDIA GPU), not both"


def import_onnxruntime() -> Any:
    """The onnxruntime module, or a one-line UserError saying which extra installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"ONNX Runtime is not installed: {INSTALL_HINT}") from None
    return onnxruntime


def warn_if_no_cuda(device: str | None, available: Sequence[str]) -> bool:
    """Warn (once per call site) when a GPU was asked for but ORT has no CUDA provider; True when it warned."""
    if not (device and str(device).startswith("cuda")) or "CUDAExecutionProvider" in available:
        return False
    warnings.warn(f"device {device!r} asked for, but ONNX Runtime has no CUDAExecutionProvider (available: "
                  f"{list(available)}): running on the CPU. On a GPU machine: pip uninstall onnxruntime "
                  "onnxruntime-gpu && pip install 'sfdeploy[gpu]'", RuntimeWarning, stacklevel=3)
    return True
