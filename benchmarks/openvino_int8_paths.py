"""Which int8 path for OpenVINO: our ORT-QDQ graph converted as is, or OpenVINO's own NNCF post-training quantization?

Per checkpoint and size: the fp32 graph, its ORT static QDQ int8 graph (`quantize_int8`, the same calibration images)
and NNCF's `nncf.quantize` of the f32 IR (default preset, same images), timed *interleaved* (one run of each per
round, medians) next to ORT fp32 / int8 and OpenVINO f32 / bf16; the NNCF IR's detections are held to the same
agreement check as the other int8 graphs. Needs `pip install nncf` (not a dependency of sfdeploy: see docs/EXPORT.md
for why it did not earn a place).

    python benchmarks/openvino_int8_paths.py --checkpoints runs/q/retinanet.pt --sizes 320 --rounds 7 \
        --out docs/benchmarks/openvino_int8_paths
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(ckpt: str, size: int, a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import nncf
    import onnxruntime as ort
    import openvino as ov

    from sfdeploy.export.benchmark import _checkpoint_model, _scene
    from sfdeploy.export.onnx import export_onnx
    from sfdeploy.export.openvino import convert_onnx
    from sfdeploy.export.quant_check import check_agreement
    from sfdeploy.export.quantize import calibration_images, check_images, quantize_int8
    from sfdeploy.serving.backends.openvino_backend import OpenVinoPredictor
    from sfdeploy.serving.backends.openvino_runtime import read_rt_info, write_rt_info

    model, cfg, _ = _checkpoint_model(ckpt, size)
    f32 = export_onnx(model, tmp / "f.onnx", config=cfg, exporter="torchscript", verify=False).path
    calib = calibration_images(a.calib_data, a.calib_images, size=size)
    q8 = quantize_int8(f32, tmp / "q.onnx", calib).path
    x32, xq = convert_onnx(f32, tmp / "f.xml").xml, convert_onnx(q8, tmp / "q.xml").xml
    t0 = time.perf_counter()
    src = ov.Core().read_model(str(x32))
    nn = nncf.quantize(src, nncf.Dataset([{"images": c} for c in calib]), subset_size=len(calib))
    nncf_s = time.perf_counter() - t0
    write_rt_info(nn, read_rt_info(src))
    ov.save_model(nn, str(tmp / "n.xml"), compress_to_fp16=False)
    runners = {"ov_f32": (x32, "f32"), "ov_bf16": (x32, "bf16"), "ov_qdq_int8": (xq, "f32"),
               "ov_nncf_int8": (tmp / "n.xml", "f32")}
    infer = {k: OpenVinoPredictor(p, precision=prec)._infer for k, (p, prec) in runners.items()}
    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s32 = ort.InferenceSession(str(f32), so, providers=["CPUExecutionProvider"])
    s8 = ort.InferenceSession(str(q8), so, providers=["CPUExecutionProvider"])
    x = _scene(size)[None].numpy()
    fns = {"ort_fp32": lambda: s32.run(None, {"images": x}), "ort_int8": lambda: s8.run(None, {"images": x}),
           **{k: (lambda f: lambda: f(x))(f) for k, f in infer.items()}}
    for _ in range(2):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(a.rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t) * 1e3)
    ms = {k: statistics.median(v) for k, v in times.items()}
    checks = check_images(a.calib_data)
    agree = {k: check_agreement(f32, runners[k][0], checks, run_quantized=infer[k], kind=k).to_dict()
             for k in ("ov_qdq_int8", "ov_nncf_int8")}
    return {"checkpoint": ckpt, "detector": cfg.detector, "backbone": cfg.backbone, "size": size,
            "ms": {k: round(v, 1) for k, v in ms.items()},
            "vs_ort_fp32": {k: round(ms["ort_fp32"] / v, 2) for k, v in ms.items()},
            "nncf_seconds": round(nncf_s, 1),
            "agreement": {k: {m: v[m] for m in ("agreement", "max_score_error", "max_box_error_rel", "passed")}
                          for k, v in agree.items()},
            "loadavg": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    from sfdeploy.io import atomic_write_text

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", nargs="+", required=True)
    p.add_argument("--sizes", nargs="+", type=int, default=[320])
    p.add_argument("--calib-data", default="synthetic:400")
    p.add_argument("--calib-images", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", required=True, help="output .json path prefix")
    a = p.parse_args(argv)
    cmd = "python benchmarks/openvino_int8_paths.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in a.checkpoints:
            for s in a.sizes:
                rows.append(run(c, s, a, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
                atomic_write_text(a.out + ".json", json.dumps({"command": cmd, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
