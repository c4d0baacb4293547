"""`sfdeploy train` (and, registered from its own module, `eval`). No torch import at module top.

Exit codes of `train`: 0 completed; 0 diverged too (a divergence is a result - e.g. the `ce` ablation - reported with a
warning line and recorded as outcome "diverged" in metrics.jsonl, result.json and last.pt's meta), or 4 with
--fail-on-divergence; 2 user error (bad data spec, missing file, bad config); 130 interrupted (resume with --resume).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sfdeploy.config import GUIDED_FORMS
from sfdeploy.models.table import DETECTORS

EXIT_DIVERGED = 4


def register(subparsers: Any) -> None:
    _register_train(subparsers)
    try:
        from sfdeploy.training.evaluate_cli import register_eval
    except ModuleNotFoundError as exc:
        if exc.name not in ("sfdeploy.training.evaluate_cli",):
            raise
    else:
        register_eval(subparsers)


def _bool_pair(p: argparse.ArgumentParser, name: str, help_on: str) -> None:
    dest = name.replace("-", "_")
    g = p.add_mutually_exclusive_group()
    g.add_argument(f"--{name}", dest=dest, action="store_const", const=True, default=None, help=help_on)
    g.add_argument(f"--no-{name}", dest=dest, action="store_const", const=False, help=f"ablation: without {name}")


def _register_train(sub: Any) -> None:
    p = sub.add_parser(
        "train", help="train a detector (Sampling-Free or a baseline)",
        description="Train a torchvision detector with the Sampling-Free mechanism or a baseline. Values come from "
                    "the defaults, then --config FILE (YAML TrainConfig, model under 'model:'), then these flags "
                    "(flags win). With --resume and no --config, OUT/config.yaml is the base. Leaves OUT/last.pt, "
                    "OUT/best.pt (when evaluated), OUT/metrics.jsonl, OUT/config.yaml, OUT/result.json, OUT/plots/. "
                    "Exit status: 0 completed or diverged (a warning line names the step and loss term; "
                    f"{EXIT_DIVERGED} with --fail-on-divergence), 2 user error, 130 interrupted.")
    _model_flags(p)
    _data_flags(p)
    schedule = _schedule_flags(p)
    _gpu_flags(p)  # its flags sit between the schedule's in the usage line (as they always have)
    _run_flags(schedule)
    p.set_defaults(handler=_train)


def _model_flags(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model")
    m.add_argument("--model", choices=DETECTORS, help="detector")
    m.add_argument("--method", choices=("baseline", "ce", "sampling_free"), help="training method")
    m.add_argument("--backbone", help="resnet18|resnet34|resnet50|mobilenet_v3_large|efficientnet_lite0")
    m.add_argument("--backbone-weights", help="'imagenet' (offline, where available) or a state-dict path")
    m.add_argument("--weights", metavar="SOURCE",
                   help="start from pretrained detection weights: a torchvision weights name (e.g. "
                        "FasterRCNN_ResNet50_FPN_Weights.COCO_V1 or fcos_resnet50_fpn; downloaded once), a local .pth "
                        "state dict, or an sfdeploy checkpoint; what fits is loaded, class layers are re-initialised "
                        "(list in OUT/weights.json)")
    m.add_argument("--trainable-backbone-layers", type=int)
    m.add_argument("--fpn-channels", type=int)
    m.add_argument("--image-size", type=int, help="resize images to this size (min = max side)")
    m.add_argument("--anchor-size", type=int, help="smallest anchor side (doubles per pyramid level)")
    m.add_argument("--score-thresh", type=float, help="inference score threshold (default: per method)")
    m.add_argument("--prior", action="append", metavar="HEAD=PI",
                   help="fix a prior instead of estimating it, e.g. cls=1e-4 or rpn=2e-4 (repeatable)")
    m.add_argument("--rpn-proposals-train", type=int, dest="rpn_post_nms_top_n_train",
                   help="R-CNN proposals per image that reach the RoI head in training (default 1000, the paper's)")
    m.add_argument("--mask-positives", type=int, dest="mask_positives_per_image",
                   help="Mask R-CNN ce/sampling_free: train the mask head on at most N random positives per image "
                        "(default: every positive, the paper's; 128 = the baseline's cost)")
    _bool_pair(m, "optimal-init", "optimal bias initialisation (default: on for sampling_free)")
    _bool_pair(m, "guided-scaling", "guided loss scaling (default: on for sampling_free)")
    m.add_argument("--guided-form", choices=GUIDED_FORMS,
                   help="RetinaNet/FCOS guide: 'frozen' (the authors' 2021 code: g frozen after --guide-freeze-steps, "
                        "learnable sigma per loss term; default) or 'paper' (eq. 24: per-step g, learnable delta)")
    m.add_argument("--guide-freeze-steps", type=int, help="steps with positives that measure g before it freezes "
                                                           "(frozen form; default 100)")
    _bool_pair(m, "rcnn-guide-delta", "a learnable delta on the R-CNN heads' guide (default: off, as the authors)")
    m.add_argument("--rpn-straddle-thresh", type=float, help="ignore RPN anchors reaching more than N px outside the "
                                                             "image in the RPN loss (0: the authors' protocol)")


def _data_flags(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data")
    d.add_argument("--data", help="synthetic | synthetic:N | COCO JSON | VOC root | YOLO data.yaml")
    d.add_argument("--val-data", help="evaluate on this data (bbox AP) at --eval-every and at the end; keeps best.pt")
    d.add_argument("--images", dest="images_dir", help="image folder for a COCO JSON")
    d.add_argument("--val-images", dest="val_images_dir", metavar="DIR",
                   help="image folder of a COCO --val-data (e.g. val2017/ next to train2017/; default: --images)")
    d.add_argument("--val-fraction", type=float, metavar="F",
                   help="no separate validation set: hold out this fraction of --data (e.g. 0.2) for validation; "
                        "which images depends only on --split-seed and the file names")
    d.add_argument("--split-seed", type=int, metavar="N",
                   help="seed of the --val-fraction holdout (default 0; independent of --seed, so runs with "
                        "different seeds validate on the same images)")
    d.add_argument("--split", help="training split (VOC / synthetic), default train")
    d.add_argument("--val-split", help="validation split, default val")
    d.add_argument("--workers", type=int, help="DataLoader workers")
    d.add_argument("--no-hflip", dest="hflip", action="store_const", const=False, default=None)
    d.add_argument("--augment", choices=("none", "flip", "default", "strong"),
                   help="augmentation preset (torchvision.transforms.v2): none, flip, default (+ IoU-safe crop), "
                        "strong (+ photometric distortion and zoom-out, SSD's recipe); the same for every method and "
                        "recorded in OUT/config.yaml (default: the earlier flip pipeline, --no-hflip to disable)")


def _schedule_flags(p: argparse.ArgumentParser) -> Any:
    t = p.add_argument_group("schedule")
    t.add_argument("--out", help="output folder")
    steps = t.add_mutually_exclusive_group()
    steps.add_argument("--max-steps", type=int)
    steps.add_argument("--epochs", type=int)
    t.add_argument("--config", help="YAML TrainConfig file")
    t.add_argument("--batch-size", type=int, help="global batch size (all ranks together)")
    t.add_argument("--lr", type=float, help="learning rate (default: paper lr x batch/16)")
    t.add_argument("--optimizer", choices=("sgd", "adamw"))
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default 100; the authors: 500)")
    t.add_argument("--bias-lr-factor", type=float, help="bias lr = lr x this (default 1; the authors: 2)")
    t.add_argument("--grad-clip", type=float, help="max gradient norm (0: no clipping)")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="auto | cpu | cuda[:N]")
    t.add_argument("--amp", nargs="?", const="fp16", choices=("off", "fp16", "bf16"), default=None,
                   help="mixed precision: fp16 (CUDA; bare --amp), bf16 (CUDA or CPU; anchors and boxes stay fp32)")
    return t


def _run_flags(t: Any) -> None:
    t.add_argument("--eval-every", type=int, help="evaluate every N steps (needs --val-data)")
    t.add_argument("--checkpoint-every", type=int)
    t.add_argument("--log-every", type=int)
    t.add_argument("--divergence-factor", type=float)
    t.add_argument("--resume", action="store_true", help="continue OUT/last.pt exactly")
    t.add_argument("--no-plots", dest="plots", action="store_const", const=False, default=None)
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--fail-on-divergence", action="store_true", help=f"exit {EXIT_DIVERGED} when the run diverges")
    t.add_argument("--json", action="store_true", help="print the run result as one JSON object on stdout")


def _gpu_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("GPU speed")
    g.add_argument("--dist-timeout", type=float, dest="dist_timeout_minutes",
                   help="torchrun: process-group timeout in minutes (default 60: rank 0 evaluates meanwhile)")
    g.add_argument("--cudnn-benchmark", action="store_const", const=True, default=None,
                   help="autotune cuDNN convolutions (pays off with a fixed --image-size)")
    g.add_argument("--no-tf32", dest="tf32", action="store_const", const=False, default=None,
                   help="exact fp32 matmuls/convolutions (default: TF32 on Ampere and newer)")
    g.add_argument("--channels-last", action="store_const", const=True, default=None, help="NHWC convolutions")
    g.add_argument("--compile", action="store_const", const=True, default=None, help="torch.compile the backbone")
    g.add_argument("--no-pin-memory", dest="pin_memory", action="store_const", const=False, default=None)


MODEL_FLAGS = {"model": "detector", "method": "method", "backbone": "backbone", "backbone_weights": "backbone_weights",
               "trainable_backbone_layers": "trainable_backbone_layers", "fpn_channels": "fpn_channels",
               "anchor_size": "anchor_base_size", "score_thresh": "score_thresh", "optimal_init": "optimal_init",
               "guided_scaling": "guided_scaling", "rpn_post_nms_top_n_train": "rpn_post_nms_top_n_train",
               "mask_positives_per_image": "mask_positives_per_image", "guided_form": "guided_form",
               "guide_freeze_steps": "guide_freeze_steps", "rcnn_guide_delta": "rcnn_guide_delta",
               "rpn_straddle_thresh": "rpn_straddle_thresh"}
TRAIN_FLAGS = ("data", "val_data", "images_dir", "split", "val_split", "workers", "hflip", "out", "max_steps", "epochs",
               "batch_size", "lr", "optimizer", "weight_decay", "warmup_steps", "bias_lr_factor", "seed", "device", "amp",
               "eval_every", "checkpoint_every", "log_every", "divergence_factor", "plots", "val_images_dir", "val_fraction",
               "split_seed", "weights", "augment")

GPU_FLAGS = ("dist_timeout_minutes", "cudnn_benchmark", "tf32", "channels_last", "compile", "pin_memory")


def _parse_priors(items: list[str] | None) -> dict[str, float]:
    from sfdeploy.errors import UserError

    out: dict[str, float] = {}
    for item in items or []:
        head, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[head.strip()] = float(value)
        except ValueError:
            raise UserError(f"--prior {item!r}: expected HEAD=PI, e.g. cls=1e-4 or rpn=2e-4") from None
    return out


def config_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """defaults < --config FILE (or OUT/config.yaml when resuming) < flags."""
    from sfdeploy.config import ModelConfig, load_yaml_file

    from .config import TrainConfig

    base: dict[str, Any] = {}
    written_by_us = False  # a run's own config.yaml: read with what older releases trained with
    if args.config:
        base = load_yaml_file(args.config)
    elif args.resume and args.out and (Path(args.out) / "config.yaml").is_file():
        base = load_yaml_file(Path(args.out) / "config.yaml")
        written_by_us = True
    model = dict(base.pop("model", {}) or {})
    for flag, key in MODEL_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            model[key] = value
    if model.get("method") == "baseline" and args.optimal_init is None and args.guided_scaling is None:
        model.pop("optimal_init", None)  # switches of a config file for another method do not apply
        model.pop("guided_scaling", None)
    if args.image_size is not None:
        model["min_size"] = model["max_size"] = args.image_size
    priors = _parse_priors(args.prior)
    if priors:
        model["priors"] = {**(model.get("priors") or {}), **priors}
    for flag in TRAIN_FLAGS + GPU_FLAGS:
        value = getattr(args, flag, None)
        if value is not None:
            base[flag] = value
    if args.max_steps is not None:
        base["epochs"] = None
    if args.epochs is not None:
        base["max_steps"] = None
    if args.grad_clip is not None:
        base["grad_clip"] = args.grad_clip if args.grad_clip > 0 else None
    base["resume"] = bool(args.resume)
    base["model"] = ModelConfig.from_artefact(model) if written_by_us else ModelConfig.from_dict(model)
    return TrainConfig.from_dict(base)


def _train(args: argparse.Namespace) -> int:
    import json

    from .trainer import train

    cfg = config_from_args(args)
    result = train(cfg, progress=not args.no_progress)
    if args.json:
        print(json.dumps(result.to_dict(), default=str))
    if result.outcome == "diverged":
        return EXIT_DIVERGED if args.fail_on_divergence else 0
    if result.outcome == "interrupted":
        return 130
    return 0
