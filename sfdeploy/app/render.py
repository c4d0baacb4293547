"""Rendering: detections drawn at a panel's threshold, captions, the compare pair and the metrics table. Never
runs a model."""

from __future__ import annotations

from typing import Any

import numpy as np

from .catalog import Artifact, Family
from .common import BACKEND_LABELS, ROLE_LABELS, ROLES, as_dict
from .inference import count_above

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _draw(image: np.ndarray, detections: Any, score_thresh: float) -> np.ndarray:
    from sfdeploy.viz import draw_detections

    return draw_detections(image, detections, score_thresh=score_thresh)


def render_panel(image: np.ndarray, panel: dict[str, Any], thresh: float) -> tuple[np.ndarray | None, str]:
    """Draw one panel's detections at `thresh` (no inference) -> (image or None, caption markdown)."""
    role = ROLE_LABELS[panel["role"]]
    art: Artifact | None = panel["artifact"]
    if panel["error"]:
        return None, f"**{role}** — ⚠️ {panel['error']}"
    dets = panel["detections"]
    thresh = max(float(thresh), float(panel["floor"]))
    n = count_above(dets, thresh)
    drawn = _draw(image, dets, thresh)
    what = f"{art.backbone} · {art.method}" if art else ""
    caption = (f"**{role}** ({what}) — **{n}** detection{'s' if n != 1 else ''} ≥ {thresh:.4g} · "
               f"**{panel['latency_ms']:.0f} ms** ({BACKEND_LABELS.get(art.backend, art.backend) if art else ''})")
    return drawn, caption


def render(raw: dict[str, Any] | None, thresh_base: float, thresh_sf: float) -> tuple[Any, ...]:
    """(baseline image, caption, Sampling-Free image, caption, compare pair) for the current sliders."""
    if not raw:
        return None, "**Baseline** — upload an image", None, "**Sampling-Free** — upload an image", None
    out: list[Any] = []
    for role, thr in zip(ROLES, (thresh_base, thresh_sf)):
        out += list(render_panel(raw["image"], raw["panels"][role], thr))
    pair = (out[0], out[2]) if out[0] is not None and out[2] is not None else None
    return out[0], out[1], out[2], out[3], pair


def metrics_rows(family: Family | None) -> list[list[str]]:
    """The evaluation table: metric, baseline, Sampling-Free (from the checkpoints' metadata)."""
    if family is None:
        return []
    arts = [family.representative(r) for r in ROLES]
    rows: list[list[str]] = []
    for kind in ("bbox", "segm"):
        for key in METRIC_KEYS:
            values = [as_dict(a.metrics.get(kind)).get(key) if a else None for a in arts]
            if any(isinstance(v, (int, float)) for v in values):
                rows.append([f"{kind} {key}", *(_fmt(v) for v in values)])
    if not rows:
        rows.append(["metrics", *("not recorded" if a else "—" for a in arts)])
    rows.append(["backbone", *((a.backbone if a else "—") for a in arts)])
    rows.append(["method", *((a.method if a else "—") for a in arts)])
    rows.append(["training steps", *(_fmt(a.meta.get("step")) if a else "—" for a in arts)])
    rows.append(["outcome", *(str(a.meta.get("outcome", "—")) if a else "—" for a in arts)])
    rows.append(["score threshold", *(f"{a.score_thresh:g}" if a else "—" for a in arts)])
    rows.append(["file", *((a.name if a else "—") for a in arts)])
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)
