"""`sfdeploy demo`: the gradio demo (`sfdeploy.app`, also started by `python app.py`) comparing a baseline with
its Sampling-Free twin.

Light on purpose: gradio, torch and `sfdeploy.app` are imported only when the command runs.
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


def run(args: argparse.Namespace) -> int:
    from .errors import UserError

    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the demo needs gradio: pip install 'sfdeploy[demo]'") from None
    from sfdeploy.app.launch import main as demo_main

    argv = ["--host", args.host]
    if args.models:
        argv += ["--models", args.models]
    if args.port is not None:
        argv += ["--port", str(args.port)]
    if args.share:
        argv += ["--share", "true"]
    if args.allow_train:
        argv += ["--allow-train"]
    return int(demo_main(argv) or 0)
