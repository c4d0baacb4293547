"""What the quickstart leaves behind for people: the comparison table, OUT/summary.md, and the baseline |
Sampling-Free prediction images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sfdeploy.io import atomic_path

# Display threshold for the rendered images (evaluation uses each method's own low inference threshold).
DISPLAY_THRESH = 0.3


def num(x: Any, digits: int = 3) -> str:
    """A metric for a table: 3 decimals, "-" for none or a negative (COCO's "not computed")."""
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
        row = [method, num(bbox.get("AP")), num(bbox.get("AP50")), num(bbox.get("AP75")),
               num(r["step_time_s"]), num(summary["stages"].get(f"train_{method}", {}).get("seconds"), 0),
               r["outcome"]]
        if has_segm:
            row[4:4] = [num(r["metrics"].get("segm", {}).get("AP"))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def where_lines(summary: dict[str, Any]) -> list[str]:
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


def summary_markdown(summary: dict[str, Any], table: str) -> str:
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
        *[f"- {line}" for line in where_lines(summary)[:-1]],
        "",
    ]
    for method, r in summary["runs"].items():
        pc = r["metrics"].get("per_class", {}).get("bbox")
        if pc:
            parts.append(f"Per-class bbox AP, {method}: " + ", ".join(f"{k} {num(v)}" for k, v in pc.items()))
    parts.append("")
    return "\n".join(parts)


def render_predictions(predictors: dict[str, Any], val_data: str, seed: int, count: int,
                        out_dir: Path) -> list[str]:
    """Predict the first `count` val images that contain objects; write baseline | Sampling-Free PNGs."""
    import numpy as np
    from PIL import Image

    from sfdeploy import viz
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
