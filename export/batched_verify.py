"""Parity of a batched graph: image i of one batched ONNX Runtime run vs the eager model on image i alone.

The same images as the batch-1 check (`verify.parity_images`: synthetic scenes, optional real ones, a blank image,
square / portrait / landscape at each size), letterboxed by `sfdeploy.processing.letterbox` (what the predictor
does), all in ONE batch of mixed original sizes. The eager reference runs each canvas alone with its resize fixed
to the canvas (`batched.eager_on_canvas`); comparison and tolerances are the batch-1 check's (`compare_detections`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from sfdeploy import processing

from .verify import DEFAULT_SIZES, TOLERANCES, ParityReport, compare_detections, ort_session, parity_images


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img.transpose(1, 2, 0), 0, 1) * 255.0 + 0.5).astype(np.uint8)


def split_batched(outs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Padded batched outputs -> one N-form dict per image (the first num_detections rows)."""
    counts = outs["num_detections"].reshape(-1)
    return [{"boxes": outs["boxes"][i, :n], "scores": outs["scores"][i, :n], "labels": outs["labels"][i, :n]}
            for i, n in enumerate(int(c) for c in counts)]


def _contract_problems(outs: dict[str, np.ndarray], batch: int, k: int) -> list[str]:
    want = {"num_detections": ((batch,), np.int64), "boxes": ((batch, k, 4), np.float32),
            "scores": ((batch, k), np.float32), "labels": ((batch, k), np.int64)}
    return [f"{n} {outs[n].shape} {outs[n].dtype} is not {d.__name__} {list(s)}"
            for n, (s, d) in want.items() if outs[n].shape != s or outs[n].dtype != d]


def verify_batched(onnx_path: str | Path, model: Any, config: Any, canvas: tuple[int, int], *,
                   sizes: tuple[int, ...] = DEFAULT_SIZES, data: str | None = None,
                   tolerances: dict[str, float] | None = None) -> ParityReport:
    """One batched ORT run over every parity image vs the eager model per image. Does not raise on failure."""
    import torch

    from .batched import eager_on_canvas
    from .onnx import model_device

    tol = dict(TOLERANCES, **(tolerances or {}))
    t0 = time.perf_counter()
    work = (config.min_size, config.max_size)
    named = [(name, processing.letterbox(_to_uint8(img), canvas, work)) for name, img in parity_images(sizes, data)]
    batch = np.concatenate([p.tensor for _, p in named])
    sess = ort_session(onnx_path)
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, {"images": batch})))
    problems = _contract_problems(outs, len(named), int(config.detections_per_img))
    per_image = split_batched(outs) if not problems else [None] * len(named)
    device = model_device(model)
    results = []
    with eager_on_canvas(model, canvas) as eager, torch.no_grad():
        for (name, prep), got in zip(named, per_image):
            ref_t = eager([torch.from_numpy(prep.tensor[0]).to(device)])[0]
            ref = {k: v.detach().cpu().numpy() for k, v in ref_t.items()}
            if got is None:
                got = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
                       "labels": np.zeros(0, np.int64)}
            res = compare_detections(f"{name} (in a batch of {len(named)})", canvas, ref, got,
                                     config.effective_score_thresh, config.detections_per_img, tol)
            if problems:
                res.reasons = problems + res.reasons
                res.passed = False
            results.append(res)
    return ParityReport(artefact=str(onnx_path), tolerances=tol, images=results, seconds=time.perf_counter() - t0)
