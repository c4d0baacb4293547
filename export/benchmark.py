"""Deployed-speed benchmark: PyTorch eager vs ONNX Runtime (CPU) per detector, before/after the export's NMS fix.

before: a plain TorchScript export with no adapters (torchvision's own batched_nms: one NonMaxSuppression over all
        classes' boxes; Mask R-CNN's ONNX Loop of per-detection Resize for the mask paste), default SessionOptions.
after:  export_onnx's default (per-class NonMaxSuppression capped at the number of boxes the model keeps; loop-free
        mask paste) and `verify.ort_session` options; the export time, file size and parity errors are for this one.

Two sources of models:
  --checkpoints A.pt B.pt ...   trained checkpoints, run at each --sizes (the model's min/max size set to it) on a
                                synthetic val scene: the latency users get at the threshold each method ships with.
  --detectors ... --classes 80  random-init ResNet-18 models with many classes: the NMS stress case of issue 7.

Run (idle machine): python -m sfdeploy.export.benchmark --checkpoints runs/x/last.pt --sizes 320 640 --out bench.json --md bench.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sfdeploy.models.table import DETECTORS


def _median_ms(fn: Any, runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _scene(size: int) -> Any:
    """A synthetic val scene (real content, so trained models fire) resized to size x size, [3,H,W] in [0,1]."""
    import torch.nn.functional as F

    from sfdeploy.data import build_dataset

    img = build_dataset("synthetic:1", split="val")[0][0]
    return F.interpolate(img[None], size=(size, size), mode="bilinear", align_corners=False)[0].clamp(0, 1)


def _random_model(detector: str, size: int, classes: int, backbone: str, method: str) -> tuple[Any, Any, str]:
    import torch

    from sfdeploy.config import ModelConfig
    from sfdeploy.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(detector=detector, method=method, backbone=backbone, min_size=size, max_size=size,
                      class_names=[f"c{i}" for i in range(classes)])
    return build_model(cfg).eval(), cfg, f"random {backbone}, {classes} classes"


def _checkpoint_model(path: str, size: int) -> tuple[Any, Any, str]:
    """The checkpoint's model run at `size`: torchvision's transform resizes to min/max size, so set both."""
    from sfdeploy.checkpoint import load_model

    model, ckpt = load_model(path)
    model.transform.min_size = (size,)
    model.transform.max_size = size
    cfg = dataclasses.replace(ckpt.config, min_size=size, max_size=size)
    return model, cfg, f"{ckpt.config.backbone} FPN-{ckpt.config.fpn_channels}, {ckpt.config.num_classes} classes, " \
                       f"step {ckpt.meta.get('step', '?')} ({os.path.relpath(path)})"


def naive_export(model: Any, cfg: Any, path: Path) -> None:
    """What a user gets from torch.onnx.export on a torchvision detector with no adapters: torchvision's own
    batched_nms (one NonMaxSuppression over all classes' boxes) and its ONNX Loop for the mask paste."""
    import warnings

    import torch

    from .adapters import DetectorExportAdapter
    from .onnx import DUMMY_HW, output_names

    names = output_names(cfg)
    dyn = {"images": {2: "height", 3: "width"}, **{n: {0: "num_detections"} for n in names}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(DetectorExportAdapter(model, cfg.has_masks).eval(), (torch.rand(1, 3, *DUMMY_HW),),
                          str(path), dynamo=False, opset_version=17, input_names=["images"], output_names=names,
                          dynamic_axes=dyn)


def bench_model(model: Any, cfg: Any, source: str, size: int, runs: int, workdir: Path, image: Any,
                verify: bool = True, dynamo: bool = False) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from .onnx import export_onnx
    from .verify import ort_session

    x = image[None].numpy()
    row: dict[str, Any] = {"detector": cfg.detector, "method": cfg.method, "size": size, "source": source,
                           "score_thresh": cfg.effective_score_thresh, "threads": torch.get_num_threads()}
    with torch.no_grad():
        row["eager_ms"] = _median_ms(lambda: model([image]), runs)
        row["eager_dets"] = int(model([image])[0]["scores"].shape[0])
    for tag in ("before", "after"):
        path = workdir / f"{cfg.detector}_{cfg.method}_{size}_{tag}.onnx"
        if tag == "before":
            naive_export(model, cfg, path)
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        else:
            res = export_onnx(model, path, config=cfg, exporter="torchscript", verify=verify, sizes=(size,))
            sess = ort_session(path)
            row["export_s"] = round(res.seconds, 2)
            row["mb"] = round(res.bytes / 1e6, 2)
            if res.parity is not None:
                sizes = res.parity.by_size()
                row["parity_passed"] = res.parity.passed
                row["max_box_error_px"] = max(s["max_box_error_px"] for s in sizes.values())
                row["max_score_error"] = max(s["max_score_error"] for s in sizes.values())
                masks = [s["mask_iou"] for s in sizes.values() if s.get("mask_iou") is not None]
                row["mask_iou"] = min(masks) if masks else None
        row[f"{tag}_ms"] = _median_ms(lambda: sess.run(None, {"images": x}), runs)
        row[f"{tag}_dets"] = int(sess.run(None, {"images": x})[1].shape[0])
    row["speedup_after_vs_eager"] = row["eager_ms"] / row["after_ms"]
    if dynamo:  # the torch.export-based exporter, same NMS rewrite and session options
        path = workdir / f"{cfg.detector}_{cfg.method}_{size}_dynamo.onnx"
        try:
            res = export_onnx(model, path, config=cfg, exporter="dynamo", verify=verify, sizes=(size,))
            sess = ort_session(path)
            row["dynamo_export_s"] = round(res.seconds, 2)
            row["dynamo_parity_passed"] = res.parity.passed if res.parity is not None else None
            row["dynamo_ms"] = _median_ms(lambda: sess.run(None, {"images": x}), runs)
        except Exception as exc:  # recorded, the table shows it
            row["dynamo_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return row


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(rows: list[dict[str, Any]]) -> str:
    dynamo = any("dynamo_ms" in r or "dynamo_error" in r for r in rows)
    lines = ["| detector | method | px | score thr | export s | MB | max box err px | max score err | mask IoU | "
             "eager ms | ORT before ms | ORT after ms | after vs eager | dets eager/before/after |"
             + (" dynamo export s | dynamo ORT ms |" if dynamo else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if dynamo else "")]
    for r in rows:
        lines.append(f"| {r['detector']} | {r['method']} | {r['size']} | {r['score_thresh']:g} | "
                     f"{_fmt(r.get('export_s'), '.1f')} | {_fmt(r.get('mb'), '.1f')} | "
                     f"{_fmt(r.get('max_box_error_px'), '.1e')} | {_fmt(r.get('max_score_error'), '.1e')} | "
                     f"{_fmt(r.get('mask_iou'), '.3f')} | {r['eager_ms']:.0f} | {r['before_ms']:.0f} | "
                     f"{r['after_ms']:.0f} | {r['speedup_after_vs_eager']:.2f}x | "
                     f"{r['eager_dets']}/{r['before_dets']}/{r['after_dets']} |"
                     + (f" {_fmt(r.get('dynamo_export_s'), '.1f')} | {_fmt(r.get('dynamo_ms'), '.0f')} |"
                        if dynamo else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", nargs="+", default=[], help="trained checkpoints (else random-init models)")
    p.add_argument("--detectors", nargs="+", default=list(DETECTORS))
    p.add_argument("--sizes", nargs="+", type=int, default=[320, 640])
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--method", default="sampling_free")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--dynamo", action="store_true", help="also export with the dynamo exporter and time it")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check of the 'after' export")
    p.add_argument("--out", default="bench_export.json")
    p.add_argument("--md", help="also write the markdown table here")
    a = p.parse_args(argv)
    import platform

    import onnxruntime
    import torch

    from sfdeploy.io import atomic_write_text

    rows: list[dict[str, Any]] = []
    meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "loadavg_start": os.getloadavg(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "command": "python -m sfdeploy.export.benchmark " + " ".join(argv if argv is not None else sys.argv[1:])}
    jobs = ([(lambda s, c=c: _checkpoint_model(c, s)) for c in a.checkpoints] if a.checkpoints else
            [(lambda s, d=d: _random_model(d, s, a.classes, a.backbone, a.method)) for d in a.detectors])
    with tempfile.TemporaryDirectory() as tmp:
        for make in jobs:
            for s in a.sizes:
                model, cfg, source = make(s)
                rows.append(bench_model(model, cfg, source, s, a.runs, Path(tmp), _scene(s), not a.no_verify,
                                        a.dynamo))
                print(json.dumps(rows[-1]), flush=True)
                meta["loadavg_end"] = os.getloadavg()
                atomic_write_text(Path(a.out), json.dumps({**meta, "rows": rows}, indent=1))
    table = markdown(rows)
    if a.md:
        atomic_write_text(Path(a.md), f"Command: `{meta['command']}`  \nMachine: {meta['machine']}, "
                                      f"torch {meta['torch']}, onnxruntime {meta['onnxruntime']}, load average "
                                      f"{meta['loadavg_start']} -> {meta['loadavg_end']}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
