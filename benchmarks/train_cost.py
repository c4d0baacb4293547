"""Training cost of Sampling-Free vs the baseline: step time and peak memory, per detector, as ratios.

Step time: for each detector, the baseline and the sampling_free model (same backbone, same seed, same fixed batch)
live in ONE process and are stepped alternately (A B A B ...), so load changes on a shared machine hit both alike.
A step = forward (training mode, losses) + backward + SGD step. We report the median over N timed steps after
W warm-up steps, and the ratio of medians (plus the median of per-pair ratios, more robust to load drift).

Peak memory: one fresh subprocess per (detector, method); it builds the model and the batch, records its RSS, runs
W + N training steps and reports ru_maxrss (the kernel's RSS high-water mark) minus the RSS before the first step:
the memory the training steps themselves add (activations, gradients, optimiser state, allocator caches). RSS is
what a CPU user pays for; tracemalloc does not see torch's allocator. (On CUDA, use torch.cuda.max_memory_allocated.)

Two-stage detectors: `--profile` adds a torch.profiler breakdown (top ops, self CPU time) of one step of each
method, and the number of RoIs the box head trains on per image (sampled 512 vs every labelled proposal).

    python benchmarks/train_cost.py --detectors retinanet fcos faster_rcnn mask_rcnn --steps 10 --warmup 3 \
        --json docs/benchmarks/train_cost.json --md docs/benchmarks/train_cost.md --profile
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sfdeploy.io import atomic_write_text  # noqa: E402 - artefacts: temp file + rename

import torch  # noqa: E402

from sfdeploy.checkpoint import load_checkpoint  # noqa: E402
from sfdeploy.config import ModelConfig  # noqa: E402
from sfdeploy.data import build_dataset, collate  # noqa: E402
from sfdeploy.data.synthetic import CLASS_NAMES  # noqa: E402
from sfdeploy.data.transforms import train_transforms  # noqa: E402
from sfdeploy.models import build_model  # noqa: E402
from sfdeploy.models.table import DETECTOR_TABLE, DETECTORS, TWO_STAGE  # noqa: E402

TARGET = {"retinanet": 1.05, "fcos": 1.05, "faster_rcnn": 1.07, "mask_rcnn": 1.07}


def machine_info() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def make_batch(detector: str, size: int, batch: int, device: torch.device, aspect: float = 1.0,
               data: str | None = None, images_dir: str | None = None):
    """The first `batch` training images of `data` (default: synthetic), `size` px high and `size * aspect` wide
    (e.g. 800 x 1333: the paper's shape)."""
    ds = build_dataset(data or f"synthetic:{batch}", split="train", seed=0, images_dir=images_dir,
                       transforms=train_transforms(size, size, flip=False), with_masks=DETECTOR_TABLE[detector].has_masks)
    images, targets = collate([ds[i] for i in range(batch)])
    if aspect != 1.0:
        images, targets = _stretch(images, targets, aspect)
    images = [im.to(device) for im in images]
    targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
    return images, targets


def _stretch(images, targets, aspect: float):  # type: ignore[no-untyped-def]
    from torch.nn.functional import interpolate

    out_images, out_targets = [], []
    for im, t in zip(images, targets):
        h, w = im.shape[-2:]
        new_w = round(w * aspect)
        out_images.append(interpolate(im[None], size=(h, new_w), mode="bilinear", align_corners=False)[0])
        t = dict(t)
        t["boxes"] = t["boxes"] * torch.tensor([new_w / w, 1.0, new_w / w, 1.0])
        if "masks" in t:
            t["masks"] = interpolate(t["masks"][None].float(), size=(h, new_w), mode="nearest")[0].to(t["masks"].dtype)
        out_targets.append(t)
    return out_images, out_targets


def make_model(detector: str, method: str, backbone: str, size: int, device: torch.device, *,
               max_size: int | None = None, options: dict | None = None, weights: str | None = None,
               mask_head_channels: int | None = None):
    """One model to time. `options`: extra ModelConfig fields (the Sampling-Free cost knobs) for non-baseline models.
    `weights`: start from a trained checkpoint (same architecture for every method), so that the RPN proposes what a
    trained RPN proposes: a fresh RPN has few positives, which understates the un-sampled heads' cost. Weights whose
    shape does not fit (a mask head of another width) stay freshly initialised: cost does not depend on them."""
    extra = dict(options or {}) if method != "baseline" else {}
    if mask_head_channels:
        extra["mask_head_channels"] = mask_head_channels
    if weights:
        ckpt = load_checkpoint(weights)
        base = {k: v for k, v in ckpt.config.to_dict().items()
                if k not in ("method", "optimal_init", "guided_scaling", "priors", "mask_positives_per_image",
                             "rpn_post_nms_top_n_train", *extra)}
        base.update(detector=detector, min_size=size, max_size=max_size or size)
        cfg = ModelConfig(**base, method=method, **extra)
    else:
        cfg = ModelConfig(detector=detector, method=method, backbone=backbone, class_names=list(CLASS_NAMES),
                          min_size=size, max_size=max_size or size, **extra)
    torch.manual_seed(0)
    model = build_model(cfg, load_backbone_weights=not weights).to(device)
    if weights:
        own = model.state_dict()
        fitting = {k: v for k, v in ckpt.state_dict.items() if k in own and own[k].shape == v.shape}
        missing, unexpected = model.load_state_dict(fitting, strict=False)
        # guided-scaling deltas exist in Sampling-Free models only; mask-head weights of another width stay fresh
        stray = [k for k in missing + unexpected if "guide" not in k and "mask_" not in k]
        if stray:
            raise SystemExit(f"{weights} does not fit a {detector}/{method} model: {stray[:3]}")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # tiny lr: weights barely move, so proposals/labels (and thus cost) stay representative of early training
    opt = torch.optim.SGD(params, lr=1e-5, momentum=0.9)
    return model, opt


def step(model, opt, images, targets, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    losses = model(images, targets)
    total = sum(losses.values())
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def hwm_mb() -> float:
    """VmHWM: this process image's RSS high-water mark. Not getrusage's ru_maxrss: Linux keeps ru_maxrss across
    execve, so a child forked from a big parent would report the parent's RSS (found the hard way)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    images, targets = make_batch(args.child_detector, args.size, args.batch, device, args.aspect, args.data, args.images)
    model, opt = make_model(args.child_detector, args.child_method, args.backbone, args.size, device,
                            **model_kwargs(args))
    before = rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    for _ in range(args.warmup + args.steps):
        step(model, opt, images, targets, device)
    peak = hwm_mb()
    out = {"rss_before_mb": before, "rss_peak_mb": peak, "delta_mb": peak - before}
    if device.type == "cuda":
        out["cuda_peak_delta_mb"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    print("MEM " + json.dumps(out))


def model_kwargs(args: argparse.Namespace) -> dict:
    return {"max_size": args.max_size, "options": parse_options(args.sf_option), "weights": args.weights,
            "mask_head_channels": args.mask_head_channels}


def parse_options(items: list[str] | None) -> dict:
    """--sf-option KEY=VALUE (ModelConfig fields of the Sampling-Free model), values read as YAML scalars."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or key not in ModelConfig.__dataclass_fields__:
            raise SystemExit(f"--sf-option {item!r}: expected FIELD=VALUE with a ModelConfig field, "
                             "e.g. rpn_post_nms_top_n_train=512 or mask_positives_per_image=128")
        out[key] = yaml.safe_load(value)
    return out


def measure_memory(args: argparse.Namespace, detector: str, method: str) -> dict:
    cmd = [sys.executable, __file__, "--child", detector, method, "--backbone", args.backbone, "--size",
           str(args.size), "--batch", str(args.batch), "--steps", str(args.mem_steps), "--warmup", "1",
           "--device", args.device, "--aspect", str(args.aspect)] + (["--threads", str(args.threads)] if args.threads else [])
    for flag, value in (("--max-size", args.max_size), ("--weights", args.weights), ("--data", args.data),
                        ("--images", args.images), ("--mask-head-channels", args.mask_head_channels)):
        cmd += [flag, str(value)] if value else []
    for item in args.sf_option or []:
        cmd += ["--sf-option", item]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("MEM "):
            return json.loads(line[4:])
    raise RuntimeError(f"memory child failed for {detector}/{method}:\n{proc.stderr[-2000:]}")


def roi_counts(model, images, targets) -> dict:
    """RoIs per image that the box head (and the mask head) train on: sampled, or every labelled proposal."""
    counts: dict[str, list[int]] = {"box_head_rois_per_image": [], "mask_head_rois_per_image": []}
    hooks = []
    for name, pool in (("box_head_rois_per_image", model.roi_heads.box_roi_pool),
                       ("mask_head_rois_per_image", getattr(model.roi_heads, "mask_roi_pool", None))):
        if pool is not None:  # pool(features, proposals, image_shapes)
            hooks.append(pool.register_forward_hook(
                lambda _m, inputs, _o, name=name: counts[name].extend(int(b.shape[0]) for b in inputs[1])))
    with torch.no_grad():
        model(images, targets)
    for h in hooks:
        h.remove()
    return {k: v[: len(images)] for k, v in counts.items() if v}


def profile_step(model, opt, images, targets, device, top: int = 12) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step(model, opt, images, targets, device)
    rows = []
    for e in sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]:
        rows.append({"op": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 1000, 2), "calls": e.count})
    return rows


def stage_times(model, images, targets, reps: int = 3) -> dict:
    """Forward wall time (ms, median over reps) of backbone, rpn, roi_heads in training mode (no backward)."""
    names = ["backbone", "rpn", "roi_heads"]
    acc: dict[str, list[float]] = {n: [] for n in names}
    start: dict[str, float] = {}
    hooks = []
    for n in names:
        mod = getattr(model, n)
        hooks.append(mod.register_forward_pre_hook(lambda m, i, n=n: start.__setitem__(n, time.perf_counter())))
        hooks.append(mod.register_forward_hook(lambda m, i, o, n=n: acc[n].append(time.perf_counter() - start[n])))
    with torch.no_grad():
        for _ in range(reps):
            model(images, targets)
    for h in hooks:
        h.remove()
    return {n: round(1000 * statistics.median(v), 1) for n, v in acc.items()}


def run_memory_only(args: argparse.Namespace) -> dict:
    results = {"machine": machine_info(), "settings": {k: v for k, v in vars(args).items() if not k.startswith("child")},
               "command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]), "detectors": {}}
    for det in args.detectors:
        mem = {m: measure_memory(args, det, m) for m in ("baseline", "sampling_free")}
        results["detectors"][det] = {"memory": mem, "mem_delta_ratio": round(
            mem["sampling_free"]["delta_mb"] / max(mem["baseline"]["delta_mb"], 1e-6), 3),
            "mem_peak_ratio": round(mem["sampling_free"]["rss_peak_mb"] / mem["baseline"]["rss_peak_mb"], 3)}
        print(f"[{det}] memory {json.dumps(mem)}", file=sys.stderr, flush=True)
        if args.json:
            atomic_write_text(Path(args.json), json.dumps(results, indent=1))
    return results


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    results = {"machine": machine_info(), "settings": {k: v for k, v in vars(args).items() if not k.startswith("child")},
               "command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]), "detectors": {}}
    for det in args.detectors:
        print(f"[{det}] building", file=sys.stderr, flush=True)
        images, targets = make_batch(det, args.size, args.batch, device, args.aspect, args.data, args.images)
        models = {m: make_model(det, m, args.backbone, args.size, device, **model_kwargs(args))
                  for m in ("baseline", "sampling_free")}
        times: dict[str, list[float]] = {m: [] for m in models}
        for i in range(args.warmup + args.steps):
            order = list(models) if i % 2 == 0 else list(models)[::-1]  # ABBA: neither always goes first
            for m in order:
                t = step(*models[m], images, targets, device)
                print(f"  [{det}] step {i} {m}: {1000 * t:.0f} ms", file=sys.stderr, flush=True)
                if i >= args.warmup:
                    times[m].append(t)
        med = {m: statistics.median(v) for m, v in times.items()}
        pair = [s / b for s, b in zip(times["sampling_free"], times["baseline"])]
        row = {"step_ms": {m: round(1000 * v, 1) for m, v in med.items()},
               "step_ms_all": {m: [round(1000 * t, 1) for t in v] for m, v in times.items()},
               "time_ratio": round(med["sampling_free"] / med["baseline"], 3),
               "time_ratio_pairwise_median": round(statistics.median(pair), 3),
               "target": TARGET[det]}
        print(f"[{det}] step ms {row['step_ms']} ratio {row['time_ratio']} (pairwise {row['time_ratio_pairwise_median']})",
              file=sys.stderr, flush=True)
        if det in TWO_STAGE:
            row["rois"] = {m: roi_counts(models[m][0], images, targets) for m in models}
            if args.profile:
                row["stage_forward_ms"] = {m: stage_times(models[m][0], images, targets) for m in models}
                row["profile_top_ops"] = {m: profile_step(*models[m], images, targets, device) for m in models}
        del models
        if not args.no_memory:
            mem = {m: measure_memory(args, det, m) for m in ("baseline", "sampling_free")}
            row["memory"] = mem
            row["mem_delta_ratio"] = round(mem["sampling_free"]["delta_mb"] / max(mem["baseline"]["delta_mb"], 1e-6), 3)
            row["mem_peak_ratio"] = round(mem["sampling_free"]["rss_peak_mb"] / mem["baseline"]["rss_peak_mb"], 3)
            print(f"[{det}] memory {json.dumps(mem)}", file=sys.stderr, flush=True)
        results["detectors"][det] = row
        if args.json:  # write as we go: a killed run keeps what it measured
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(args.json), json.dumps(results, indent=1))
    results["machine"]["loadavg_end"] = os.getloadavg()
    return results


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Command: `{results['command']}`  ",
             f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), torch {m['torch']}, "
             f"{m['date']}, load average at start {tuple(round(x, 1) for x in m.get('loadavg', ()))}, "
             f"at end {tuple(round(x, 1) for x in m.get('loadavg_end', ()))}  ",
             f"Settings: backbone {results['settings']['backbone']}, image {results['settings']['size']} high x "
             f"{results['settings']['aspect']:.3g} aspect (max_size {results['settings']['max_size']}), "
             f"Sampling-Free options {results['settings']['sf_option'] or 'none'}, weights "
             f"{results['settings']['weights'] or 'random init'}, data {results['settings']['data'] or 'synthetic'}, batch "
             f"{results['settings']['batch']}, {results['settings']['warmup']} warm-up + {results['settings']['steps']}"
             f" timed steps per method, interleaved; memory: {results['settings']['mem_steps']} steps per fresh "
             "subprocess", "",
             "| detector | baseline ms/step | sampling_free ms/step | ratio (medians) | ratio (pairwise median) | "
             "target | train-step RSS delta base / SF (MiB) | ratio | peak RSS base / SF (MiB) | RoIs/img box, mask: base / SF |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for det, r in results["detectors"].items():
        mem = r.get("memory")
        memcols = (f"{mem['baseline']['delta_mb']:.0f} / {mem['sampling_free']['delta_mb']:.0f} | {r['mem_delta_ratio']:.2f} | "
                   f"{mem['baseline']['rss_peak_mb']:.0f} / {mem['sampling_free']['rss_peak_mb']:.0f}") if mem else "- | - | -"
        ok = "ok" if r["time_ratio"] <= r["target"] else "MISSED"
        rois = r.get("rois")
        roicol = " / ".join(", ".join(str(round(sum(v) / len(v))) for v in rois[m].values()) for m in rois) if rois else "-"
        lines.append(f"| {det} | {r['step_ms']['baseline']:.0f} | {r['step_ms']['sampling_free']:.0f} | "
                     f"{r['time_ratio']:.3f} | {r['time_ratio_pairwise_median']:.3f} | <= {r['target']} ({ok}) | {memcols} | "
                     f"{roicol} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--detectors", nargs="+", default=list(DETECTORS))
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=320, help="image height (shorter side) and the model's min_size")
    p.add_argument("--max-size", type=int, help="the model's max_size (default: --size)")
    p.add_argument("--aspect", type=float, default=1.0, help="image width / height (1333 / 800 for the paper's shape)")
    p.add_argument("--sf-option", action="append", metavar="FIELD=VALUE",
                   help="ModelConfig field for the Sampling-Free model, e.g. rpn_post_nms_top_n_train=512 (repeatable)")
    p.add_argument("--weights", help="start both models from this checkpoint (trained RPN: realistic proposals)")
    p.add_argument("--mask-head-channels", type=int, help="Mask R-CNN mask-head width (default: the model's)")
    p.add_argument("--data", help="training data spec (default: synthetic), e.g. a COCO json with --images")
    p.add_argument("--images", help="image folder of a COCO json --data")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--mem-steps", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--memory-only", action="store_true", help="only the per-config memory subprocesses")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (1 is steadier on a loaded box)")
    p.add_argument("--json")
    p.add_argument("--md")
    p.add_argument("--child", nargs=2, metavar=("DETECTOR", "METHOD"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        args.child_detector, args.child_method = args.child
        memory_child(args)
        return
    if args.memory_only:
        results = run_memory_only(args)
        print(json.dumps(results["detectors"], indent=1))
        return
    results = run(args)
    md = markdown(results)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(results, indent=1))  # with the end-of-run load average
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.md), md)
    print(md)  # last: a closed stdout pipe must not lose the files


if __name__ == "__main__":
    main()
