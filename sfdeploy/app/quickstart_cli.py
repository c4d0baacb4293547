"""The `quickstart` subcommand (registered by the composition root; the pipeline is in sfdeploy.app.quickstart)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sfdeploy.models.table import DETECTORS
from sfdeploy.training.evaluate_cli import _positive

from .quickstart import DEFAULT_BUDGET, FAST_BUDGET, quickstart

BACKBONES = ("efficientnet_lite0", "resnet18", "resnet34", "resnet50", "mobilenet_v3_large")


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "quickstart",
        help="train baseline vs Sampling-Free on synthetic data, evaluate, export, predict (~10 min on a CPU)",
        description="One command through the whole pipeline on the built-in synthetic data: trains a baseline and "
                    "a Sampling-Free detector with the same seed and budget, evaluates both (COCO AP), exports the "
                    "Sampling-Free one to ONNX, renders predictions side by side and prints a comparison table. "
                    "--fast: a tiny budget (about a minute) for smoke tests.",
    )
    p.add_argument("--out", default="runs/quickstart", metavar="DIR", help="output folder (default: runs/quickstart)")
    p.add_argument("--model", choices=DETECTORS, default="retinanet", help="detector (default: retinanet)")
    p.add_argument("--steps", type=_positive, default=None, metavar="N",
                   help=f"training steps per model (default: {DEFAULT_BUDGET.steps}; --fast: {FAST_BUDGET.steps})")
    p.add_argument("--image-size", type=_positive, default=None, metavar="N",
                   help=f"training/eval image size (default: {DEFAULT_BUDGET.image_size})")
    p.add_argument("--backbone", choices=BACKBONES, default="efficientnet_lite0",
                   help="backbone (default: efficientnet_lite0 with its offline ImageNet weights; the others "
                        "start from random weights and reach much lower AP in this budget)")
    p.add_argument("--batch-size", type=_positive, default=None, metavar="N", help="images per step (default: 4)")
    p.add_argument("--train-images", type=_positive, default=None, metavar="N", help="synthetic training images")
    p.add_argument("--val-images", type=_positive, default=None, metavar="N", help="synthetic val images")
    p.add_argument("--seed", type=int, default=0, help="seed of data and initialisation (default: 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda ... (default: auto)")
    p.add_argument("--fast", action="store_true", help="tiny budget for tests/CI (about a minute)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    p.set_defaults(handler=run_quickstart)
    return p


def run_quickstart(args: argparse.Namespace) -> int:
    summary = quickstart(
        out=args.out, model=args.model, steps=args.steps, image_size=args.image_size, backbone=args.backbone,
        fast=args.fast, batch_size=args.batch_size, train_images=args.train_images, val_images=args.val_images,
        seed=args.seed, device=args.device,
    )
    if args.json:
        print(json.dumps(summary, default=str))
    return 0 if not summary["failed_stages"] else 1
