"""The demo page's state and event handlers (gradio calls them; `ui` lays out the page and wires them).

Why one object: every handler reads the same catalogue, model store, models folder and quickstart job, and the
catalogue is replaced on Rescan, so the handlers share one mutable state instead of closures over a dict. gradio is
imported inside the methods: this module is imported only when a page is built.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from .catalog import Catalog, Family, backend_choices, discover
from .common import BACKEND_LABELS, ROLE_LABELS, ROLES
from .inference import run_pair
from .inputs import MAX_PIXELS, BadImage, load_input
from .job import QuickstartJob
from .render import metrics_rows, render
from .store import ModelStore

QUICKSTART_HINT = (
    "Train the tiny built-in pair (a baseline and a Sampling-Free model on the synthetic shapes data, a few "
    "minutes on a CPU) with\n\n```\nsfdeploy quickstart --out {dir}\n```\n\nthen restart the demo with "
    "`python app.py --models {dir}` (or press **Rescan**){train}. "
    "Your own runs work too: `sfdeploy train ... --out {dir}/<run>` for each method, and optionally "
    "`sfdeploy export` next to them for the ONNX Runtime backend."
)
TRAIN_ENABLED_HINT = ", or press the button below to train them from here"
# Training writes models into the served folder and takes the CPU for minutes: only the operator can enable it.
TRAIN_DISABLED_HINT = " (training from this page is off: start the demo with `--allow-train` to enable it)"


class DemoEvents:
    """The page's state (catalogue of `root`, loaded models, the quickstart job) and its event handlers."""

    def __init__(self, root: Path, store: ModelStore, allow_train: bool) -> None:
        self.root = root
        self.store = store
        self.allow_train = allow_train
        self.ctx: dict[str, Any] = {"catalog": discover(root, store)}  # replaced on Rescan
        self.job = QuickstartJob()

    # -- what the page shows ----------------------------------------------------------------------
    def catalog(self) -> Catalog:
        return self.ctx["catalog"]

    def family_of(self, key: str | None) -> Family | None:
        fams = self.catalog().families
        return fams.get(key) if key else None

    def first_family(self) -> Family | None:
        fams = self.catalog().families
        return next(iter(fams.values()), None)

    def family_updates(self, key: str | None) -> tuple[Any, ...]:
        """backend radio, backend note, two sliders, metrics table, models markdown for a family."""
        import gradio as gr

        fam = self.family_of(key)
        choices, note = backend_choices(fam)
        value = choices[0][1] if choices else None
        sliders = [gr.update(**self.slider_args(fam, role)) for role in ROLES]
        return (gr.update(choices=choices, value=value), note, *sliders, metrics_rows(fam), self.models_summary(fam))

    def models_summary(self, fam: Family | None) -> str:
        cat = self.catalog()
        if fam is None:
            return ""
        lines = []
        for role in ROLES:
            files = ", ".join(f"`{a.name}`" for a in fam.sides[role].values()) or "none found"
            lines.append(f"{ROLE_LABELS[role]}: {files}")
        if cat.skipped:
            lines.append("Skipped: " + "; ".join(cat.skipped[:5]) + (" …" if len(cat.skipped) > 5 else ""))
        return "  \n".join(lines)

    def setup_text(self) -> str:
        cat = self.catalog()
        root = self.root
        where = f"`{root}`" + ("" if root.is_dir() else " (does not exist yet)")
        hint = TRAIN_ENABLED_HINT if self.allow_train else TRAIN_DISABLED_HINT
        text = f"### No models found in {where}\n\n" + QUICKSTART_HINT.format(dir=root, train=hint)
        if cat.skipped:
            text += "\n\nFiles that could not be loaded: " + "; ".join(cat.skipped[:5])
        return text

    def slider_args(self, fam: Family | None, role: str) -> dict[str, Any]:
        art = fam.representative(role) if fam else None
        floor = art.score_thresh if art else 0.0
        return dict(minimum=floor, maximum=1.0, value=floor, interactive=art is not None,
                    label=f"{ROLE_LABELS[role]} score threshold (model default {floor:g})")

    def main_updates(self, key: str | None) -> tuple[Any, ...]:
        import gradio as gr

        cat = self.catalog()
        fam_key = key if key in cat.families else (next(iter(cat.families), None))
        choices = [(f.label, d) for d, f in cat.families.items()]
        return (gr.update(visible=not cat), self.setup_text(), gr.update(visible=bool(cat)),
                gr.update(choices=choices, value=fam_key), *self.family_updates(fam_key))

    # -- event handlers ---------------------------------------------------------------------------
    def on_run(self, path: str | None, key: str | None, backend: str | None, thr_b: float, thr_s: float):  # noqa: ANN201
        import gradio as gr

        if path is None:
            return (None, *render(None, thr_b, thr_s), "")
        fam = self.family_of(key)
        if fam is None or not backend:
            return (None, *render(None, thr_b, thr_s), "Pick a detector family first.")
        try:
            image, note = load_input(path)
        except BadImage as exc:
            message = f"Could not use this image: {exc}. Try a PNG/JPEG/WebP photo under {MAX_PIXELS // 10**6} MP."
            gr.Warning(message)
            return (None, *render(None, thr_b, thr_s), f"⚠️ {message}")
        raw = run_pair(self.store, fam, backend, image)
        errors = [p["error"] for p in raw["panels"].values() if p["error"]]
        h, w = image.shape[:2]
        status = f"{fam.label} · {BACKEND_LABELS[backend]} · image {w}x{h}" + (f" ({note})" if note else "")
        if errors:
            status += "  \n⚠️ " + "  \n⚠️ ".join(errors)
        return (raw, *render(raw, thr_b, thr_s), status)

    def on_rerender(self, raw: dict[str, Any] | None, thr_b: float, thr_s: float):  # noqa: ANN201
        return render(raw, thr_b, thr_s)

    def on_reset(self, key: str | None):  # noqa: ANN201
        fam = self.family_of(key)
        return tuple((fam.representative(r).score_thresh if fam and fam.representative(r) else 0.0) for r in ROLES)

    def on_rescan(self, key: str | None):  # noqa: ANN201
        self.store.clear()
        self.ctx["catalog"] = discover(self.root, self.store)
        return self.main_updates(key)

    def train_handler(self) -> Callable[..., Any]:
        """The training event, named `on_train` (its endpoint name); gradio fills `progress` because of its
        default, which needs gradio at definition time, hence a function made on demand (only with allow_train)."""
        import gradio as gr

        def on_train(detector: str, fast: bool, progress: gr.Progress = gr.Progress()):  # noqa: ANN202, B008
            self.root.mkdir(parents=True, exist_ok=True)
            self.job.start(self.root, model=detector, fast=bool(fast))  # a second click just follows the running job
            while self.job.running:
                progress(self.job.fraction or 0.0, desc=self.job.status())
                yield self.job.status()
                time.sleep(1.0)
            yield self.job.status()

        return on_train
