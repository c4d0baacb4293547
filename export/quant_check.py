"""Detection agreement of a quantized graph with its fp32 graph (both in ONNX Runtime, same images).

An int8 graph cannot meet the fp32 parity tolerances of `verify.py` (scores move by ~1e-2, the detections near the
1e-3 threshold reshuffle), so it is held to a looser, stated check on the detections that matter: each of the fp32
graph's `top_k` highest-scoring detections per image must have an int8 detection of the same label with
IoU >= 0.5 (agreement over all images >= `INT8_TOLERANCES["agreement"]`), and on those pairs the score and the box
corners may move by at most `score` and `box_rel` x the longest image side. The fp32 graph itself is held to the
tight parity against PyTorch by `export_onnx`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .verify import _iou  # the parity check's IoU: one implementation

INT8_TOLERANCES = {"agreement": 0.9, "score": 0.1, "box_rel": 0.03}
TOP_K = 10
SAME_BOX_PX = 0.01  # corners this close: the same box


@dataclass
class AgreementReport:
    fp32: str
    quantized: str
    tolerances: dict[str, float]
    images: int
    reference_detections: int
    matched: int
    max_score_error: float
    mean_score_error: float
    max_box_error_rel: float
    reasons: list[str] = field(default_factory=list)
    kind: str = "int8"  # what is compared with fp32 (e.g. "openvino bf16"), for the summary line

    @property
    def agreement(self) -> float:
        return self.matched / self.reference_detections if self.reference_detections else 1.0

    @property
    def passed(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agreement": round(self.agreement, 4), "passed": self.passed}

    def summary(self) -> str:
        head = (f"{self.kind} agreement {'PASSED' if self.passed else 'FAILED'} for {self.quantized}: "
                f"{self.matched}/{self.reference_detections} top-{TOP_K} fp32 detections kept ({self.agreement:.3f}) on "
                f"{self.images} images, score error max "
                f"{self.max_score_error:.3g} / mean {self.mean_score_error:.3g}, box error max "
                f"{self.max_box_error_rel:.3g} x image side")
        return "\n".join([head] + [f"  {r}" for r in self.reasons])


class AgreementError(Exception):
    """The quantized graph disagrees with the fp32 graph beyond INT8_TOLERANCES; `.report` holds the details."""

    def __init__(self, report: AgreementReport) -> None:
        super().__init__(report.summary().replace("\n", " |"))
        self.report = report


def match_top(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], top_k: int = TOP_K
              ) -> list[tuple[int, int | None]]:
    """Greedy pairs (ref index, got index or None) for ref's top_k detections: same label, highest IoU >= 0.5."""
    order = np.argsort(-ref["scores"], kind="stable")[:top_k]
    used = np.zeros(len(got["scores"]), dtype=bool)
    a, b = ref["boxes"][order].astype(np.float64), got["boxes"].astype(np.float64)
    ious = _iou(a, b) if len(got["scores"]) else np.zeros((len(order), 0))
    if len(got["scores"]):  # the same box found again counts as IoU 1 even when it is degenerate (zero area, IoU 0)
        ious = np.where(np.abs(a[:, None, :] - b[None, :, :]).max(2) <= SAME_BOX_PX, 1.0, ious)
    pairs: list[tuple[int, int | None]] = []
    for row, i in enumerate(order):
        ok = (~used) & (got["labels"] == ref["labels"][i]) & (ious[row] >= 0.5)
        if ok.any():
            j = int(np.argmax(np.where(ok, ious[row], -1.0)))
            used[j] = True
            pairs.append((int(i), j))
        else:
            pairs.append((int(i), None))
    return pairs


def check_agreement(fp32_path: str | Path, quantized_path: str | Path, images: list[np.ndarray], *,
                    tolerances: dict[str, float] | None = None, top_k: int = TOP_K,
                    run_quantized: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None,
                    kind: str = "int8") -> AgreementReport:
    """Run both graphs on `images` (float32 [1,3,H,W]) and compare; does not raise. `run_quantized` runs the other
    side in another runtime (e.g. OpenVINO: image -> {"boxes", "scores", "labels"}); default: ORT on
    `quantized_path`."""
    from .verify import ort_session

    tol = dict(INT8_TOLERANCES, **(tolerances or {}))
    ref_sess = ort_session(fp32_path)
    names = [o.name for o in ref_sess.get_outputs()]
    if run_quantized is None:
        q_sess = ort_session(quantized_path)

        def run_quantized(img: np.ndarray) -> dict[str, np.ndarray]:
            return dict(zip(names, q_sess.run(names, {"images": img})))

    total = matched = 0
    score_errs: list[float] = []
    box_errs: list[float] = []
    for img in images:
        ref = dict(zip(names, ref_sess.run(names, {"images": img})))
        got = run_quantized(img)
        side = float(max(img.shape[2:]))
        for i, j in match_top(ref, got, top_k):
            total += 1
            if j is None:
                continue
            matched += 1
            score_errs.append(abs(float(ref["scores"][i]) - float(got["scores"][j])))
            box_errs.append(float(np.abs(ref["boxes"][i] - got["boxes"][j]).max()) / side)
    report = AgreementReport(fp32=str(fp32_path), quantized=str(quantized_path), tolerances=tol, images=len(images),
                             reference_detections=total, matched=matched,
                             max_score_error=max(score_errs, default=0.0),
                             mean_score_error=float(np.mean(score_errs)) if score_errs else 0.0,
                             max_box_error_rel=max(box_errs, default=0.0), kind=kind)
    if total == 0:
        report.reasons.append("the fp32 graph detected nothing on the check images: agreement is not measurable")
    if report.agreement < tol["agreement"]:
        report.reasons.append(f"agreement {report.agreement:.3f} < {tol['agreement']}")
    if report.max_score_error > tol["score"]:
        report.reasons.append(f"max score error {report.max_score_error:.3g} > {tol['score']}")
    if report.max_box_error_rel > tol["box_rel"]:
        report.reasons.append(f"max box error {report.max_box_error_rel:.3g} x side > {tol['box_rel']}")
    return report


def report_json(report: AgreementReport) -> str:
    return json.dumps(report.to_dict(), indent=2)
