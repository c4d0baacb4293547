"""`sfdeploy demo`: the gradio app (app.py) comparing a baseline with its Sampling-Free twin.

Light on purpose: gradio, torch and app.py are imported only when the command runs.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="open the gradio demo: baseline vs Sampling-Free, side by side",
        description="Start the gradio demo (app.py) on the models in --models (checkpoints, .onnx, .engine). "
                    "Without models it explains how to get them (and, with --allow-train, trains the tiny built-in "
                    "pair from the page).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", default=None, metavar="DIR",
                   help="folder of runs/exports (default: $SFDEPLOY_MODELS, else runs/quickstart)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    p.add_argument("--allow-train", action="store_true",
                   help="let visitors train the tiny built-in pair from the page (writes into --models; off by "
                        "default)")
    p.set_defaults(handler=run)


def _import_app() -> Any:
    """`app` is a top-level module (installed with the package, or app.py at the repository root)."""
    import importlib.util
    import sys
    from pathlib import Path

    try:
        import app  # type: ignore[import-not-found]

        if hasattr(app, "build_app"):
            return app
    except ImportError:
        pass
    path = Path(__file__).resolve().parents[1] / "app.py"
    if not path.is_file():
        from .errors import UserError

        raise UserError("the demo app (app.py) is not installed; run from the sfdeploy repository or reinstall")
    spec = importlib.util.spec_from_file_location("app", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["app"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from .errors import UserError

    if importlib.util.find_spec("gradio") is None:
        raise UserError("the demo needs gradio: pip install 'sfdeploy[demo]'")
    app = _import_app()
    argv = ["--host", args.host]
    if args.models:
        argv += ["--models", args.models]
    if args.port is not None:
        argv += ["--port", str(args.port)]
    if args.share:
        argv += ["--share", "true"]
    if args.allow_train:
        argv += ["--allow-train"]
    return int(app.main(argv) or 0)
