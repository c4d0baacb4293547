"""Deployed-speed benchmark: PyTorch eager vs ONNX Runtime (CPU) for each detector, before/after the NMS fix.

before: TorchScript export with torchvision's own batched_nms (one NonMaxSuppression over all classes' boxes,
        offset trick), default SessionOptions.
after:  export_onnx's default (`nms="multiclass"`: per-class NonMaxSuppression capped at the number of boxes the
        model keeps) and `verify.ort_session` options.
Run: python -m export.benchmark --sizes 320 640 --classes 80 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _median_ms(fn: Any, runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_detector(detector: str, size: int, classes: int, runs: int, workdir: Path, backbone: str = "resnet18",
                   method: str = "sampling_free") -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort
    import torch

    from sfdeploy.config import ModelConfig
    from sfdeploy.models import build_model

    from .onnx import export_onnx
    from .verify import ort_session

    torch.manual_seed(0)
    cfg = ModelConfig(detector=detector, method=method, backbone=backbone, min_size=size, max_size=size,
                      class_names=[f"c{i}" for i in range(classes)])
    model = build_model(cfg).eval()
    img = torch.rand(3, size, size, generator=torch.Generator().manual_seed(1))
    x = img[None].numpy()
    row: dict[str, Any] = {"detector": detector, "size": size, "classes": classes, "backbone": backbone,
                           "score_thresh": cfg.effective_score_thresh, "threads": torch.get_num_threads()}
    with torch.no_grad():
        row["eager_ms"] = _median_ms(lambda: model([img]), runs)
        row["eager_dets"] = int(model([img])[0]["scores"].shape[0])
    for tag, nms in (("before", "offset"), ("after", "multiclass")):
        path = workdir / f"{detector}_{size}_{tag}.onnx"
        res = export_onnx(model, path, config=cfg, exporter="torchscript", nms=nms, verify=False)
        if tag == "before":
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        else:
            sess = ort_session(path)
        row[f"{tag}_ms"] = _median_ms(lambda: sess.run(None, {"images": x}), runs)
        row[f"{tag}_dets"] = int(sess.run(None, {"images": x})[1].shape[0])
        row[f"{tag}_export_s"] = round(res.seconds, 2)
        row[f"{tag}_mb"] = round(res.bytes / 1e6, 1)
    row["speedup_after_vs_eager"] = row["eager_ms"] / row["after_ms"]
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| detector | px | eager ms | ORT before ms | ORT after ms | after vs eager | dets eager/before/after |\n"
            "|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['detector']} | {r['size']} | {r['eager_ms']:.0f} | {r['before_ms']:.0f} | "
                     f"{r['after_ms']:.0f} | {r['speedup_after_vs_eager']:.2f}x | "
                     f"{r['eager_dets']}/{r['before_dets']}/{r['after_dets']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--detectors", nargs="+", default=["retinanet", "fcos", "faster_rcnn", "mask_rcnn"])
    p.add_argument("--sizes", nargs="+", type=int, default=[320, 640])
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", default="bench_export.json")
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in a.detectors:
            for s in a.sizes:
                rows.append(bench_detector(d, s, a.classes, a.runs, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
                Path(a.out).write_text(json.dumps(rows, indent=1))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
