"""Gradio demo: a baseline detector and its Sampling-Free twin, side by side.

    python app.py [--models DIR] [--host 127.0.0.1] [--port N] [--share false] [--allow-train]
    sfdeploy demo [--models DIR] [--host HOST] [--port N] [--allow-train]

DIR (default: $SFDEPLOY_MODELS, else runs/quickstart) is scanned for checkpoints, ONNX exports and TensorRT
engines, paired per detector family (baseline vs Sampling-Free) from their metadata. The demo itself lives in
`sfdeploy.app` (catalogue, inference of a pair, rendering, the quickstart job, the UI); this file is its entry point.
"""

from __future__ import annotations

import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Start the demo (imported here so that `import app` stays light)."""
    from sfdeploy.app.launch import main as run

    return run(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
