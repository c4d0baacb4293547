"""`sfdeploy prior`: estimate the optimal classifier prior of a detector on a data set (no training, no images read).

Light module: torch and the data readers are imported inside the handler.
"""

from __future__ import annotations

import argparse
import json
import sys

from sfdeploy.models.table import DETECTORS as DETECTOR_CHOICES


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "prior",
        help="estimate the optimal prior pi = N_fg / (N_fg + N_bg) / C from the annotations",
        description="One pass over the annotations: the model's anchors (points for FCOS) at the transformed image "
        "size are matched to the ground truth with the loss's matcher; pi = N_fg / (N_fg + N_bg) / C (C = 1 for "
        "the RPN). Results are cached by data fingerprint and anchor configuration.",
    )
    p.add_argument("--model", required=True, choices=DETECTOR_CHOICES, help="detector")
    p.add_argument("--backbone", default="resnet18", help="backbone (default: resnet18)")
    p.add_argument("--data", required=True, metavar="DATA",
                   help="'synthetic', 'synthetic:N', a COCO instances JSON or a VOC root")
    p.add_argument("--split", default="train", help="data split (default: train)")
    p.add_argument("--images", metavar="DIR", default=None, help="image folder (only needed for image sizes "
                   "missing from the annotations)")
    p.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="model input size (sets min_size = max_size = N; default: the config default)")
    p.add_argument("--seed", type=int, default=0, help="seed of synthetic data (default: 0)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the prior cache")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(handler=run_prior)
    return p


def run_prior(args: argparse.Namespace) -> int:
    from ..config import ModelConfig
    from ..data import build_dataset
    from .prior import estimate_priors

    dataset = build_dataset(args.data, split=args.split, images_dir=args.images, seed=args.seed)
    if len(dataset) == 0:
        from ..errors import UserError

        raise UserError(f"DATA={args.data!r} (split {args.split}) has no images")
    sizes = {}
    if args.image_size is not None:
        sizes = {"min_size": args.image_size, "max_size": args.image_size}
    cfg = ModelConfig(detector=args.model, backbone=args.backbone, class_names=list(dataset.class_names), **sizes)
    result = estimate_priors(cfg, dataset, progress=sys.stderr.isatty() and not args.json,
                             use_cache=not args.no_cache)
    head = cfg.prior_heads[0]
    fg, bg = result.fg[head], result.bg[head]
    classes = 1 if head == "rpn" else cfg.num_classes
    print(f"prior[{head}] = {result.pi[head]:.4g}  ({fg} fg / {fg + bg} labelled anchors, C = {classes}; "
          f"{result.images} images, {cfg.detector}, input {cfg.min_size}-{cfg.max_size}px, "
          f"{result.seconds:.1f}s{', cached' if result.cached else ''})", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict()))
    return 0
