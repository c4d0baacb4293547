"""Loss-dynamics plots from a run's metrics.jsonl (matplotlib, Agg backend).

`make_report(metrics_jsonl, out_dir)` writes:
  losses.png        classification vs localisation loss over steps: the raw L_cls and L_loc that each guided head
                    sees (Sampling-Free), or the loss terms themselves (baselines);
  guided_scale.png  the guided scale g_t = L_loc / L_cls and the learnt delta per guided head (paper Figs. 2-3);
                    only for runs with guided loss scaling;
  total_lr.png      the total loss and the learning rate.
`plot_comparison({label: metrics.jsonl}, out_png)` overlays several runs (total loss, classification loss).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sfdeploy.io import atomic_path

from .metrics_log import read_metrics


def _savefig(fig: Any, path: Path, dpi: int) -> None:
    """savefig through a temp file (same suffix: matplotlib picks the format from it) and a rename."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)


# loss terms that are classification (left) or localisation (right) in each detector's loss dict
CLS_TERMS = ("classification", "loss_objectness", "loss_classifier")
LOC_TERMS = ("bbox_regression", "bbox_ctrness", "loss_rpn_box_reg", "loss_box_reg", "loss_mask")


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _train_records(path: str | Path) -> list[dict[str, Any]]:
    return [r for r in read_metrics(path) if r.get("event") == "train"]


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)):
            xs.append(int(r["step"]))
            ys.append(float(v))
    return xs, ys


def _guide_series(records: list[dict[str, Any]], name: str, key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        v = (r.get("guide") or {}).get(name, {}).get(key)
        if isinstance(v, (int, float)):
            xs.append(int(r["step"]))
            ys.append(float(v))
    return xs, ys


def _loss_keys(records: list[dict[str, Any]]) -> list[str]:
    skip = {"event", "step", "epoch", "total", "lr", "grad_norm", "step_time", "images_per_s", "memory_mb", "guide"}
    keys: list[str] = []
    for r in records:
        for k, v in r.items():
            if k not in skip and isinstance(v, (int, float)) and k not in keys:
                keys.append(k)
    return keys


def _positive(ax, ys: list[float]) -> None:  # type: ignore[no-untyped-def]
    if ys and all(y > 0 for y in ys) and max(ys) / max(min(ys), 1e-30) > 50:
        ax.set_yscale("log")


def make_report(metrics_jsonl: str | Path, out_dir: str | Path, title: str | None = None) -> list[Path]:
    """Write the loss-dynamics PNGs of one run; returns their paths ([] when there is nothing to plot)."""
    records = _train_records(metrics_jsonl)
    if not records:
        return []
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    guides = sorted({name for r in records for name in (r.get("guide") or {})})
    title = title or Path(metrics_jsonl).parent.name
    written.append(_plot_losses(plt, records, guides, title, out))
    if guides:
        written.append(_plot_guides(plt, records, guides, title, out))
    written.append(_plot_total_lr(plt, records, title, out))
    return written


def _plot_losses(plt: Any, records: list[dict[str, Any]], guides: list[str], title: str, out: Path) -> Path:
    """1. classification vs localisation (per guide when the run has guides, else every loss term)."""
    if guides:
        fig, axes = plt.subplots(1, len(guides), figsize=(5.5 * len(guides), 4), squeeze=False)
        for ax, name in zip(axes[0], guides):
            for key, label, style in (("loss_cls_raw", "L_cls (raw CE)", "-"), ("loss_loc", "L_loc", "-")):
                xs, ys = _guide_series(records, name, key)
                ax.plot(xs, ys, style, label=label)
            xs, g = _guide_series(records, name, "g")
            _, raw = _guide_series(records, name, "loss_cls_raw")
            _, delta = _guide_series(records, name, "delta")
            if g and raw:
                ax.plot(xs, [a * b * c for a, b, c in zip(g, raw, delta or [1.0] * len(g))], "--",
                        label="g * delta * L_cls (scaled)")
            ax.set_yscale("log")
            ax.set_title(f"{name}")
            ax.set_xlabel("step")
            ax.legend(fontsize=8)
    else:
        keys = [k for k in _loss_keys(records) if "delta" not in k]
        fig, axes = plt.subplots(1, 1, figsize=(6.5, 4), squeeze=False)
        ax = axes[0][0]
        allys: list[float] = []
        for k in keys:
            xs, ys = _series(records, k)
            kind = "cls" if k in CLS_TERMS else "loc" if k in LOC_TERMS else "other"
            ax.plot(xs, ys, "-" if kind == "cls" else "--", label=f"{k} ({kind})")
            allys += ys
        _positive(ax, allys)
        ax.set_xlabel("step")
        ax.set_title("loss terms")
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: classification vs localisation loss")
    fig.tight_layout()
    p = out / "losses.png"
    _savefig(fig, p, dpi=100)
    plt.close(fig)
    return p


def _plot_guides(plt: Any, records: list[dict[str, Any]], guides: list[str], title: str, out: Path) -> Path:
    """2. guided scale g and the learnt delta / sigma."""
    fig, (ax_g, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
    for name in guides:
        xs, g = _guide_series(records, name, "g")
        ax_g.plot(xs, g, label=name)
        # the paper's form learns delta; the authors' 2021 form learns one sigma per loss term
        weights = sorted({k for r in records for k in ((r.get("guide") or {}).get(name) or {})
                          if k == "delta" or k.startswith("sigma_")})
        for key in weights:
            xs, d = _guide_series(records, name, key)
            ax_d.plot(xs, d, label=name if key == "delta" else f"{name} {key}")
    ax_g.set_yscale("log")
    ax_g.set_title("guided scale g = L_loc / L_cls")
    ax_d.set_title("learnt delta / sigma")
    for ax in (ax_g, ax_d):
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    p = out / "guided_scale.png"
    _savefig(fig, p, dpi=100)
    plt.close(fig)
    return p


def _plot_total_lr(plt: Any, records: list[dict[str, Any]], title: str, out: Path) -> Path:
    """3. total loss and learning rate."""
    fig, (ax_t, ax_lr) = plt.subplots(1, 2, figsize=(11, 4))
    xs, ys = _series(records, "total")
    ax_t.plot(xs, ys)
    _positive(ax_t, ys)
    ax_t.set_title("total loss")
    xs, lr = _series(records, "lr")
    ax_lr.plot(xs, lr)
    ax_lr.set_title("learning rate")
    for ax in (ax_t, ax_lr):
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    p = out / "total_lr.png"
    _savefig(fig, p, dpi=100)
    plt.close(fig)
    return p


def plot_comparison(runs: dict[str, str | Path], out_png: str | Path) -> Path:
    """Overlay runs {label: metrics.jsonl}: total loss, and the classification loss (raw CE for guided heads)."""
    plt = _plt()
    fig, (ax_t, ax_c) = plt.subplots(1, 2, figsize=(11, 4))
    for label, path in runs.items():
        records = _train_records(path)
        xs, ys = _series(records, "total")
        ax_t.plot(xs, ys, label=label)
        guides = sorted({name for r in records for name in (r.get("guide") or {})})
        if guides:
            xs, ys = _guide_series(records, guides[0], "loss_cls_raw")
            ax_c.plot(xs, ys, label=f"{label}: {guides[0]} raw CE")
        else:
            for key in CLS_TERMS:
                xs, ys = _series(records, key)
                if ys:
                    ax_c.plot(xs, ys, label=f"{label}: {key}")
                    break
    ax_t.set_title("total loss")
    ax_c.set_title("classification loss")
    for ax in (ax_t, ax_c):
        ax.set_xlabel("step")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    _savefig(fig, out, dpi=100)
    plt.close(fig)
    return out
