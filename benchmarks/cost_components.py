"""Where does Sampling-Free's training cost go? Time only the parts that differ between the methods.

Baseline and sampling_free run *the same network* (same backbone, FPN, heads, same FLOPs); they differ in the loss
(focal -> BCE + guided scaling, one-stage) or in how many samples the RPN / RoI heads train on (two-stage). On a
loaded machine a full-step ratio is too noisy to resolve 5 %, so this script times just the differing part, many times,
interleaved (A B B A ...), on fixed inputs:

- retinanet / fcos: `model.compute_loss(...)` (matching + classification + box losses + guided scaling), forward and
  backward, from fixed head outputs.
- faster_rcnn / mask_rcnn: `rpn` (head + loss, forward+backward) and `roi_heads` (RoIAlign, box head, predictor,
  loss, and the mask branch; forward+backward) on fixed FPN features, for two proposal sets:
  `rpn`     the proposals of the freshly initialised RPN (what the first training steps see: few positives), and
  `trained` 1000 proposals/image, half of them jittered ground-truth boxes (IoU >= 0.5 mostly), imitating a trained
            RPN: this is where the un-sampled RoI/mask heads pay, since the baseline caps positives at 128/image.

The estimated full-step ratio is 1 + (t_sf - t_base) / T_step, with T_step the baseline's median full step from
train_cost.py (`--step-json`), or reported as absolute ms otherwise.

    python benchmarks/cost_components.py --reps 7 --step-json docs/benchmarks/train_cost.json \
        --json docs/benchmarks/cost_components.json --md docs/benchmarks/cost_components.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sfdeploy.io import atomic_write_text  # noqa: E402 - artefacts: temp file + rename

import torch  # noqa: E402

from benchmarks.train_cost import machine_info, make_batch, make_model  # noqa: E402
from sfdeploy.models.table import DETECTORS, ONE_STAGE  # noqa: E402


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def one_stage_parts(det: str, models: dict, images, targets) -> dict:
    base = models["baseline"][0]
    with torch.no_grad():
        il, tg = base.transform(images, targets)
        feats = list(base.backbone(il.tensors).values())
        head_out = base.head(feats)
        anchors = base.anchor_generator(il, feats)
    napl = [x.size(2) * x.size(3) for x in feats]
    ho = {k: v.detach() for k, v in head_out.items()}

    def run(model) -> None:  # type: ignore[no-untyped-def]
        leaf = {k: v.clone().requires_grad_(True) for k, v in ho.items()}
        if det == "fcos":
            losses = model.compute_loss(tg, leaf, anchors, napl)
        else:
            losses = model.compute_loss(tg, leaf, anchors)
        sum(losses.values()).backward()

    return {"loss": run}


def jittered_proposals(targets, image_sizes, n: int, gen: torch.Generator) -> list[torch.Tensor]:
    out = []
    for t, (h, w) in zip(targets, image_sizes):
        gt = t["boxes"]
        k = n // 2
        idx = torch.randint(len(gt), (k,), generator=gen)
        b = gt[idx]
        wh = (b[:, 2:] - b[:, :2]).repeat(1, 2)
        jit = b + 0.1 * wh * torch.randn(b.shape, generator=gen)
        rand_xy = torch.rand(n - k, 2, generator=gen) * torch.tensor([w, h])
        rand_wh = 8 + torch.rand(n - k, 2, generator=gen) * (min(h, w) / 2)
        rnd = torch.cat([rand_xy, rand_xy + rand_wh], 1)
        p = torch.cat([jit, rnd])
        p[:, 0::2] = p[:, 0::2].clamp(0, w)
        p[:, 1::2] = p[:, 1::2].clamp(0, h)
        out.append(p)
    return out


def two_stage_parts(det: str, models: dict, images, targets) -> dict:
    base = models["baseline"][0]
    with torch.no_grad():
        il, tg = base.transform(images, targets)
        feats = base.backbone(il.tensors)
        proposals_rpn, _ = base.rpn(il, feats, tg)
    gen = torch.Generator().manual_seed(0)
    proposals_trained = jittered_proposals(tg, il.image_sizes, 1000, gen)
    fd = {k: v.detach() for k, v in feats.items()}

    def leaf_feats():  # type: ignore[no-untyped-def]
        return {k: v.clone().requires_grad_(True) for k, v in fd.items()}

    def rpn(model) -> None:  # type: ignore[no-untyped-def]
        _, losses = model.rpn(il, leaf_feats(), tg)
        sum(losses.values()).backward()

    def roi(props):  # type: ignore[no-untyped-def]
        def f(model) -> None:  # type: ignore[no-untyped-def]
            _, losses = model.roi_heads(leaf_feats(), [p.clone() for p in props], il.image_sizes, tg)
            sum(losses.values()).backward()
        return f

    return {"rpn": rpn, "roi_heads[rpn proposals]": roi(proposals_rpn),
            "roi_heads[trained-like proposals]": roi(proposals_trained),
            "_counts": {"rpn proposals": proposals_rpn, "trained-like proposals": proposals_trained}}


def count_rois(models: dict, images, targets, proposals: list[torch.Tensor]) -> dict:
    """Box-head RoIs and mask-head RoIs per image for each method, given the proposals."""
    res = {}
    for m, (model, _) in models.items():
        with torch.no_grad():
            il, tg = model.transform(images, targets)
            props, _, labels, _ = model.roi_heads.select_training_samples([p.clone() for p in proposals], tg)
        box = [int(p.shape[0]) for p in props]
        pos = [int((lab > 0).sum()) for lab in labels]
        # baseline: positives among the sampled 512 (<= 128/image); sampling_free: every positive proposal
        res[m] = {"box_rois_per_image": box, "positive_rois_per_image": pos}
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--detectors", nargs="+", default=list(DETECTORS))
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1, help="untimed reps first")
    p.add_argument("--no-trained", action="store_true", help="skip the trained-like proposal set (slow for mask_rcnn)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--step-json", help="train_cost.py JSON with full-step medians (for the estimated ratio)")
    p.add_argument("--json")
    p.add_argument("--md")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    steps = {}
    if args.step_json and Path(args.step_json).is_file():
        steps = {d: r["step_ms"]["baseline"] for d, r in json.loads(Path(args.step_json).read_text())["detectors"].items()}
    results = {"machine": machine_info(), "settings": vars(args),
               "command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]), "detectors": {}}
    for det in args.detectors:
        images, targets = make_batch(det, args.size, args.batch, device)
        models = {m: make_model(det, m, args.backbone, args.size, device) for m in ("baseline", "sampling_free")}
        parts = one_stage_parts(det, models, images, targets) if det in ONE_STAGE else \
            two_stage_parts(det, models, images, targets)
        counts = parts.pop("_counts", {})
        if args.no_trained:
            parts.pop("roi_heads[trained-like proposals]", None)
        row: dict = {"parts": {}}
        if counts:
            row["rois"] = {k: count_rois(models, images, targets, v) for k, v in counts.items()}
        for name, fn in parts.items():
            times: dict[str, list[float]] = {"baseline": [], "sampling_free": []}
            for i in range(args.reps + args.warmup):
                order = ["baseline", "sampling_free"] if i % 2 == 0 else ["sampling_free", "baseline"]
                for m in order:
                    torch.manual_seed(i)
                    t = _timed(lambda: fn(models[m][0]))
                    if i >= args.warmup:
                        times[m].append(t)
            med = {m: 1000 * statistics.median(v) for m, v in times.items()}
            row["parts"][name] = {"ms": {m: round(v, 1) for m, v in med.items()},
                                  "delta_ms": round(med["sampling_free"] - med["baseline"], 1),
                                  "ms_all": {m: [round(1000 * t, 1) for t in v] for m, v in times.items()}}
            print(f"[{det}] {name}: {row['parts'][name]['ms']}", file=sys.stderr, flush=True)
        if det in steps:
            row["baseline_step_ms"] = steps[det]
            for name, r in row["parts"].items():
                r["est_step_ratio"] = round(1 + r["delta_ms"] / steps[det], 3)
        results["detectors"][det] = row
        if args.json:
            atomic_write_text(Path(args.json), json.dumps(results, indent=1))
    results["machine"]["loadavg_end"] = os.getloadavg()
    m = results["machine"]
    lines = [f"Command: `{results['command']}`  ",
             f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), torch {m['torch']}, "
             f"{m['date']}, load average {tuple(round(x, 1) for x in m.get('loadavg', ()))} -> "
             f"{tuple(round(x, 1) for x in m.get('loadavg_end', ()))}  ",
             f"Settings: {args.backbone}, image {args.size}, batch {args.batch}, median of {args.reps} interleaved reps "
             f"after {args.warmup} warm-up "
             "(forward + backward of the part only)", "",
             "| detector | part | baseline ms | sampling_free ms | delta ms | est. full-step ratio |",
             "|---|---|---|---|---|---|"]
    for det, row in results["detectors"].items():
        for name, r in row["parts"].items():
            lines.append(f"| {det} | {name} | {r['ms']['baseline']:.1f} | {r['ms']['sampling_free']:.1f} | "
                         f"{r['delta_ms']:+.1f} | {r.get('est_step_ratio', '-')} |")
    for det, row in results["detectors"].items():
        for k, v in (row.get("rois") or {}).items():
            lines.append(f"\n{det}, {k}: box-head RoIs/image baseline {v['baseline']['box_rois_per_image']}, "
                         f"sampling_free {v['sampling_free']['box_rois_per_image']}; positive RoIs/image (mask head "
                         f"input for mask_rcnn) baseline {v['baseline']['positive_rois_per_image']}, sampling_free "
                         f"{v['sampling_free']['positive_rois_per_image']}")
    md = "\n".join(lines) + "\n"
    print(md)
    if args.md:
        atomic_write_text(Path(args.md), md)


if __name__ == "__main__":
    main()
