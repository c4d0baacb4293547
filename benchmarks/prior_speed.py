"""Speed of optimal prior estimation on a synthetic, annotation-only, COCO-sized data set.

    python benchmarks/prior_speed.py                      # 118,287 images, RetinaNet/FCOS/Faster R-CNN
    python benchmarks/prior_speed.py --images 20000 --detectors retinanet --write-doc

The data set imitates COCO train2017's annotation statistics (no pixels exist): ~7.3 boxes per image
(1% of images empty, 1% crowd boxes), 80 classes, image sizes like COCO's (long side mostly 640, aspect
ratios 4:3, 3:2, 1:1, ...), box sizes with COCO's small/medium/large mix (41% / 34% / 25% by area).
It implements what estimate_priors needs: annotation(i), __len__, fingerprint(), class_names.
Fewer images than 118,287 are extrapolated linearly to the full set.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sfdeploy.io import atomic_write_text  # noqa: E402 - artefacts: temp file + rename

COCO_TRAIN_IMAGES = 118_287


@dataclass
class Ann:
    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray


class CocoLikeAnnotations:
    """Annotation-only data set with COCO-like statistics, generated up front (vectorised) from a seed."""

    def __init__(self, num_images: int = COCO_TRAIN_IMAGES, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.class_names = [f"class{i}" for i in range(80)]
        n = num_images
        # Image sizes: long side 640 for ~90% of COCO, else 300..640; short side from common aspect ratios.
        long_side = np.where(rng.random(n) < 0.9, 640, rng.integers(300, 641, n))
        aspect = rng.choice([4 / 3, 3 / 2, 1.0, 16 / 9, 5 / 4, 1.25 * 1.2], n, p=[0.55, 0.2, 0.08, 0.07, 0.05, 0.05])
        short_side = np.maximum(100, np.round(long_side / aspect)).astype(np.int64)
        landscape = rng.random(n) < 0.7
        self.width = np.where(landscape, long_side, short_side).astype(np.int64)
        self.height = np.where(landscape, short_side, long_side).astype(np.int64)
        # Boxes per image: 1% empty, otherwise 1 + negative binomial with mean ~6.4 (heavy tail like COCO).
        counts = 1 + rng.negative_binomial(1.2, 1.2 / (1.2 + 6.4), n)
        counts[rng.random(n) < 0.01] = 0
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        m = int(self.offsets[-1])
        img = np.repeat(np.arange(n), counts)
        w, h = self.width[img].astype(np.float64), self.height[img].astype(np.float64)
        side = np.exp(rng.normal(np.log(45.0), 1.1, m))  # sqrt(area): 41% < 32 px, 25% > 96 px
        ratio = np.exp(rng.normal(0.0, 0.6, m))
        bw = np.clip(side * np.sqrt(ratio), 1.0, w)
        bh = np.clip(side / np.sqrt(ratio), 1.0, h)
        x0 = rng.random(m) * (w - bw)
        y0 = rng.random(m) * (h - bh)
        self.boxes = np.stack([x0, y0, x0 + bw, y0 + bh], axis=1).astype(np.float32)
        self.labels = rng.integers(1, 81, m).astype(np.int64)
        self.iscrowd = (rng.random(m) < 0.01).astype(np.uint8)

    def __len__(self) -> int:
        return len(self.width)

    def annotation(self, i: int) -> Ann:
        s, e = self.offsets[i], self.offsets[i + 1]
        return Ann(i, f"{i:012d}.jpg", int(self.width[i]), int(self.height[i]), self.boxes[s:e], self.labels[s:e],
                   self.iscrowd[s:e])

    def fingerprint(self) -> str:
        return f"cocolike-{len(self)}-{self.seed}"

    def stats(self) -> dict[str, float]:
        area = (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])
        return {
            "boxes_per_image": len(self.boxes) / len(self),
            "empty_images": float(np.mean(np.diff(self.offsets) == 0)),
            "small": float(np.mean(area < 32**2)),
            "medium": float(np.mean((area >= 32**2) & (area < 96**2))),
            "large": float(np.mean(area >= 96**2)),
        }


def _cpu_seconds() -> float:
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=COCO_TRAIN_IMAGES)
    parser.add_argument("--detectors", default="retinanet,fcos,faster_rcnn")
    parser.add_argument("--min-size", type=int, default=320)
    parser.add_argument("--max-size", type=int, default=640)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: estimate_priors' choice)")
    parser.add_argument("--write-doc", action="store_true", help="write docs/prior_speed.md")
    args = parser.parse_args(argv)

    import torch

    from sfdeploy.config import ModelConfig
    from sfdeploy.sampling_free.prior import estimate_priors

    t = time.perf_counter()
    data = CocoLikeAnnotations(args.images)
    gen_s = time.perf_counter() - t
    st = data.stats()
    print(f"data: {len(data)} images generated in {gen_s:.1f}s; {st['boxes_per_image']:.2f} boxes/img, "
          f"{st['empty_images']:.1%} empty, small/medium/large {st['small']:.0%}/{st['medium']:.0%}/{st['large']:.0%}",
          file=sys.stderr)
    rows = []
    for det in args.detectors.split(","):
        cfg = ModelConfig(detector=det, class_names=data.class_names, min_size=args.min_size, max_size=args.max_size)
        with tempfile.TemporaryDirectory() as cache:
            cpu0 = _cpu_seconds()
            res = estimate_priors(cfg, data, cache_dir=cache, progress=True, workers=args.workers)
            cpu = _cpu_seconds() - cpu0
            again = estimate_priors(cfg, data, cache_dir=cache, progress=False)
        rate = res.images / res.seconds
        full = COCO_TRAIN_IMAGES / rate
        # CPU time of this process and its workers: what 2 dedicated cores would need (wall = cpu / 2 at best)
        full_cpu2 = COCO_TRAIN_IMAGES * cpu / res.images / 2
        head = cfg.prior_heads[0]
        rows.append((det, head, res.pi[head], res.fg[head], res.bg[head], res.images, res.seconds, rate, full,
                     again.seconds, cpu, full_cpu2))
        print(f"{det:12s} pi[{head}]={res.pi[head]:.3g} fg={res.fg[head]} bg={res.bg[head]} "
              f"{res.images} img in {res.seconds:.1f}s wall ({cpu:.1f}s CPU) = {rate:.0f} img/s -> 118k in "
              f"{full / 60:.1f} min wall (CPU/2: {full_cpu2 / 60:.1f} min); cached call {again.seconds:.2f}s",
              file=sys.stderr)

    if args.write_doc:
        cmd = "python benchmarks/prior_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
        cpu = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        lines = [
            "# Prior estimation speed",
            "",
            "`estimate_priors` on a synthetic annotation-only data set with COCO train2017's statistics "
            f"({st['boxes_per_image']:.2f} boxes/image, {st['empty_images']:.1%} empty images, "
            f"small/medium/large boxes {st['small']:.0%}/{st['medium']:.0%}/{st['large']:.0%}, 80 classes, "
            "COCO-like image sizes), see `benchmarks/prior_speed.py`.",
            "",
            f"- machine: {cpu}, {len(os.sched_getaffinity(0))} CPU cores available, torch {torch.__version__}, "
            f"python {platform.python_version()}",
            f"- model input: min_size={args.min_size}, max_size={args.max_size}; workers: "
            f"{args.workers or 'default (2 processes above 4000 images)'}",
            f"- command: `{cmd.strip()}`",
            "",
            "| detector | head | pi | fg | bg | images | wall s | CPU s | images/s (wall) | 118,287 images, wall "
            "(extrapolated) | 118,287 images, CPU s / 2 cores | cached call |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for det, head, pi, fg, bg, n, s, rate, full, cached_s, cpu, full_cpu2 in rows:
            lines.append(f"| {det} | {head} | {pi:.3g} | {fg} | {bg} | {n} | {s:.1f} | {cpu:.1f} | {rate:.0f} | "
                         f"{full / 60:.1f} min | {full_cpu2 / 60:.1f} min | {cached_s:.2f} s |")
        load = os.getloadavg()
        lines += ["", "Times include building the model (anchor generator) and a one-off fingerprint of the data set. "
                  f"The machine was shared with other jobs (load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
                  "at the end of the run on 2 cores), so wall times are an upper bound; the CPU-time column is what "
                  "2 dedicated cores would need.", ""]
        out = ROOT / "docs" / "prior_speed.md"
        atomic_write_text(out, "\n".join(lines))
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
