"""Inference of a pair: both models of a family run once on an image; the raw detections are the state that the
threshold sliders only filter (rendering never re-runs a model)."""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

import numpy as np

from .catalog import Family
from .common import BACKEND_LABELS, ROLE_LABELS, ROLES, one_line
from .store import ModelStore

log = logging.getLogger("sfdeploy.demo")


def run_pair(store: ModelStore, family: Family, backend: str, image: np.ndarray) -> dict[str, Any]:
    """Run both models of `family` on `image` once; the result is the raw state the sliders filter."""
    panels: dict[str, dict[str, Any]] = {}
    for role in ROLES:
        art = family.artifact(role, backend)
        panel: dict[str, Any] = {"role": role, "artifact": art, "detections": None, "latency_ms": None,
                                 "error": None, "floor": art.score_thresh if art else 0.0}
        if art is None:
            what = "model" if not family.sides[role] else f"{BACKEND_LABELS[backend]} file"
            panel["error"] = f"no {ROLE_LABELS[role]} {what} for {family.label} in the models folder"
        else:
            try:
                predictor = store.get(art.path, backend)
                floor = float(getattr(predictor, "score_thresh", art.score_thresh))
                t0 = time.perf_counter()
                dets = predictor.predict(image, score_thresh=floor)
                panel["latency_ms"] = (time.perf_counter() - t0) * 1e3
                panel["detections"] = dets
                panel["floor"] = floor
            except Exception as exc:  # noqa: BLE001 - show it in the panel, keep the app alive
                log.warning("%s failed on %s: %s", art.name, backend, traceback.format_exc())
                panel["error"] = f"{ROLE_LABELS[role]} model failed: {one_line(exc)}"
        panels[role] = panel
    return {"image": image, "family": family.detector, "backend": backend, "panels": panels}


def count_above(detections: Any, thresh: float) -> int:
    if detections is None:
        return 0
    return int((np.asarray(detections.scores) >= thresh).sum())
