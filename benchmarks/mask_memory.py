"""Peak memory of one Mask R-CNN request with masks (issue 13, item 2), measured in a fresh subprocess.

    python benchmarks/mask_memory.py --size 2000 [--artefact X.pt|X.onnx] [--json OUT]

Without --artefact it saves an untrained Mask R-CNN (ResNet-18 FPN, the default 320 px config, score threshold 0 so
every request returns `detections_per_img` = 100 masks) and measures that. The child decodes a PNG of SIZE x SIZE,
runs `Predictor.predict_image(masks=True)` and `Detections.to_dict(masks=True)` (the HTTP service's path) and reports
VmHWM (peak RSS) and VmRSS before and after the request from /proc/self/status. Not ru_maxrss: a child inherits the
parent's after execve.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak is the request's own."""
    Path("/proc/self/clear_refs").write_text("5")


def child(artefact: str, size: int, threshold: float | None) -> dict:
    from PIL import Image, ImageDraw

    from sfdeploy import serving
    from sfdeploy import processing

    predictor = serving.load(artefact)
    predictor.warmup(size=64)
    im = Image.new("RGB", (size, size), (40, 40, 40))
    draw = ImageDraw.Draw(im)
    for k in range(12):
        x, y = (k * 157) % (size - size // 6), (k * 263) % (size - size // 6)
        draw.ellipse([x, y, x + size // 8, y + size // 8], fill=(200, 60 + 10 * k, 30))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    data = buf.getvalue()
    del im, draw
    before = _status_mb("VmRSS")
    _reset_peak()
    rgb = processing.load_image(data, max_pixels=40_000_000)
    dets = predictor.predict_image(rgb, score_thresh=threshold, masks=True)
    body = json.dumps(dets.to_dict(masks=True))
    peak = _status_mb("VmHWM")
    n = len(dets)
    del dets, rgb
    after = _status_mb("VmRSS")
    return {"size": size, "png_bytes": len(data), "detections": n, "json_bytes": len(body),
            "rss_before_mb": round(before, 1), "peak_rss_mb": round(peak, 1),
            "peak_growth_mb": round(peak - before, 1), "rss_after_mb": round(after, 1),
            "backend": predictor.backend, "artefact": artefact}


def make_untrained(path: Path) -> str:
    from sfdeploy.checkpoint import save_checkpoint
    from sfdeploy.config import ModelConfig
    from sfdeploy.models import build_model
    import torch

    torch.manual_seed(0)
    cfg = ModelConfig(detector="mask_rcnn", method="sampling_free", backbone="resnet18", class_names=["a", "b"],
                      score_thresh=0.0)
    save_checkpoint(path, build_model(cfg, load_backbone_weights=False).eval(), cfg, meta={})
    return str(path)


def measure(artefact: str, size: int, threshold: float | None = None) -> dict:
    """Run `child` in a fresh interpreter and return its report."""
    cmd = [sys.executable, __file__, "--child", "--artefact", artefact, "--size", str(size)]
    if threshold is not None:
        cmd += ["--threshold", str(threshold)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"mask_memory child failed (exit {out.returncode}): {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artefact", default=None)
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--threshold", type=float, default=None, help="score threshold (default: the artefact's)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.artefact, args.size, args.threshold)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        artefact = args.artefact or make_untrained(Path(tmp) / "mask_rcnn_untrained.pt")
        report = measure(artefact, args.size, args.threshold)
    print(json.dumps(report, indent=1))
    if args.json:
        from sfdeploy.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
