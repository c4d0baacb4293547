"""`sfdeploy eval CHECKPOINT --data DATA`: COCO AP of a checkpoint. Light module: torch is imported by the handler."""

from __future__ import annotations

import argparse
import sys

_DATA_HELP = ("'synthetic', 'synthetic:N' (N generated images), a COCO instances JSON file, "
              "a PASCAL VOC root or a YOLO data.yaml")


def register_eval(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="COCO box (and mask) AP of a checkpoint, with per-class AP",
        description="Evaluate a checkpoint with COCO metrics (AP, AP50, AP75, APs/m/l, AR100; segm AP for "
                    "Mask R-CNN) and per-class AP. --json prints one JSON object on stdout; the readable tables "
                    "always go to stderr.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="an sfdeploy checkpoint (.pt), e.g. runs/exp/best.pt")
    p.add_argument("--data", required=True, metavar="DATA", help=f"data to evaluate on: {_DATA_HELP}")
    p.add_argument("--split", default="val", help="split of synthetic/VOC data (default: val)")
    p.add_argument("--images", dest="images_dir", metavar="DIR", help="image folder of a COCO JSON (default: next to it)")
    p.add_argument("--seed", type=int, default=0, help="seed of synthetic data (default: 0)")
    p.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="evaluate only the images `train --val-fraction F` held out of DATA")
    p.add_argument("--split-seed", type=int, default=0, metavar="N", help="the --split-seed of that run (default: 0)")
    p.add_argument("--batch-size", type=_positive, default=2, metavar="N", help="images per forward pass (default: 2)")
    p.add_argument("--max-images", type=_positive, default=None, metavar="N", help="evaluate the first N images only")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="data loader processes (default: 0)")
    p.add_argument("--backend", choices=("auto", "faster_coco_eval", "pycocotools"), default="auto",
                   help="COCO evaluation package (default: faster-coco-eval when installed)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object on stdout")
    p.add_argument("--out", metavar="DIR", help="also write DIR/metrics.json, DIR/ap.md (per-class AP, markdown), "
                                                "DIR/pr_bbox.png (+ pr_segm.png) and DIR/confusion_matrix.png")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(handler=run_eval)
    return p


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def run_eval(args: argparse.Namespace) -> int:
    from .evaluate import EvaluationError, evaluate_checkpoint, format_metrics, metrics_json

    details: dict = {}
    try:
        metrics = evaluate_checkpoint(
            args.checkpoint, args.data, split=args.split, images_dir=args.images_dir, seed=args.seed,
            device=args.device, batch_size=args.batch_size, progress=args.progress and sys.stderr.isatty(),
            max_images=args.max_images, backend=args.backend, workers=args.workers,
            val_fraction=args.val_fraction, split_seed=args.split_seed, details=details,
        )
        if args.out:
            from .eval_report import write_eval_report

            write_eval_report(args.out, metrics, details, backend=args.backend)
    except EvaluationError as exc:
        from sfdeploy.errors import UserError

        raise UserError(str(exc)) from exc
    ck = metrics.get("checkpoint", {})
    step = f", step {ck['step']}" if ck.get("step") is not None else ""
    print(f"{ck.get('path')}: {ck.get('detector')}/{ck.get('method')}/{ck.get('backbone')}{step} "
          f"on {metrics['data']['source']}", file=sys.stderr)
    print(format_metrics(metrics, style="plain"), file=sys.stderr)
    if args.out:
        print(f"report: {', '.join(sorted(metrics['files'].values()))}", file=sys.stderr)
    if args.json:
        print(metrics_json(metrics))
    return 0
