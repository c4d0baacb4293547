"""Predictor-level images/s: 8 images through a batch-1 graph (a loop) vs one batched-graph inference.

No HTTP: what batching itself buys per inference. Interleaved rounds (A B, B A, ...) on the shared machine.

    python benchmarks/batch_inference.py --pair retinanet R.onnx R.batched.onnx --pair fcos F.onnx F.batched.onnx
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from PIL import Image


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", nargs=3, action="append", metavar=("NAME", "BATCH1_ONNX", "BATCHED_ONNX"),
                    required=True)
    ap.add_argument("--shapes", default="320x320,320x240", help="WxH of the 8 images, one run per shape")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from sfdeploy import serving
    from sfdeploy.data import build_dataset

    ds = build_dataset(f"synthetic:{args.batch}", split="val", seed=0)
    print("| model | image WxH | batch-1 graph, loop: images/s per round | batched graph, one inference: images/s "
          "per round | load |")
    print("|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        w, h = (int(v) for v in shape.split("x"))
        images = [np.asarray(Image.fromarray(ds.load_image(i)).resize((w, h))) for i in range(args.batch)]
        for name, before, after in args.pair:
            loop, batched = serving.load(before), serving.load(after)
            for p in (loop, batched):
                p.predict_batch(images[:2])  # warm-up
            rates: dict[str, list[float]] = {"loop": [], "batched": []}
            for r in range(args.rounds):
                order = [("loop", loop), ("batched", batched)]
                for key, p in order if r % 2 == 0 else order[::-1]:
                    t0 = time.perf_counter()
                    p.predict_batch(images, max_batch=args.batch)
                    rates[key].append(args.batch / (time.perf_counter() - t0))
            print(f"| {name} | {shape} | {', '.join(f'{x:.2f}' for x in rates['loop'])} | "
                  f"{', '.join(f'{x:.2f}' for x in rates['batched'])} | {os.getloadavg()[0]:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
