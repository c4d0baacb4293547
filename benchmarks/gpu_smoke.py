"""GPU smoke test: every GPU code path of sfdeploy once, in minutes, with a JSON report (issue 16).

    python benchmarks/gpu_smoke.py --json docs/benchmarks/gpu_smoke.json --md docs/benchmarks/gpu_smoke.md
    python benchmarks/gpu_smoke.py --tiny --device cpu      # the CPU mode the test suite runs (< 60 s)

Checks (each records ok / failed with its one-line error / skipped with the reason; exit 1 if any failed):
  train      a few AMP steps per detector x {baseline, sampling_free} through training.trainer.train, with
             evaluation, then the checkpoint reloaded on the CPU and run there
  amp_losses loss dtypes and finite guided scale g under fp16 and bf16 autocast, on a batch with an image without
             boxes (the empty-batch case)
  ddp        single-rank DDP (NCCL on CUDA, gloo on CPU) with find_unused_parameters=False, three steps per
             detector: DDP raises if any parameter got no gradient
  export     ONNX export of a model on the device and of the device-trained checkpoint, ONNX Runtime parity
  latency    eager inference latency (TorchPredictor on the device)
  step_time  training step time of R-50 RetinaNet at 800x1333 in fp32 / TF32 / fp16 / bf16 / bf16+channels_last
             (tiny mode: R-18 at 128 px, the modes the device supports)
Needs torch and no internet; TensorRT is not used (no engine can be built without it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sfdeploy.config import ModelConfig  # noqa: E402
from sfdeploy.models.table import DETECTOR_TABLE, DETECTORS  # noqa: E402

METHODS = ("baseline", "sampling_free")
STEP_MODES = ("fp32", "tf32", "fp16", "bf16", "bf16_channels_last")


class Plan:
    """Sizes of the run: full (GPU) or tiny (CPU, part of the test suite)."""

    def __init__(self, tiny: bool) -> None:
        self.tiny = tiny
        self.size = 96 if tiny else 512  # 64 px: P7 is 1x1 and CPU bf16 gives non-finite P7 gradients
        self.backbone = "resnet18" if tiny else "resnet50"
        self.fpn = 32 if tiny else 256
        self.train_steps = 1 if tiny else 20
        self.batch = 2 if tiny else 4
        self.detectors = ("retinanet",) if tiny else DETECTORS  # train / latency
        self.loss_detectors = ("retinanet", "mask_rcnn") if tiny else DETECTORS  # amp_losses
        self.ddp_detectors = ("faster_rcnn",) if tiny else DETECTORS
        self.ddp_steps = 2 if tiny else 3  # an unused parameter makes DDP raise at the second step
        self.val_data = "synthetic:2" if tiny else "synthetic:8"
        self.latency_runs = 1 if tiny else 30
        self.step_size = (64, 64) if tiny else (800, 1333)
        self.step_backbone = "resnet18" if tiny else "resnet50"
        self.step_warmup, self.step_runs = (0, 1) if tiny else (5, 20)


def model_config(plan: Plan, detector: str, method: str, size: int | None = None, backbone: str | None = None,
                 **kw: Any) -> ModelConfig:
    from sfdeploy.data.synthetic import CLASS_NAMES

    s = size or plan.size
    priors = {} if method == "baseline" else {ModelConfig(detector=detector, method=method).prior_heads[0]: 1e-2}
    return ModelConfig(detector=detector, method=method, backbone=backbone or plan.backbone, fpn_channels=plan.fpn,
                       min_size=s, max_size=s, class_names=list(CLASS_NAMES), priors=priors, **kw)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------------- checks
def check_train(plan: Plan, device: torch.device, amp: str, work: Path) -> dict[str, Any]:
    from sfdeploy.checkpoint import load_model
    from sfdeploy.training.config import TrainConfig
    from sfdeploy.training.trainer import train

    out: dict[str, Any] = {"amp": amp}
    for det in plan.detectors:
        for method in METHODS:
            cfg = TrainConfig(model=model_config(plan, det, method), data="synthetic:8", val_data=plan.val_data,
                              out=str(work / f"{det}_{method}"), max_steps=plan.train_steps, batch_size=plan.batch,
                              workers=0 if plan.tiny else 4, log_every=1, warmup_steps=1, amp=amp,
                              device=str(device), plots=False, tensorboard=False, eval_batch_size=2)
            t0 = time.perf_counter()
            r = train(cfg, progress=False)
            if r.outcome != "completed":
                raise RuntimeError(f"{det}/{method}: {r.outcome}: {r.message}")
            bad = {k: v for k, v in r.last_losses.items() if not np.isfinite(v)}
            if bad:
                raise RuntimeError(f"{det}/{method}: non-finite losses {bad}")
            model, _ = load_model(r.last_checkpoint, "cpu")  # a GPU-trained checkpoint must load anywhere
            with torch.no_grad():
                model([torch.rand(3, plan.size, plan.size)])
            out[f"{det}/{method}"] = {"seconds": round(time.perf_counter() - t0, 2), "bbox_AP": r.best_ap,
                                      "median_step_s": r.median_step_time_s, "peak_memory_mb": r.peak_memory_mb}
    return out


def _batch(plan: Plan, device: torch.device, with_masks: bool, empty_second: bool = True):  # type: ignore[no-untyped-def]
    from sfdeploy.data import build_dataset

    ds = build_dataset("synthetic:4", split="train", seed=0, with_masks=with_masks)
    images, targets = [], []
    for i in range(2):
        img, tgt = ds[i]
        if empty_second and i == 1:  # an image without boxes
            tgt = {k: v[:0] for k, v in tgt.items() if k in ("boxes", "labels", "masks")}
        images.append(img.to(device))
        targets.append({k: v.to(device) for k, v in tgt.items()})
    return images, targets


def check_amp_losses(plan: Plan, device: torch.device, modes: tuple[str, ...]) -> dict[str, Any]:
    from sfdeploy.models import build_model
    from sfdeploy.models.precision import keep_geometry_fp32
    from sfdeploy.training.trainer import guide_values

    out: dict[str, Any] = {}
    for mode in modes:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[mode]
        for det in plan.loss_detectors:
            model = build_model(model_config(plan, det, "sampling_free"), load_backbone_weights=False).to(device)
            keep_geometry_fp32(model)
            model.train()
            images, targets = _batch(plan, device, DETECTOR_TABLE[det].has_masks)
            with torch.autocast(device_type=device.type, dtype=dtype):
                losses = model(images, targets)
            dtypes = {k: str(v.dtype).replace("torch.", "") for k, v in losses.items()}
            finite = {k: bool(torch.isfinite(v).all()) for k, v in losses.items()}
            guides = guide_values(model)
            g = {name: v.get("g") for name, v in guides.items()}
            if not all(finite.values()):
                raise RuntimeError(f"{mode} {det}: non-finite losses {finite}")
            if not all(v is not None and np.isfinite(v) for v in g.values()):
                raise RuntimeError(f"{mode} {det}: guided scale g not finite: {g}")
            out[f"{mode}/{det}"] = {"loss_dtypes": dtypes, "g": g}
    return out


def check_ddp(plan: Plan, device: torch.device) -> dict[str, Any]:
    import torch.distributed as dist

    from sfdeploy.models import build_model

    backend = "nccl" if device.type == "cuda" else "gloo"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
    dist.init_process_group(backend, rank=0, world_size=1, timeout=datetime.timedelta(minutes=5), **kwargs)
    out: dict[str, Any] = {"backend": backend}
    try:
        for det in plan.ddp_detectors:
            cfg = model_config(plan, det, "sampling_free", size=64 if plan.tiny else None)
            model = build_model(cfg, load_backbone_weights=False).to(device)
            model.train()
            ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index or 0] if device.type == "cuda" else None,
                find_unused_parameters=False)
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)
            images, targets = _batch(plan, device, det == "mask_rcnn", empty_second=False)
            for _ in range(plan.ddp_steps):  # an unused parameter makes DDP raise at the next step
                loss = sum(ddp(images, targets).values())
                opt.zero_grad()
                loss.backward()
                opt.step()
            out[det] = "ok"
    finally:
        dist.destroy_process_group()
    return out


def check_export(plan: Plan, device: torch.device, work: Path) -> dict[str, Any]:
    from sfdeploy.export.onnx import export_onnx
    from sfdeploy.checkpoint import load_model

    ckpt = work / "retinanet_sampling_free" / "last.pt"
    if not ckpt.is_file():
        raise RuntimeError("no trained retinanet checkpoint (the train check failed)")
    out: dict[str, Any] = {}
    model, c = load_model(ckpt, device)
    res = export_onnx(model, work / "on_device.onnx", config=c.config, meta=c.meta, exporter="torchscript",
                      sizes=(plan.size,))
    out["model_on_device"] = {"parity": res.parity.passed if res.parity else None, "seconds": round(res.seconds, 2)}
    if device.type != "cpu":  # on the CPU this is the export above again
        res = export_onnx(ckpt, work / "from_checkpoint.onnx", exporter="torchscript", sizes=(plan.size,))
        out["from_checkpoint"] = {"parity": res.parity.passed if res.parity else None,
                                  "seconds": round(res.seconds, 2)}
    if not all(v["parity"] for v in out.values()):
        raise RuntimeError(f"ONNX parity failed: {out}")
    return out


def check_latency(plan: Plan, device: torch.device, work: Path) -> dict[str, Any]:
    from sfdeploy.serving.backends.torch_backend import TorchPredictor

    out: dict[str, Any] = {}
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for det in plan.detectors:
        pred = TorchPredictor(work / f"{det}_sampling_free" / "last.pt", device=str(device))
        if not plan.tiny:
            pred.predict_image(image)  # warm-up
        times = []
        for _ in range(plan.latency_runs):
            sync(device)
            t0 = time.perf_counter()
            pred.predict_image(image)
            sync(device)
            times.append(time.perf_counter() - t0)
        out[det] = {"median_ms": round(1000 * statistics.median(times), 2), "runs": len(times),
                    "size": plan.size}
    return out


def step_modes(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return list(STEP_MODES)
    return ["fp32", "bf16"]  # TF32 and fp16 autocast are CUDA features


def check_step_time(plan: Plan, device: torch.device) -> dict[str, Any]:
    from sfdeploy.models import build_model
    from sfdeploy.models.precision import keep_geometry_fp32

    h, w = plan.step_size
    out: dict[str, Any] = {"model": f"retinanet/{plan.step_backbone}", "image": [h, w], "batch": 2}
    for mode in step_modes(device):
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
        cfg = model_config(plan, "retinanet", "sampling_free", backbone=plan.step_backbone)
        cfg = cfg.replace(min_size=min(h, w), max_size=max(h, w))
        torch.manual_seed(0)
        model = build_model(cfg, load_backbone_weights=False).to(device)
        dtype = {"fp16": torch.float16}.get(mode, torch.bfloat16 if mode.startswith("bf16") else None)
        if dtype is not None:
            keep_geometry_fp32(model)
        if mode.endswith("channels_last"):
            model.to(memory_format=torch.channels_last)
        model.train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
        g = torch.Generator().manual_seed(0)
        images = [torch.rand(3, h, w, generator=g).to(device) for _ in range(2)]
        targets = [{"boxes": torch.tensor([[10.0, 20.0, 200.0, 220.0]], device=device) * min(h, w) / 800,
                    "labels": torch.tensor([1], device=device)} for _ in range(2)]
        times = []
        for i in range(plan.step_warmup + plan.step_runs):
            sync(device)
            t0 = time.perf_counter()
            with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = sum(model(images, targets).values())
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sync(device)
            if i >= plan.step_warmup:
                times.append(time.perf_counter() - t0)
        out[mode] = {"median_step_s": round(statistics.median(times), 4), "runs": len(times),
                     "loss_finite": bool(torch.isfinite(loss.detach()))}
        if device.type == "cuda":
            out[mode]["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
            torch.cuda.reset_peak_memory_stats(device)
        del model, opt
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return out


# --------------------------------------------------------------------------------------------------- runner
def run_check(name: str, fn: Callable[[], dict[str, Any]], report: dict[str, Any]) -> None:
    t0 = time.perf_counter()
    try:
        detail = fn()
        entry = {"status": "ok", "detail": detail}
    except Exception as exc:  # a failed check is a result; the others still run
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]
        entry = {"status": "failed", "error": f"{type(exc).__name__}: {first}",
                 "where": traceback.format_exc().strip().splitlines()[-3:]}
    entry["seconds"] = round(time.perf_counter() - t0, 2)
    report["checks"][name] = entry
    print(f"[{entry['status']:>6}] {name} ({entry['seconds']} s)"
          + (f": {entry['error']}" if entry["status"] == "failed" else ""), file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        info["ort_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    return info


def to_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"# GPU smoke test ({'tiny' if report['tiny'] else 'full'}, device {report['device']})", "",
             f"{report['date']}; torch {m['torch']} (CUDA {m['cuda']}), GPU {m.get('gpu', 'none')}, "
             f"onnxruntime {m.get('onnxruntime')} {m.get('ort_providers', '')}", "",
             "| check | status | seconds | note |", "|---|---|---|---|"]
    for name, c in report["checks"].items():
        note = c.get("error") or c.get("reason") or ""
        lines.append(f"| {name} | {c['status']} | {c.get('seconds', '')} | {note} |")
    st = report["checks"].get("step_time", {}).get("detail")
    if st:
        lines += ["", f"Step time, {st['model']} at {st['image'][0]}x{st['image'][1]}, batch {st['batch']}:", "",
                  "| mode | median step (s) | peak memory (MB) |", "|---|---|---|"]
        for mode in STEP_MODES:
            if mode in st:
                lines.append(f"| {mode} | {st[mode]['median_step_s']} | {st[mode].get('peak_memory_mb', '')} |")
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    from sfdeploy.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="small models and sizes (the test suite's CPU mode)")
    ap.add_argument("--only", nargs="*", default=None, help="run only these checks")
    ap.add_argument("--work", default=None, help="folder for checkpoints and ONNX files (default: a temp dir)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA device: run with --device cpu --tiny", file=sys.stderr)
            return 2
        if device.index is None:
            device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    plan = Plan(args.tiny)
    amp_modes = ("fp16", "bf16") if device.type == "cuda" else ("bf16",)
    report: dict[str, Any] = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "device": str(device), "tiny": plan.tiny, "machine": machine(), "checks": {}}
    with contextlib.ExitStack() as stack:
        work = Path(args.work) if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        checks: dict[str, Callable[[], dict[str, Any]]] = {
            "train": lambda: check_train(plan, device, "bf16" if device.type != "cuda" else "fp16", work),
            "amp_losses": lambda: check_amp_losses(plan, device, amp_modes),
            "ddp": lambda: check_ddp(plan, device),
            "export": lambda: check_export(plan, device, work),
            "latency": lambda: check_latency(plan, device, work),
            "step_time": lambda: check_step_time(plan, device),
        }
        for name, fn in checks.items():
            if args.only is None or name in args.only:
                run_check(name, fn, report)
            else:
                report["checks"][name] = {"status": "skipped", "reason": "not in --only"}
    if args.json:
        _atomic_write(Path(args.json), json.dumps(report, indent=2) + "\n")
    if args.md:
        _atomic_write(Path(args.md), to_markdown(report))
    if not args.json:
        print(json.dumps(report, indent=2))
    return 1 if any(c["status"] == "failed" for c in report["checks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
