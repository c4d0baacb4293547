"""Accuracy at equal budget: baseline vs ce vs sampling_free (and the paper's Table III ablation).

Every variant of a detector gets the same backbone, data, schedule, seeds and evaluation threshold; only the training
method changes. Each run is `training.trainer.train` (metrics.jsonl, result.json in its own folder), evaluated on a
held-out split with `training.evaluate.evaluate` (COCO AP). Finished runs are reused (delete the folder to rerun).

Variants (`--variants`):
  baseline       focal loss (one-stage) / biased 256@1:1 + 512@1:3 sampling (two-stage)
  ce             plain CE over all samples, baseline's prior, no guided scaling        (paper: diverges)
  ce+init        ce + optimal bias initialisation only                                    (paper: diverges)
  ce+guided      ce + guided loss scaling only, the default (authors' 2021) one-stage form  (paper: diverges)
  ce+guided-paper  ce+guided in the paper's eq. 24 form (the paper's Table III column)
  sampling_free  ce + optimal init + guided scaling (= the method)
  sf-512rois     sampling_free with 512 instead of 1000 training proposals per image (R-CNNs; the cost knob)
  sf-mask128     sampling_free Mask R-CNN, mask head on at most 128 random positives per image (the cost knob)
  sf-frozen      sampling_free with the authors' 2021 one-stage guide (g frozen after 100 steps, sigma per term)
  sf-paper       sampling_free with the paper's eq. 24 one-stage guide (per-step g, learnable delta)
  sf-rcnn-delta  sampling_free with a learnable delta on the RPN / RoI guide (this project's earlier deviation)

Data sets (`--dataset`):
  synthetic      built-in scenes: synthetic:N train split, synthetic:M val split (disjoint RNG streams)
  raccoon        VOC root (default /work/shared/datasets/raccoon), ImageSets train / val; skipped when absent
  nuclei         instance masks from the stardist wheel's demo image (2D nuclei, 512x512), tiled; the left half
                 gives the training tiles, the right half the validation tiles (COCO json + PNGs in --cache)

Outcome per run: "completed", "diverged" (the trainer's NaN/explosion detection) or "collapsed" (completed but
bbox AP < 0.001: no useful detections). Writes OUT.json, OUT.md and OUT_loss_dynamics.png (+ a per-detector plot).

    python benchmarks/accuracy.py --detectors retinanet faster_rcnn --seeds 0 1 --steps 150 --out docs/benchmarks/accuracy_synthetic
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sfdeploy.io import atomic_path, atomic_write_text  # noqa: E402 - artefacts: temp file + rename

VARIANTS = {
    "baseline": {"method": "baseline"},
    "ce": {"method": "ce"},
    "ce+init": {"method": "ce", "optimal_init": True},
    "ce+guided": {"method": "ce", "guided_scaling": True},
    "ce+guided-paper": {"method": "ce", "guided_scaling": True, "guided_form": "paper"},
    "sampling_free": {"method": "sampling_free"},
    "sf-512rois": {"method": "sampling_free", "rpn_post_nms_top_n_train": 512},
    "sf-mask128": {"method": "sampling_free", "mask_positives_per_image": 128},
    "sf-frozen": {"method": "sampling_free", "guided_form": "frozen"},  # the authors' 2021 one-stage form
    "sf-paper": {"method": "sampling_free", "guided_form": "paper"},  # the paper's eq. 24 one-stage form
    "sf-rcnn-delta": {"method": "sampling_free", "rcnn_guide_delta": True},  # the earlier learnable R-CNN delta
}
RACCOON = Path("/work/shared/datasets/raccoon")
COLLAPSE_AP = 0.001


# ------------------------------------------------------------------------------------------------- data sets
def dataset_specs(args: argparse.Namespace) -> dict | None:
    """{data, val_data, split, val_split, images_dir} for the trainer, or None when the data set is absent."""
    if args.dataset == "synthetic":
        return {"data": f"synthetic:{args.train_images}", "val_data": f"synthetic:{args.val_images}",
                "split": "train", "val_split": "val", "images_dir": None}
    if args.dataset == "raccoon":
        root = Path(args.data_root or RACCOON)
        if not (root / "ImageSets").is_dir():
            return None
        return {"data": str(root), "val_data": str(root), "split": "train", "val_split": "val", "images_dir": None}
    if args.dataset == "nuclei":
        made = prepare_nuclei(Path(args.cache))
        if made is None:
            return None
        return {"data": str(made["train"]), "val_data": str(made["val"]), "split": "train", "val_split": "val",
                "images_dir": None}
    raise SystemExit(f"unknown dataset {args.dataset}")


def find_stardist_demo() -> tuple[Path, Path] | None:
    """(image, label image) of stardist's bundled 2D nuclei demo, found by path in site-packages."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("stardist")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(list(spec.submodule_search_locations)[0])
    files = {p.name.lower(): p for p in base.rglob("*") if p.suffix.lower() in (".tif", ".tiff", ".png", ".npy")}
    img = files.get("img2d.tif")
    lbl = files.get("mask2d.tif") or files.get("lbl2d.tif")
    return (img, lbl) if img and lbl else None


def _read_array(path: Path):  # type: ignore[no-untyped-def]
    import numpy as np

    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".npz":
        z = np.load(path)
        return z[list(z.keys())[0]]
    try:
        import tifffile

        return tifffile.imread(str(path))
    except ImportError:
        from PIL import Image

        return np.array(Image.open(path))


def prepare_nuclei(cache: Path, tile: int = 128) -> dict | None:
    """Tile the 512x512 nuclei image into tile x tile crops (stride tile/2); left half -> train, right half -> val.

    Instances cut by a tile border keep their visible part (dropped below 20 px). Writes
    cache/nuclei/{train,val}.json (COCO instances, RLE masks) and PNG tiles; returns the json paths.
    """
    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_utils

    out = cache / "nuclei"
    paths = {"train": out / "train.json", "val": out / "val.json"}
    if all(p.is_file() for p in paths.values()):
        return paths
    found = find_stardist_demo()
    if found is None:
        return None
    img = _read_array(found[0]).astype(np.float32)
    lbl = _read_array(found[1]).astype(np.int64)
    if img.ndim == 3:
        img = img[..., 0]
    lo, hi = np.percentile(img, 1), np.percentile(img, 99.8)
    img8 = (np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    h, w = img8.shape
    half = w // 2
    (out / "images").mkdir(parents=True, exist_ok=True)
    for split, (x_start, x_end) in {"train": (0, half), "val": (half, w)}.items():
        images, anns = [], []
        stride = tile // 2 if split == "train" else tile  # overlapping train tiles, disjoint val tiles
        for y in range(0, h - tile + 1, stride):
            for x in range(x_start, x_end - tile + 1, stride):
                crop = img8[y:y + tile, x:x + tile]
                lab = lbl[y:y + tile, x:x + tile]
                image_id = len(images) + 1
                name = f"{split}_{y}_{x}.png"
                Image.fromarray(np.stack([crop] * 3, -1)).save(out / "images" / name)
                images.append({"id": image_id, "file_name": name, "width": tile, "height": tile})
                for inst in np.unique(lab):
                    if inst == 0:
                        continue
                    m = lab == inst
                    if m.sum() < 20:
                        continue
                    ys, xs = np.nonzero(m)
                    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                    rle["counts"] = rle["counts"].decode("ascii")
                    anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                 "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                          float(ys.max() - ys.min() + 1)],
                                 "area": float(m.sum()), "segmentation": rle})
        coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "nucleus"}],
                "info": {"source": f"stardist demo {found[0].name} / {found[1].name}, {split} half, tiles {tile}"}}
        atomic_write_text(paths[split], json.dumps(coco))
    return paths


# ------------------------------------------------------------------------------------------------- runs
def same_settings(stored: str, current: str) -> bool:
    """Stamps compare after the stored model config is re-read as an artefact of ours (ModelConfig.from_artefact):
    a field added later with a default that reproduces the old behaviour does not invalidate finished runs, and one
    whose old behaviour differs from today's default (rcnn_guide_delta) is filled with what the run trained with."""
    from sfdeploy.config import ModelConfig

    try:
        old = json.loads(stored)
        old["model"] = ModelConfig.from_artefact(old["model"]).to_dict()
    except (ValueError, KeyError, TypeError):
        return False
    return json.dumps(old, sort_keys=True, default=str) == current


def run_one(args: argparse.Namespace, data: dict, detector: str, variant: str, seed: int) -> dict:
    from sfdeploy.config import ModelConfig
    from sfdeploy.training.config import TrainConfig
    from sfdeploy.training.trainer import train

    out = Path(args.runs) / args.dataset / detector / variant / f"seed{seed}"
    done = out / "result.json"
    model = ModelConfig(detector=detector, backbone=args.backbone, backbone_weights=args.backbone_weights,
                        min_size=args.size, max_size=args.size, fpn_channels=args.fpn_channels,
                        **({"mask_head_channels": args.mask_head_channels} if args.mask_head_channels else {}),
                        score_thresh=args.score_thresh, **VARIANTS[variant])
    cfg = TrainConfig(model=model, out=str(out), max_steps=args.steps, batch_size=args.batch, seed=seed,
                      device=args.device, workers=args.workers, warmup_steps=min(args.warmup, args.steps // 4),
                      lr=args.lr, grad_clip=args.grad_clip, tensorboard=False, plots=False, checkpoint_every=10**9,
                      log_every=5, prior_cache_dir=str(Path(args.cache) / "priors"), eval_every=args.eval_every,
                      **({"augment": args.augment} if args.augment else {}), **data)
    # a finished run is reused only when it was trained with exactly these settings
    settings = json.dumps({"model": model.to_dict(), "max_steps": cfg.max_steps, "batch": cfg.batch_size,
                           "lr": cfg.lr, "warmup": cfg.warmup_steps, "clip": cfg.grad_clip, "data": data,
                           # only when set, so runs finished before the option existed keep matching their stamps
                           **({"augment": cfg.augment} if cfg.augment else {})}, sort_keys=True, default=str)
    stamp = out / "benchmark_settings.json"
    if done.is_file() and not args.force and stamp.is_file() and same_settings(stamp.read_text(), settings):
        res = json.loads(done.read_text())
    else:
        if out.exists():
            import shutil

            shutil.rmtree(out)  # stale or unfinished: start clean (no resume across different settings)
        out.mkdir(parents=True)
        atomic_write_text(stamp, settings)
        t0 = time.time()
        result = train(cfg, progress=False)
        res = result.to_dict()
        res["wall_s"] = round(time.time() - t0, 1)
        atomic_write_text(out / "result.json", json.dumps(res, indent=2, default=str))
    test = test_metrics(args, out, res)
    extra = {t: low_threshold_metrics(args, data, out, res, t) for t in args.extra_thresh}
    metrics = res.get("final_metrics") or {}
    bbox = (metrics.get("bbox") or {})
    ap = bbox.get("AP")
    outcome = res.get("outcome")
    if outcome == "completed" and (ap is None or not math.isfinite(ap) or ap < COLLAPSE_AP):
        outcome = "collapsed"
    row = {"detector": detector, "variant": variant, "seed": seed, "outcome": outcome, "AP": ap,
           "AP50": bbox.get("AP50"), "segm_AP": (metrics.get("segm") or {}).get("AP"),
           "detections": metrics.get("detections"), "steps": res.get("steps"), "diverged_step": res.get("diverged_step"),
           "diverged_term": res.get("diverged_term"), "message": res.get("message"), "priors": res.get("priors"),
           "median_step_time_s": res.get("median_step_time_s"), "wall_s": res.get("wall_s"),
           "metrics_jsonl": str(out / "metrics.jsonl"),
           "test_AP": ((test or {}).get("bbox") or {}).get("AP"), "test_AP50": ((test or {}).get("bbox") or {}).get("AP50"),
           "test_segm_AP": ((test or {}).get("segm") or {}).get("AP"),
           **{f"AP@{t:g}": ((m or {}).get("bbox") or {}).get("AP") for t, m in extra.items()},
           **{f"AP50@{t:g}": ((m or {}).get("bbox") or {}).get("AP50") for t, m in extra.items()},
           **{f"detections@{t:g}": (m or {}).get("detections") for t, m in extra.items()}}
    print(f"  {detector:12s} {variant:14s} seed {seed}: {outcome:9s} AP {ap}  ({res.get('wall_s')} s)", file=sys.stderr,
          flush=True)
    return row


def low_threshold_metrics(args: argparse.Namespace, data: dict, out: Path, res: dict, thresh: float) -> dict | None:
    """Val-split COCO metrics of the final checkpoint at another score threshold (cached per run and threshold)."""
    ckpt = out / "last.pt"
    if res.get("outcome") == "diverged" or not ckpt.is_file():
        return None
    key = f"{data['val_data']}[{data['val_split']}]|{thresh}|{ckpt.stat().st_size}|{ckpt.stat().st_mtime_ns}"
    cache = out / f"val_eval_thresh_{thresh:g}.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["metrics"]
    from sfdeploy.training.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(ckpt, data["val_data"], split=data["val_split"], images_dir=data.get("images_dir"),
                                  progress=False, device=args.device, score_thresh=thresh)
    atomic_write_text(cache, json.dumps({"key": key, "metrics": metrics}, default=str))
    return metrics


def test_metrics(args: argparse.Namespace, out: Path, res: dict) -> dict | None:
    """COCO metrics of the final checkpoint on the synthetic *test* split (never used for any choice: the val split
    picked the quickstart's lr, so val AP is reported next to it but the headline is test AP). Cached per run."""
    if args.dataset != "synthetic" or not args.test_images or res.get("outcome") == "diverged":
        return None
    ckpt = out / "last.pt"
    if not ckpt.is_file():
        return None
    key = f"synthetic:{args.test_images}[test]|{ckpt.stat().st_size}|{ckpt.stat().st_mtime_ns}"
    cache = out / "test_eval.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["metrics"]
    from sfdeploy.training.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(ckpt, f"synthetic:{args.test_images}", split="test", progress=False,
                                  device=args.device)
    atomic_write_text(cache, json.dumps({"key": key, "metrics": metrics}, default=str))
    return metrics


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["detector"], r["variant"]), []).append(r)
    out = []
    for (det, var), rs in groups.items():
        def stats(key: str) -> tuple[float | None, float | None]:
            vals = [r[key] for r in rs if r[key] is not None and r["outcome"] != "diverged"]
            if not vals:
                return None, None
            return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

        test_ap, test_ap_sd = stats("test_AP")
        test_segm, test_segm_sd = stats("test_segm_AP")
        ap, ap_sd = stats("AP")
        ap50, ap50_sd = stats("AP50")
        segm, segm_sd = stats("segm_AP")
        outcomes = {}
        for r in rs:
            outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        out.append({"detector": det, "variant": var, "seeds": len(rs), "AP": ap, "AP_sd": ap_sd, "AP50": ap50,
                    "AP50_sd": ap50_sd, "segm_AP": segm, "segm_AP_sd": segm_sd, "outcomes": outcomes,
                    "per_seed_AP": [r["AP"] for r in rs], "test_AP": test_ap, "test_AP_sd": test_ap_sd,
                    "test_segm_AP": test_segm, "test_segm_AP_sd": test_segm_sd,
                    "per_seed_test_AP": [r.get("test_AP") for r in rs]})
    return out


def _f(x: float | None, sd: float | None = None) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}" + (f" ± {100 * sd:.1f}" if sd is not None else "")


def markdown(meta: dict, summary: list[dict], rows: list[dict]) -> str:
    m = meta["machine"]
    s = meta["settings"]
    lines = [f"Command: `{meta['command']}`  ",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['date']}, load average at start "
             f"{tuple(round(x, 1) for x in m.get('loadavg', ()))}  ",
             f"Budget: {s['dataset']} ({meta['data']['data']} -> {meta['data']['val_data']} [{meta['data']['val_split']}]), "
             f"{s['backbone']} ({s['backbone_weights'] or 'random init'}), FPN {s['fpn_channels']}"
             f"{', mask head ' + str(s['mask_head_channels']) if s.get('mask_head_channels') else ''}, image {s['size']}, "
             f"batch {s['batch']}, {s['steps']} SGD steps, lr {s['lr'] or 'paper lr x batch/16'}, grad clip {s.get('grad_clip')}, augmentation {s.get('augment') or 'flip (trainer default)'}, eval score threshold "
             f"{s['score_thresh']} for every variant, seeds {s['seeds']}"
             + (f"; test AP on synthetic:{s['test_images']} [test]" if s["dataset"] == "synthetic" and s.get("test_images")
                else ""), "",
             ]
    with_test = any(r.get("test_AP") is not None for r in summary)
    if with_test:  # synthetic: the held-out test split is the headline, val next to it
        lines += ["| detector | variant | seeds | **test** bbox AP (mean ± sd, %) | test mask AP (%) | val bbox AP (%) | "
                  "val AP50 (%) | val mask AP (%) | outcomes | per-seed test AP (%) |", "|---|---|---|---|---|---|---|---|---|---|"]
    else:
        lines += ["| detector | variant | seeds | bbox AP (mean ± sd, %) | AP50 (%) | mask AP (%) | outcomes | per-seed AP (%) |",
                  "|---|---|---|---|---|---|---|---|"]
    for r in summary:
        oc = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
        val = f"{_f(r['AP'], r['AP_sd'])} | {_f(r['AP50'], r['AP50_sd'])} | {_f(r['segm_AP'], r['segm_AP_sd'])}"
        per = ", ".join("-" if a is None else f"{100 * a:.1f}"
                        for a in (r["per_seed_test_AP"] if with_test else r["per_seed_AP"]))
        test = f"{_f(r['test_AP'], r['test_AP_sd'])} | {_f(r['test_segm_AP'], r['test_segm_AP_sd'])} | " if with_test else ""
        lines.append(f"| {r['detector']} | {r['variant']} | {r['seeds']} | {test}{val} | {oc} | {per} |")
    div = [r for r in rows if r["outcome"] == "diverged"]
    if div:
        lines += ["", "Diverged runs: " + "; ".join(
            f"{r['detector']}/{r['variant']}/seed{r['seed']} at step {r['diverged_step']} ({r['diverged_term']}: "
            f"{r['message']})" for r in div)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- plots
CLS_KEYS = ("classification", "loss_objectness", "loss_classifier")
LOC_KEYS = ("bbox_regression", "loss_rpn_box_reg", "loss_box_reg")


def plot_dynamics(runs: dict[str, str], out_png: Path, title: str) -> Path | None:
    """Per run (label -> metrics.jsonl): classification loss (raw, unscaled CE for guided heads), localisation
    loss, guided scale g and delta per guided head."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sfdeploy.training.metrics_log import read_metrics

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    any_data = False
    for label, path in runs.items():
        if not Path(path).is_file():
            continue
        recs = [r for r in read_metrics(path) if r.get("event") == "train"]
        if not recs:
            continue
        any_data = True
        steps = [r["step"] for r in recs]
        for key in CLS_KEYS:
            if key in recs[0]:
                # guided heads report the scaled loss; plot the raw CE from the guide record
                ys = []
                for r in recs:
                    g = next((v for n, v in (r.get("guide") or {}).items() if _head_matches(n, key)), None)
                    ys.append(g["loss_cls_raw"] if g else r.get(key))
                axes[0].plot(steps, ys, label=f"{label}: {key}" + (" (raw)" if recs[0].get("guide") else ""))
        for key in LOC_KEYS:
            if key in recs[0]:
                axes[1].plot(steps, [r.get(key) for r in recs], label=f"{label}: {key}")
        for name in sorted({n for r in recs for n in (r.get("guide") or {})}):
            axes[2].plot(steps, [(r.get("guide") or {}).get(name, {}).get("g") for r in recs], label=f"{label}: {name}")
            deltas = [(r.get("guide") or {}).get(name, {}).get("delta") for r in recs]
            if any(d is not None for d in deltas):  # the authors' R-CNN guide has no learnable weight
                axes[3].plot(steps, deltas, label=f"{label}: {name}")
    if not any_data:
        plt.close(fig)
        return None
    for ax, t in zip(axes, ("classification loss (unscaled)", "localisation loss", "guided scale g = L_loc / L_cls",
                            "learnt delta")):
        ax.set_title(t)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
    if not axes[3].lines:
        axes[3].text(0.5, 0.5, "no learnable weight\n(baseline, or the authors' R-CNN guide)", ha="center",
                     va="center", transform=axes[3].transAxes)
        axes[3].set_xticks([])
        axes[3].set_yticks([])
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return out_png


def _head_matches(guide_name: str, loss_key: str) -> bool:
    """Map a GuidedLossScaling module name (e.g. 'head.guide', 'rpn.guide', 'roi_heads.guide') to its loss key."""
    if loss_key == "loss_objectness":
        return guide_name.startswith("rpn")
    if loss_key == "loss_classifier":
        return guide_name.startswith("roi_heads")
    return guide_name.startswith("head")


# ------------------------------------------------------------------------------------------------- main
def _positive_int(value: str) -> int:
    """argparse type: a step count >= 1 (argparse turns the ValueError into a one-line exit-2 error)."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="synthetic", choices=["synthetic", "raccoon", "nuclei"])
    p.add_argument("--data-root", help="raccoon VOC root (default /work/shared/datasets/raccoon)")
    p.add_argument("--detectors", nargs="+", default=["retinanet", "faster_rcnn"])
    p.add_argument("--variants", nargs="+", default=["baseline", "ce", "sampling_free"], choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--backbone-weights", default="imagenet", help="'imagenet', a path, or 'none'")
    p.add_argument("--fpn-channels", type=int, default=256)
    p.add_argument("--mask-head-channels", type=int, help="Mask R-CNN mask-head width (default: torchvision's 256)")
    p.add_argument("--lr", type=float, default=None, help="default: the paper's lr scaled by batch/16")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps (at most a quarter of --steps)")
    p.add_argument("--augment", choices=("none", "flip", "default", "strong"), default=None,
                   help="training augmentation preset (sfdeploy.data.augment) for every variant; default: the trainer's "
                        "horizontal flip (the protocol of the earlier runs)")
    p.add_argument("--grad-clip", type=lambda v: None if v.lower() == "none" else float(v), default=None,
                   help="max gradient norm; default none (no clipping), the trainer's and the authors' setting")
    p.add_argument("--eval-every", type=_positive_int, default=None,
                   help="also evaluate on the val split every N steps (an AP curve in metrics.jsonl, to tell whether "
                        "the schedule is long enough); the reported AP stays the last step's")
    p.add_argument("--score-thresh", type=float, default=1e-3, help="same evaluation threshold for every variant")
    p.add_argument("--extra-thresh", type=float, nargs="*", default=[],
                   help="also evaluate each final model on the val split at these thresholds (e.g. 1e-4)")
    p.add_argument("--train-images", type=int, default=200)
    p.add_argument("--val-images", type=int, default=50)
    p.add_argument("--test-images", type=int, default=100,
                   help="synthetic only: also evaluate each final model on N images of the test split (0 = off)")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--runs", default="runs/benchmarks")
    p.add_argument("--cache", default="runs/benchmarks/cache")
    p.add_argument("--out", required=True, help="prefix of the JSON/MD/PNG outputs, e.g. docs/benchmarks/accuracy_x")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    args = p.parse_args()
    if args.backbone_weights in ("none", "None", ""):
        args.backbone_weights = None

    import torch

    from benchmarks.train_cost import machine_info

    data = dataset_specs(args)
    if data is None:
        print(f"dataset {args.dataset} is not available here: skipped", file=sys.stderr)
        return
    meta = {"machine": machine_info(), "settings": vars(args), "data": data, "torch_threads": torch.get_num_threads(),
            "command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:])}
    rows: list[dict] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # seed-major order: after each seed every variant has a result, so a time-boxed run stays comparable
    for seed in args.seeds:
        for det in args.detectors:
            for var in args.variants:
                rows.append(run_one(args, data, det, var, seed))
                summary = summarise(rows)
                meta["machine"]["loadavg_end"] = os.getloadavg()
                atomic_write_text(out.with_suffix(".json"), json.dumps({**meta, "summary": summary, "runs": rows},
                                                                       indent=1, default=str))
                atomic_write_text(out.with_suffix(".md"), markdown(meta, summary, rows))
    for det in args.detectors:
        seed = args.seeds[0]
        runs = {v: str(Path(args.runs) / args.dataset / det / v / f"seed{seed}" / "metrics.jsonl")
                for v in args.variants}
        plot_dynamics(runs, Path(f"{out}_{det}_loss_dynamics.png"),
                      f"{det} on {args.dataset}, seed {seed}: loss dynamics per variant")
    print(markdown(meta, summarise(rows), rows))


if __name__ == "__main__":
    main()
