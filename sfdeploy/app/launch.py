"""Starting the demo: command-line flags, logging, and the gradio server with the demo's limits."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .catalog import resolve_models_dir
from .common import DEFAULT_MODELS_DIR, ENV_MODELS, one_line
from .inputs import MAX_UPLOAD_BYTES, example_images
from .ui import build_app

log = logging.getLogger("sfdeploy.demo")


def _truthy(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="app.py", description="Gradio demo: baseline vs Sampling-Free detectors.")
    p.add_argument("--models", default=None,
                   help=f"folder of checkpoints/exports (default: ${ENV_MODELS}, else {DEFAULT_MODELS_DIR})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--share", type=_truthy, nargs="?", const=True, default=False,
                   help="create a public gradio.live link (default false)")
    p.add_argument("--allow-train", action="store_true",
                   help="let visitors train the tiny built-in pair from the page (writes into --models; off by "
                        "default: anyone who can reach the page could start it)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline machines: no phoning home
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("sfdeploy demo: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    root = resolve_models_dir(args.models)
    print(f"sfdeploy demo: loading models from {root} ...", file=sys.stderr)
    demo = build_app(root, allow_train=args.allow_train)
    if args.allow_train:
        print(f"sfdeploy demo: training from the page is ON (it writes into {root})", file=sys.stderr)
    cat = demo.sfdeploy_catalog["catalog"]
    fams = ", ".join(f.label for f in cat.families.values()) or "none (the page explains how to get them)"
    print(f"sfdeploy demo: families: {fams}", file=sys.stderr)
    port = args.port if args.port is not None else int(os.environ.get("GRADIO_SERVER_PORT", 7860))
    launch(demo, host=args.host, port=port, share=args.share)
    return 0


def launch(demo: Any, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           block: bool = True, quiet: bool = False) -> Any:
    """Queue (one inference at a time: the CPU is the bottleneck) and start the server."""
    assets = [str(Path(p).parent) for p in example_images()[:1]]
    demo.queue(default_concurrency_limit=1)
    return demo.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_UPLOAD_BYTES,
                       allowed_paths=assets, show_error=False, prevent_thread_lock=not block, quiet=quiet,
                       app_kwargs={"exception_handlers": _unknown_endpoint_handlers()})


def _unknown_endpoint_handlers() -> dict[Any, Callable[..., Any]]:
    """gradio answers a call to an endpoint that does not exist (e.g. /gradio_api/call/on_train without
    --allow-train) with a 500 and a traceback in the log; make it a one-line 404."""
    from gradio import route_utils

    missing = getattr(route_utils, "FnIndexInferError", None)
    if missing is None:
        return {}

    async def not_found(request: Any, exc: Exception) -> Any:
        from fastapi.responses import JSONResponse

        return JSONResponse({"error": f"no such endpoint: {one_line(exc)}"}, status_code=404)

    return {missing: not_found}
