"""Parity check: the checkpoint's PyTorch model vs an exported ONNX graph in ONNX Runtime, on the same images.

Used by `export_onnx(verify=True)` and by `sfdeploy verify`. ONNX Runtime is used directly (no serving layer).

Matching: detections of both runs are paired greedily in eager score order with the unpaired ORT detection of
highest IoU (IoU >= 0.5). Tolerances (`TOLERANCES`, documented in docs/EXPORT.md):
- box: max |corner difference| <= max(0.05 px, 1e-4 x longest image side)
- score: max |difference| <= 1e-3 (fp32 graph; fp16 TensorRT would use `FP16_TOLERANCES`)
- labels: every matched pair has the same label (agreement 1.0)
- masks (Mask R-CNN): mean IoU of the 0.5-binarised masks >= 0.95
- unmatched detections are allowed only where the two runs may legitimately disagree: scores within the score
  tolerance of the score threshold, or of the last score kept by `detections_per_img` (a tie at the cut).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TOLERANCES = {"box_px": 0.05, "box_rel": 1e-4, "score": 1e-3, "label_agreement": 1.0, "mask_iou": 0.95}
FP16_TOLERANCES = {"box_px": 1.0, "box_rel": 5e-3, "score": 2e-2, "label_agreement": 0.98, "mask_iou": 0.85}
DEFAULT_SIZES = (160, 256)


@dataclass
class ImageParity:
    name: str
    size: tuple[int, int]
    n_torch: int
    n_onnx: int
    matched: int
    unmatched_borderline: int
    unmatched: int
    tied_ambiguous: int
    max_box_error_px: float
    max_score_error: float
    label_agreement: float
    mask_iou: float | None
    passed: bool
    reasons: list[str] = field(default_factory=list)


@dataclass
class ParityReport:
    artefact: str
    tolerances: dict[str, float]
    images: list[ImageParity]
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.images) and all(i.passed for i in self.images)

    def by_size(self) -> dict[str, dict[str, Any]]:
        """Per input size: worst errors over its images and pass/fail (the `sfdeploy verify --json` payload)."""
        out: dict[str, dict[str, Any]] = {}
        for img in self.images:
            key = f"{img.size[0]}x{img.size[1]}"
            agg = out.setdefault(key, {"images": 0, "detections_torch": 0, "detections_onnx": 0,
                                       "max_box_error_px": 0.0, "max_score_error": 0.0, "label_agreement": 1.0,
                                       "mask_iou": None, "passed": True, "reasons": []})
            agg["images"] += 1
            agg["detections_torch"] += img.n_torch
            agg["detections_onnx"] += img.n_onnx
            agg["max_box_error_px"] = max(agg["max_box_error_px"], img.max_box_error_px)
            agg["max_score_error"] = max(agg["max_score_error"], img.max_score_error)
            agg["label_agreement"] = min(agg["label_agreement"], img.label_agreement)
            if img.mask_iou is not None:
                agg["mask_iou"] = img.mask_iou if agg["mask_iou"] is None else min(agg["mask_iou"], img.mask_iou)
            agg["passed"] = agg["passed"] and img.passed
            agg["reasons"] += [f"{img.name}: {r}" for r in img.reasons]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"artefact": self.artefact, "passed": self.passed, "tolerances": self.tolerances,
                "seconds": round(self.seconds, 3), "sizes": self.by_size(), "images": [asdict(i) for i in self.images]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        lines = [f"parity {'PASSED' if self.passed else 'FAILED'} for {self.artefact}"]
        for size, agg in self.by_size().items():
            mask = "" if agg["mask_iou"] is None else f", mask IoU {agg['mask_iou']:.4f}"
            lines.append(
                f"  {size}: {agg['images']} images, {agg['detections_torch']}/{agg['detections_onnx']} detections "
                f"(torch/onnx), max box error {agg['max_box_error_px']:.2e} px, max score error "
                f"{agg['max_score_error']:.2e}, label agreement {agg['label_agreement']:.3f}{mask} -> "
                f"{'ok' if agg['passed'] else 'FAIL'}")
            lines += [f"    {r}" for r in agg["reasons"][:5]]
        return "\n".join(lines)


class ParityError(Exception):
    """Exported graph and PyTorch disagree beyond the tolerances; `.report` holds the details."""

    def __init__(self, report: ParityReport) -> None:
        super().__init__(report.summary().replace("\n", " |"))
        self.report = report


# ------------------------------------------------------------------------------------------- ORT session
def ort_session(path: str | Path, threads: int | None = None, profile_prefix: str | None = None):  # type: ignore[no-untyped-def]
    """The CPU session the project deploys with: all graph optimisations, sequential execution."""
    from sfdeploy.ort import import_onnxruntime

    ort = import_onnxruntime()

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------- images
def parity_images(sizes: tuple[int, ...] = DEFAULT_SIZES, data: str | None = None, max_real: int = 2
                  ) -> list[tuple[str, np.ndarray]]:
    """(name, float32 [3,H,W] in [0,1]) images: synthetic scenes (+ real ones from `data`) + a blank image,
    each resized to a square, a portrait (W = 0.75 H) or a landscape (W = 1.33 H) shape, cycling, so that an exporter
    that specialised on one orientation (the dynamo tracer records guards such as H > W) is caught."""
    import torch
    import torch.nn.functional as F

    base: list[tuple[str, np.ndarray]] = []
    try:
        from sfdeploy.data import build_dataset

        ds = build_dataset("synthetic:4", split="val")
        base += [(f"synthetic{i}", ds[i][0].numpy()) for i in range(2)]
        if data:
            real = build_dataset(data, split="val")
            base += [(f"data{i}", real[i][0].numpy()) for i in range(min(max_real, len(real)))]
    except ImportError:  # pragma: no cover - core data package missing: deterministic shapes
        base += [("shapes0", _shapes_image(0)), ("shapes1", _shapes_image(1))]
    base.append(("blank", np.full((3, 64, 64), 0.5, dtype=np.float32)))
    out = []
    for j, s in enumerate(sizes):
        short = max(32, int(round(s * 0.75)))
        for k, (name, img) in enumerate(base):
            hw = [(s, s), (s, short), (short, s)][(k + j) % 3]
            t = F.interpolate(torch.from_numpy(img)[None], size=hw, mode="bilinear", align_corners=False)[0]
            out.append((f"{name}@{hw[0]}x{hw[1]}", t.clamp(0, 1).numpy().astype(np.float32)))
    return out


def _shapes_image(seed: int, size: int = 256) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((3, size, size), 0.4, dtype=np.float32)
    for _ in range(4):
        x0, y0 = rng.integers(0, size - 64, 2)
        w, h = rng.integers(20, 64, 2)
        img[:, y0:y0 + h, x0:x0 + w] = rng.random(3)[:, None, None]
    return img


# ------------------------------------------------------------------------------------------- comparison
def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def compare_detections(name: str, size: tuple[int, int], ref: dict[str, np.ndarray], got: dict[str, np.ndarray],
                       score_thresh: float, max_dets: int, tol: dict[str, float]) -> ImageParity:
    rb, rs, rl = ref["boxes"], ref["scores"], ref["labels"]
    gb, gs, gl = got["boxes"], got["scores"], got["labels"]
    reasons: list[str] = []
    ious = _iou(rb.astype(np.float64), gb.astype(np.float64))
    used = np.zeros(len(gb), dtype=bool)
    pairs: list[tuple[int, int]] = []
    for i in np.argsort(-rs, kind="stable"):
        if ious.shape[1] == 0:
            break
        cand = np.where(~used)[0]
        if cand.size == 0:
            break
        # exact partner first (same label, score within tolerance, smallest corner error), else best IoU
        close = cand[(gl[cand] == rl[i]) & (np.abs(gs[cand] - rs[i]) <= tol["score"]) & (ious[i, cand] >= 0.5)]
        if close.size:
            j = close[int(np.argmin(np.abs(gb[close] - rb[i]).max(1)))]
        else:
            key = ious[i, cand] + (gl[cand] == rl[i]) * 1.0 - np.abs(gs[cand] - rs[i])
            j = cand[int(np.argmax(key))]
        if ious[i, j] >= 0.5:
            used[j] = True
            pairs.append((int(i), int(j)))
    p_ref = np.array([p[0] for p in pairs], dtype=np.int64)
    p_got = np.array([p[1] for p in pairs], dtype=np.int64)
    un_ref = np.setdiff1d(np.arange(len(rb)), p_ref)
    un_got = np.setdiff1d(np.arange(len(gb)), p_got)
    cut = min(rs.min() if len(rs) >= max_dets else 0.0, gs.min() if len(gs) >= max_dets else 0.0) if max_dets else 0.0
    border_lo = max(score_thresh, cut) + 2 * tol["score"]

    def borderline(scores: np.ndarray) -> np.ndarray:
        return scores <= border_lo

    # Among (near-)tied scores NMS may keep a different member of the tie in each runtime: an unmatched
    # detection whose twin (same label, same score within tolerance) is unmatched on the other side is a swap.
    swap_ref = np.array([np.any((gl[un_got] == rl[i]) & (np.abs(gs[un_got] - rs[i]) <= tol["score"]))
                         for i in un_ref], dtype=bool)
    swap_got = np.array([np.any((rl[un_ref] == gl[j]) & (np.abs(rs[un_ref] - gs[j]) <= tol["score"]))
                         for j in un_got], dtype=bool)
    n_border = int((borderline(rs[un_ref]) | swap_ref).sum() + (borderline(gs[un_got]) | swap_got).sum())
    n_bad = len(un_ref) + len(un_got) - n_border
    if n_bad:
        reasons.append(f"{n_bad} unmatched detections above the threshold/cut (torch {len(rb)}, onnx {len(gb)})")
    # Exactly tied scores (e.g. a blank image: identical features at many anchors) make the kept box among the
    # tied ones implementation-defined; such pairs are counted, not held to the box tolerance.
    pair_err = np.abs(rb[p_ref] - gb[p_got]).max(1) if len(pairs) else np.zeros(0)
    tied = np.array([np.sum((np.abs(rs - rs[i]) <= 1e-6) & (rl == rl[i])) > 1 for i in p_ref], dtype=bool)
    box_tol = max(tol["box_px"], tol["box_rel"] * max(size))
    ambiguous = tied & (pair_err > box_tol)
    n_tied = int(ambiguous.sum())
    box_err = float(pair_err[~ambiguous].max()) if (~ambiguous).any() else 0.0
    score_err = float(np.abs(rs[p_ref] - gs[p_got]).max()) if len(pairs) else 0.0
    agree = float((rl[p_ref] == gl[p_got]).mean()) if len(pairs) else 1.0
    if box_err > box_tol:
        reasons.append(f"max box error {box_err:.3g} px > {box_tol:.3g} px")
    if score_err > tol["score"]:
        reasons.append(f"max score error {score_err:.3g} > {tol['score']:.3g}")
    if n_tied > len(pairs) // 2:
        reasons.append(f"{n_tied} of {len(pairs)} matched boxes differ among exactly tied scores")
    if agree < tol["label_agreement"]:
        reasons.append(f"label agreement {agree:.3f} < {tol['label_agreement']}")
    mask_iou = None
    if "masks" in ref and ref["masks"] is not None and "masks" in got:
        if got["masks"].shape[1:] != (1, *size) and len(got["masks"]):
            reasons.append(f"mask shape {got['masks'].shape} is not [N,1,{size[0]},{size[1]}]")
        elif len(pairs):
            a = ref["masks"][p_ref, 0] >= 0.5
            b = got["masks"][p_got, 0] >= 0.5
            inter = (a & b).reshape(len(pairs), -1).sum(1)
            union = (a | b).reshape(len(pairs), -1).sum(1)
            mask_iou = float(np.where(union > 0, inter / np.maximum(union, 1), 1.0).mean())
            if mask_iou < tol["mask_iou"]:
                reasons.append(f"mean mask IoU {mask_iou:.4f} < {tol['mask_iou']}")
        else:
            mask_iou = 1.0
    return ImageParity(name=name, size=size, n_torch=len(rb), n_onnx=len(gb), matched=len(pairs),
                       unmatched_borderline=n_border, unmatched=n_bad, tied_ambiguous=n_tied, max_box_error_px=box_err,
                       max_score_error=score_err, label_agreement=agree, mask_iou=mask_iou,
                       passed=not reasons, reasons=reasons)


def _check_output_contract(outs: list[np.ndarray], names: list[str], size: tuple[int, int]) -> list[str]:
    d = dict(zip(names, outs))
    problems = []
    n = d["scores"].shape[0]
    if d["boxes"].shape != (n, 4) or d["boxes"].dtype != np.float32:
        problems.append(f"boxes {d['boxes'].shape} {d['boxes'].dtype} is not float32 [N,4]")
    if d["scores"].dtype != np.float32:
        problems.append(f"scores dtype {d['scores'].dtype} is not float32")
    if d["labels"].shape != (n,) or d["labels"].dtype != np.int64:
        problems.append(f"labels {d['labels'].shape} {d['labels'].dtype} is not int64 [N]")
    if "masks" in d and (d["masks"].shape != (n, 1, *size) or d["masks"].dtype != np.float32):
        problems.append(f"masks {d['masks'].shape} is not float32 [N,1,{size[0]},{size[1]}]")
    return problems


def verify_onnx(onnx_path: str | Path, model: Any, config: Any, *, sizes: tuple[int, ...] = DEFAULT_SIZES,
                data: str | None = None, tolerances: dict[str, float] | None = None,
                images: list[tuple[str, np.ndarray]] | None = None, threads: int | None = None) -> ParityReport:
    """Run `model` (eval, CPU) and the ONNX graph on the same images; compare. Does not raise on failure."""
    import torch

    tol = dict(TOLERANCES, **(tolerances or {}))
    t0 = time.perf_counter()
    sess = ort_session(onnx_path, threads=threads)
    names = [o.name for o in sess.get_outputs()]
    results = []
    imgs = images if images is not None else parity_images(tuple(sizes), data)
    from .onnx import model_device

    device = model_device(model)
    for name, img in imgs:
        size = (int(img.shape[1]), int(img.shape[2]))
        with torch.no_grad():
            ref_t = model([torch.from_numpy(img).to(device)])[0]
        ref = {k: v.detach().cpu().numpy() for k, v in ref_t.items()}
        outs = sess.run(None, {"images": img[None]})
        problems = _check_output_contract(outs, names, size)
        got = dict(zip(names, outs))
        res = compare_detections(name, size, ref, got, config.effective_score_thresh, config.detections_per_img, tol)
        if problems:
            res.reasons = problems + res.reasons
            res.passed = False
        results.append(res)
    return ParityReport(artefact=str(onnx_path), tolerances=tol, images=results, seconds=time.perf_counter() - t0)


def verify_artefact(artefact: str | Path, checkpoint: str | Path, *, sizes: tuple[int, ...] = DEFAULT_SIZES,
                    data: str | None = None) -> ParityReport:
    """`sfdeploy verify`: an .onnx file against the checkpoint it came from."""
    from sfdeploy.checkpoint import load_model
    from sfdeploy.errors import UserError

    path = Path(artefact)
    if not path.is_file():
        raise FileNotFoundError(f"artefact not found: {path}")
    if path.suffix == ".engine":
        raise UserError("verifying a TensorRT engine needs TensorRT and a CUDA GPU; verify its .onnx here")
    if path.suffix != ".onnx":
        raise UserError(f"{path} is not an .onnx file")
    model, ckpt = load_model(checkpoint)
    from sfdeploy.artefact import parse_metadata

    from .onnx import read_metadata

    spec = parse_metadata(read_metadata(path))["input"]
    if spec.get("batch") == "dynamic":  # export --batch dynamic: one batched run vs eager per image
        from .batched_verify import verify_batched

        canvas = spec.get("canvas") or [ckpt.config.max_size] * 2
        return verify_batched(path, model, ckpt.config, (int(canvas[0]), int(canvas[1])), sizes=sizes, data=data)
    return verify_onnx(path, model, ckpt.config, sizes=sizes, data=data)
