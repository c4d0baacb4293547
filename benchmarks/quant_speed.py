"""INT8 (ONNX Runtime static QDQ) vs ONNX Runtime FP32 vs eager PyTorch (vs OpenVINO f32/bf16/int8 with
--openvino): latency and AP, per checkpoint.

Per checkpoint:
- AP: the checkpoint's own size; fp32 graph (`export_onnx`) and its int8 graph (`quantize_int8`, calibration on the
  training data) run through `serving.load` on the synthetic *test* split; COCO bbox AP/AP50 and the low-score
  detections (score < 0.01: Sampling-Free's calibrated scores near its 1e-3 threshold) per image.
- latency at each --sizes (the model's min/max size set to it, one synthetic val scene at that size): eager, ORT fp32
  and ORT int8 *interleaved* (one run of each per round, medians over rounds), because the machine is shared.
- --openvino: the same fp32 graph as an OpenVINO IR at f32 and bf16, and the int8 (QDQ) graph as an IR ("ov_int8"),
  in the AP rows (with the agreement check against ORT fp32) and interleaved in the latency rounds.

Run: python benchmarks/quant_speed.py --checkpoints runs/q/retinanet/last.pt runs/q/fcos/last.pt \
        --calib-data synthetic:400 --test-data synthetic:100 --out docs/benchmarks/quant_speed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _ap(onnx_path: Path, spec: str, **load_kwargs: Any) -> dict[str, Any]:
    from sfdeploy.serving import load
    from sfdeploy.data import build_dataset, to_coco_gt
    from sfdeploy.training.evaluate import coco_metrics

    ds = build_dataset(spec, split="test" if spec.startswith("synthetic") else "val")
    gt = to_coco_gt(ds)
    pred = load(onnx_path, **load_kwargs)  # .onnx: ONNX Runtime, .xml: OpenVINO
    results: list[dict[str, Any]] = []
    low = 0
    failed: list[str] = []
    for i in range(len(ds)):
        img = (ds[i][0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        try:
            det = pred.predict(img)
        except Exception as exc:  # a graph failing on an image is a finding: counted (as no detections), not fatal
            failed.append(f"{ds.annotation(i).file_name}: {type(exc).__name__}: {str(exc).strip()[:200]}")
            continue
        low += int((det.scores < 0.01).sum())
        results += det.to_coco_results(int(ds.annotation(i).image_id))
    m, _ = coco_metrics(gt, results, "bbox")
    return {"AP": m["AP"], "AP50": m["AP50"], "dets_per_image": len(results) / len(ds),
            "low_score_per_image": low / len(ds), "failed_images": failed}


def _interleaved(fns: dict[str, Any], rounds: int, warmup: int = 2) -> dict[str, float]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def _session(path: Path) -> Any:
    """The deployed session options (verify.ort_session) without intra-op spinning: spinning ORT threads would steal
    the cores from the eager runs interleaved with them (and from everything else on a shared machine)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _openvino(fp32: Path, int8: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (IR, precision): the fp32 graph at f32 and bf16, the int8 graph (ORT QDQ) as converted."""
    from sfdeploy.export.openvino import convert_onnx

    x32 = convert_onnx(fp32, tmp / f"{fp32.stem}.xml").xml
    x8 = convert_onnx(int8, tmp / f"{int8.stem}.xml").xml
    return {"ov_f32": (x32, "f32"), "ov_bf16": (x32, "bf16"), "ov_int8": (x8, "f32")}


def _ov_runner(xml: Path, precision: str) -> Any:
    from sfdeploy.serving.backends.openvino_backend import OpenVinoPredictor

    return OpenVinoPredictor(xml, precision=precision)._infer


def _agreement(check: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The agreement report as a dict, or {"error": ...} when a runtime fails on a check image (recorded, not fatal)."""
    try:
        return check(*args, **kwargs).to_dict()
    except Exception as exc:  # e.g. ORT failing inside the graph on one image
        return {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}


def run(ckpt: str, a: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    import torch

    from sfdeploy.export.benchmark import _checkpoint_model, _scene
    from sfdeploy.export.onnx import export_onnx
    from sfdeploy.export.quant_check import check_agreement
    from sfdeploy.export.quantize import calibration_images, check_images, quantize_int8
    from sfdeploy.checkpoint import load_model

    model, ck = load_model(ckpt)
    cfg = ck.config
    # one square shape, the model's own (as `sfdeploy export --int8` does): real data sets have mixed image sizes,
    # which ORT's histogram calibrators cannot stack
    calib = calibration_images(a.calib_data, a.calib_images, size=cfg.max_size)
    base = {"checkpoint": ckpt, "detector": cfg.detector, "method": cfg.method, "backbone": cfg.backbone,
            "score_thresh": cfg.effective_score_thresh}
    rows = []
    if not a.latency_only:
        fp32 = tmp / f"{cfg.detector}_native.onnx"
        export_onnx(model, fp32, config=cfg, meta=ck.meta, exporter="torchscript", verify=False)
        row = {**base, "kind": "accuracy", "size": cfg.min_size, "fp32": _ap(fp32, a.test_data)}
        checks = check_images(a.calib_data)
        for method in a.methods:
            q = quantize_int8(fp32, tmp / f"{cfg.detector}_native_{method}.onnx", calib, method=method)
            agree = _agreement(check_agreement, fp32, q.path, checks)
            row[f"int8_{method}"] = {**_ap(q.path, a.test_data), "agreement": agree}
            if method == a.methods[0] and a.openvino:
                for name, (xml, prec) in _openvino(fp32, q.path, tmp).items():
                    agree = _agreement(check_agreement, fp32, xml, checks, run_quantized=_ov_runner(xml, prec),
                                       kind=name)
                    row[name] = {**_ap(xml, a.test_data, precision=prec), "agreement": agree}
        rows.append(row)
        print(json.dumps(row), flush=True)
    for size in a.sizes:
        model, cfg_s, _ = _checkpoint_model(ckpt, size)
        p32 = tmp / f"{cfg.detector}_{size}.onnx"
        export_onnx(model, p32, config=cfg_s, meta=ck.meta, exporter="torchscript", verify=False)
        # fewer images: ORT's histogram calibrator keeps every activation of every image (~17 GB at 640 px, 32 images)
        p8 = quantize_int8(p32, tmp / f"{cfg.detector}_{size}_int8.onnx", calib[:a.latency_calib_images],
                           method=a.methods[0]).path
        s32, s8 = _session(p32), _session(p8)
        image = _scene(size)
        x = image[None].numpy()
        fns = {"eager": lambda: model([image])} if a.eager else {}
        fns.update({"ort_fp32": lambda: s32.run(None, {"images": x}), "ort_int8": lambda: s8.run(None, {"images": x})})
        if a.openvino:
            for name, (xml, prec) in _openvino(p32, p8, tmp).items():
                fns[name] = (lambda f: lambda: f(x))(_ov_runner(xml, prec))
        with torch.no_grad():
            ms = _interleaved(fns, a.rounds)
        r = {**base, "kind": "latency", "size": size, **{f"{k}_ms": round(v, 1) for k, v in ms.items()},
             "int8_vs_fp32": round(ms["ort_fp32"] / ms["ort_int8"], 2),
             **{f"{k}_vs_ort_fp32": round(ms["ort_fp32"] / ms[k], 2) for k in ms if k.startswith("ov_")},
             "int8_vs_eager": round(ms["eager"] / ms["ort_int8"], 2) if "eager" in ms else None,
             "mb_fp32": round(p32.stat().st_size / 1e6, 1), "mb_int8": round(p8.stat().st_size / 1e6, 1),
             "loadavg": os.getloadavg()}
        rows.append(r)
        print(json.dumps(r), flush=True)
    return rows


OV = ("ov_f32", "ov_bf16", "ov_int8")


def markdown(rows: list[dict[str, Any]], methods: list[str]) -> str:
    ov = [k for k in OV if any(f"{k}_ms" in r for r in rows)]
    out = ["| detector | method | backbone | px | eager ms | ORT fp32 ms | ORT int8 ms | int8 vs fp32 | int8 vs eager "
           "| " + "".join(f"{k} ms (vs ORT fp32) | " for k in ov) + "MB fp32/int8 |",
           "|---|---|---|---|---|---|---|---|---|" + "---|" * len(ov) + "---|"]
    for r in rows:
        if r["kind"] == "latency":
            eager = f"{r['eager_ms']:.0f} | " if r.get("eager_ms") is not None else "- | "
            vs_eager = f"{r['int8_vs_eager']:.2f}x | " if r.get("int8_vs_eager") is not None else "- | "
            ovs = "".join(f"{r[k + '_ms']:.0f} ({r[k + '_vs_ort_fp32']:.2f}x) | " if k + "_ms" in r else "- | "
                          for k in ov)
            out.append(f"| {r['detector']} | {r['method']} | {r['backbone']} | {r['size']} | {eager}"
                       f"{r['ort_fp32_ms']:.0f} | {r['ort_int8_ms']:.0f} | {r['int8_vs_fp32']:.2f}x | {vs_eager}{ovs}"
                       f"{r['mb_fp32']}/{r['mb_int8']} |")
    out += ["", "| detector | method | px | graph | AP | AP50 | dets/img | dets < 0.01 /img | top-10 agreement | "
                "max score err | max box err (x side) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] != "accuracy":
            continue
        for g in ["fp32"] + [f"int8_{m}" for m in methods] + [k for k in OV if k in r]:
            d = r[g]
            ag = d.get("agreement")
            out.append(f"| {r['detector']} | {r['method']} | {r['size']} | {g} | {100 * d['AP']:.1f} | "
                       f"{100 * d['AP50']:.1f} | {d['dets_per_image']:.1f} | {d['low_score_per_image']:.1f} | "
                       + ("error (see JSON) | - | - |" if ag and "error" in ag else
                          f"{ag['agreement']:.3f} | {ag['max_score_error']:.3f} | {ag['max_box_error_rel']:.4f} |"
                          if ag else "- | - | - |"))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    from sfdeploy.io import atomic_write_text

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", nargs="+", required=True)
    p.add_argument("--calib-data", default="synthetic:400")
    p.add_argument("--calib-images", type=int, default=32)
    p.add_argument("--methods", nargs="+", default=["percentile", "minmax"], help="calibration methods (first: timed)")
    p.add_argument("--test-data", default="synthetic:100")
    p.add_argument("--sizes", nargs="*", type=int, default=[320, 640], help="latency sizes (none: AP only)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--no-eager", dest="eager", action="store_false", help="time ONNX Runtime only (more rounds)")
    p.add_argument("--latency-only", action="store_true", help="skip the AP rows (e.g. for briefly trained models)")
    p.add_argument("--latency-calib-images", type=int, default=8, help="calibration images of the timed int8 graphs")
    p.add_argument("--openvino", action="store_true", help="add OpenVINO f32 / bf16 / int8 (IR of the QDQ graph)")
    p.add_argument("--out", required=True, help="prefix of the .json/.md outputs")
    a = p.parse_args(argv)
    import onnxruntime
    import torch

    meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "loadavg_start": os.getloadavg(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "command": "python benchmarks/quant_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in a.checkpoints:
            rows += run(c, a, Path(tmp))
            atomic_write_text(a.out + ".json", json.dumps({**meta, "rows": rows}, indent=1))
    meta["loadavg_end"] = os.getloadavg()
    atomic_write_text(a.out + ".json", json.dumps({**meta, "rows": rows}, indent=1))
    table = markdown(rows, a.methods)
    atomic_write_text(a.out + ".md", f"Command: `{meta['command']}`  \nMachine: {meta['machine']}, "
                                   f"torch {meta['torch']}, "
                                   f"onnxruntime {meta['onnxruntime']}, {meta['started']}, load average "
                                   f"{meta['loadavg_start']} -> {meta['loadavg_end']}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
